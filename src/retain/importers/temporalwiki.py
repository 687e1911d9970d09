"""Import TemporalWiki's monthly updates of 2021 (Jang et al. 2022), as the CASM repository ships them.

Input: `TWiki_Diffsets/<aug_sep|sep_oct|oct_nov|nov_dec>.csv` (column `text`: passages written from that
month's Wikipedia changes) and `twiki_probes/<0801-0901|…|1101-1201>_<changed|unchanged>.csv` (columns
`subject`, `relation`, `object`: Wikidata triples that changed in, or stayed through, that month).
One task per month, periods 2021-09 … 2021-12.

Passages are not aligned with triples, so they are matched: a passage states a triple when its
normalised text holds the triple's normalised subject and object, each as whole words. A changed
triple no passage states cannot be learned from the month's text and is dropped (the report counts
them). Each month's `facts.jsonl` holds its changed triples that a passage states; its probes ask
about those (`changed`) and about a seeded sample of the unchanged triples (`unchanged`, as many as
the changed ones), each in three wordings no passage uses (cloze, question, time clause), keyed by
subject and relation. The month trains on all its passages, or with `--per-period N` on the passages
that state a seeded sample of N changed triples.

A (subject, relation) that a month states with several objects holds a set (a competition's participants),
and so does one whose relation commonly does (`has part`, `occupation`, `cast member`, …; MULTI_VALUED, a
default the data extends): it is marked `"multi_valued": true` in facts.jsonl, so a new object adds a value and
closes no older one (FactRegistry, CASM). Its probes are keyed by the object too, one per value, and scored right
when the answer names any member the data has stated for the set up to that month (the others are the probe's
aliases); removals are not in the data, so a member stays one.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from retain.importers import ImportReport, question_probes, read_csv
from retain.knowledge import fact_key, several_values
from retain.stream import Probe, Stream, StreamError, Task
from retain.text import normalize_answer

MONTHS = (("aug_sep", "0801-0901", "2021-09"), ("sep_oct", "0901-1001", "2021-10"),
          ("oct_nov", "1001-1101", "2021-11"), ("nov_dec", "1101-1201", "2021-12"))
# Wikidata properties that commonly hold several values at once: a new one is not a contradiction.
MULTI_VALUED = frozenset({
    "has part", "part of", "occupation", "cast member", "member of", "member of sports team", "award received",
    "position held", "educated at", "employer", "genre", "child", "sibling", "spouse", "instrument",
    "participant in", "contains the administrative territorial entity", "shares border with", "language spoken",
    "notable work", "nominated for", "field of work", "record label", "performer", "director", "screenwriter",
    "producer", "composer", "country of citizenship", "official language", "sport", "described by source",
})

Triple = tuple[str, str, str]


def import_temporalwiki(diffsets: str | Path, probes: str | Path, per_period: int | None = None,
                        seed: int = 0) -> tuple[Stream, ImportReport]:
    diffsets, probes = Path(diffsets), Path(probes)
    if per_period is not None and per_period < 1:
        raise StreamError(f"--per-period: expected a positive number, got {per_period}")
    rng, report = random.Random(seed), ImportReport()
    tasks, seen = [], {}  # seen: (subject, relation) → objects stated so far (for other_values and set members)
    sets: set[tuple[str, str]] = set()  # the (subject, relation) pairs that hold several objects
    for diffset, span, period in MONTHS:
        passages = [row["text"] for row, _ in read_csv(diffsets / f"{diffset}.csv", ["text"])]
        changed = _triples(probes / f"{span}_changed.csv")
        unchanged = _triples(probes / f"{span}_unchanged.csv")
        normalised = [f" {normalize_answer(p)} " for p in passages]
        stating = {t: [i for i, p in enumerate(normalised) if _states(p, t)] for t in changed}
        kept = [t for t in changed if stating[t]]
        report.drop(f"changed triples no passage of the month states ({span}_changed.csv)", len(changed) - len(kept))
        if per_period is not None and len(kept) > per_period:
            kept = [kept[i] for i in sorted(rng.sample(range(len(kept)), per_period))]
        if not kept:
            raise StreamError(f"{probes / f'{span}_changed.csv'}: no changed triple is stated by a passage of "
                              f"{diffsets / f'{diffset}.csv'}; nothing to learn in {period}")
        used = sorted({i for t in kept for i in stating[t]}) if per_period is not None else range(len(passages))
        sample = [unchanged[i] for i in sorted(rng.sample(range(len(unchanged)), min(len(kept), len(unchanged))))]
        facts = [{"subject": s, "relation": r, "object": o, "valid_from": period} for s, r, o in kept]
        several = several_values(facts)
        sets |= {(f["subject"], f["relation"]) for f in facts if f["relation"] in MULTI_VALUED or fact_key(f) in several}
        for fact in facts:
            if (fact["subject"], fact["relation"]) in sets:
                fact["multi_valued"] = True
        for s, r, o in kept:
            seen.setdefault((s, r), []).append(o)
        tasks.append(Task(
            name=period, period=period, train=[{"text": passages[i]} for i in used],
            probes=[p for t in kept for p in _probes(t, period, "changed", seen, sets)]
                   + [p for t in sample for p in _probes(t, period, "unchanged", seen, sets)],
            facts=facts))
        report.note(f"{period}: {len(used)} passages to train on, {len({i for t in kept for i in stating[t]})} of them "
                    f"stating one of {len(kept)} changed facts (of {len(changed)}); {len(sample)} unchanged probed "
                    f"(of {len(unchanged)})")
    stream = Stream(name="temporalwiki-2021", tasks=tasks)
    report.note(f"{len(tasks)} tasks, {sum(len(t.facts) for t in tasks)} facts, {sum(len(t.probes) for t in tasks)} probes")
    return stream, report


_DISAMBIGUATOR = re.compile(r"\s*\([^)]*\)\s*$")


def _triples(path: Path) -> list[Triple]:
    return list(dict.fromkeys((row["subject"], row["relation"], row["object"])
                              for row, _ in read_csv(path, ["subject", "relation", "object"])))


def _states(passage: str, triple: Triple) -> bool:
    """Whether a (normalised) passage names the triple's subject and object. A subject's Wikidata label may carry a
    disambiguator that no sentence does ("Wu Qiang (born 1966)"): the name without it counts too."""
    subject, _, obj = triple
    names = {normalize_answer(subject), normalize_answer(_DISAMBIGUATOR.sub("", subject))}
    return any(f" {name} " in passage for name in names if name) and f" {normalize_answer(obj)} " in passage


def _probes(triple: Triple, period: str, kind: str, seen: dict[tuple[str, str], list[str]],
            sets: set[tuple[str, str]]) -> list[Probe]:
    subject, relation, obj = triple
    others = [o for o in dict.fromkeys(seen.get((subject, relation), [])) if o != obj]
    multi = (subject, relation) in sets
    fields = dict(answer=obj, kind=kind, key=f"{subject} | {relation}" + (f" | {obj}" if multi else ""),
                  aliases=tuple(others) if multi else (), other_values=() if multi else tuple(others),
                  learned_in=period if kind == "changed" else "")
    return [Probe(prompt=f"[{period}] The {relation} of {subject} is", form="cloze", **fields),
            *question_probes(subject, relation, period, **fields)]
