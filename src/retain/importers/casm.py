"""Import the CASM repository's Synthetic TemporalWiki (its `data/` folder) as a stream, one task per period.

Input: `synthetic_facts_raw.json` (per fact: `entity`, `relation`, `value_<period>` for every period),
`probes.json` (`{period: {"changed": [...], "unchanged": [...]}}`), `passages.json` (`{period: [one
template sentence per fact]}`) and `augmented/synthetic/<period>.csv` (or the older
`augmented_synthetic/<period>.csv`): column `text`, row j a passage about fact j as of that period.

Each period's task trains on its passages (`--passages augmented`, `template` or `both`), lists every
fact's value then in `facts.jsonl` (valid from the period that value began), and probes with the
dataset's own prompts (form `cloze`), plus a question and a time-clause wording of each (held-out
forms no passage uses), or, with `templates` N, N templates of the dev/test family
(`retain.bench.probe_templates`; and N about now in the last period) drawn in turn. The dataset names no
relation in other words, so the templates that ask that way are left out, and asks "What" of every relation; a
template whose wording one of the fact's passages holds (its time aside: "[2022] The tram count of X is" where a
passage says "The tram count of X is 22 trams") is not drawn for that fact, so no probe is trained on. Kinds:
the first period's probes are `new`, later ones `changed` or `unchanged` as the dataset marks them. `--facts N`
keeps the first N facts of the raw file, and so the first N rows of every passage file and the probes about those
facts.

Row alignment: a passage row that names its fact's entity is kept. One that names the entity some
other way but states the fact's value for that period is kept too (it teaches the fact under another
name) and counted as renamed. One that names neither is taken as misaligned and dropped.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

from retain.bench.probe_templates import asked, probe_templates
from retain.importers import ImportReport, question_probes, read_csv, read_json
from retain.stream import Probe, Stream, StreamError, Task
from retain.text import normalize_answer, time_key, wording

Passages = Literal["augmented", "template", "both"]
_VALUE = re.compile(r"value_(.+)")
AUGMENTED_FOLDERS = ("augmented/synthetic", "augmented_synthetic")  # the newer layout first


def import_casm(directory: str | Path, facts: int | None = None, passages: Passages = "augmented",
                templates: int = 0) -> tuple[Stream, ImportReport]:
    directory = Path(directory)
    most = len(probe_templates(present=False, other_words=False))
    if not 0 <= templates <= most:
        raise StreamError(f"--probe-templates: expected 0 to {most} (the family's dated templates with the relation "
                          f"named), got {templates}")
    if passages not in ("augmented", "template", "both"):
        raise StreamError(f"--passages: expected augmented, template or both, got {passages!r}")
    if facts is not None and facts < 1:
        raise StreamError(f"--facts: expected a positive number, got {facts}")
    report = ImportReport()
    raw, periods = _raw_facts(directory / "synthetic_facts_raw.json", facts)
    texts = {period: [[] for _ in raw] for period in periods}  # period → fact → passages
    if passages in ("template", "both"):
        _template_passages(directory / "passages.json", periods, raw, texts, report)
    if passages in ("augmented", "both"):
        folder = next((directory / f for f in AUGMENTED_FOLDERS if (directory / f).is_dir()), None)
        if folder is None:
            raise StreamError(f"{directory}: no augmented passages (looked for {' and '.join(AUGMENTED_FOLDERS)}/)")
        for period in periods:
            rows = [row["text"] for row, _ in read_csv(folder / f"{period}.csv", ["text"])]
            _align(rows, folder / f"{period}.csv", period, raw, texts, report)
    said = [" ".join(f" {wording(t)} " for period in periods for t in texts[period][index]) for index in range(len(raw))]
    probes = _probes(directory / "probes.json", periods, raw, report, templates, said)
    tasks = []
    for index, period in enumerate(periods):
        train = [{"text": t} for per_fact in texts[period] for t in per_fact]
        if not train:
            raise StreamError(f"{directory}: period {period} has no passage left to train on")
        records = [{"subject": f["entity"], "relation": f["relation"], "object": f[f"value_{period}"],
                    "valid_from": _began(f, periods, index)} for f in raw]
        tasks.append(Task(name=period, period=period, train=train, probes=probes[period], facts=records))
    report.note(f"{len(tasks)} tasks ({', '.join(periods)}), {len(raw)} facts, "
                f"{sum(len(t.train) for t in tasks)} passages, {sum(len(t.probes) for t in tasks)} probes "
                f"({passages} passages)")
    return Stream(name="casm-synthetic-temporalwiki", tasks=tasks), report


def _raw_facts(path: Path, limit: int | None) -> tuple[list[dict[str, Any]], list[str]]:
    raw = read_json(path)
    if not isinstance(raw, list) or not raw:
        raise StreamError(f"{path}: expected a non-empty list of facts")
    periods: list[str] | None = None
    for index, fact in enumerate(raw):
        where = f"{path}: fact {index}"
        if not isinstance(fact, dict) or not isinstance(fact.get("entity"), str) or not isinstance(fact.get("relation"), str):
            raise StreamError(f"{where}: expected an object with 'entity' and 'relation' strings")
        own = sorted((m[1] for key in fact if (m := _VALUE.fullmatch(key))), key=_time)
        if periods is None:
            periods = own
        if own != periods or not own:
            raise StreamError(f"{where}: has values for {own}, the first fact for {periods}")
        if not all(isinstance(fact[f"value_{p}"], str) and fact[f"value_{p}"].strip() for p in own):
            raise StreamError(f"{where}: every value_<period> must be a non-empty string")
    if limit is not None and limit > len(raw):
        raise StreamError(f"--facts {limit}: {path} holds only {len(raw)} facts")
    return raw[:limit], periods or []


def _time(period: str) -> tuple[int, int]:
    try:
        return time_key(period)
    except ValueError:
        raise StreamError(f"value_{period}: the period {period!r} is not a time such as 2018 or 2021-03") from None


def _template_passages(path: Path, periods: list[str], raw: list[dict], texts: dict, report: ImportReport) -> None:
    data = read_json(path)
    for period in periods:
        rows = data.get(period) if isinstance(data, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, str) for r in rows):
            raise StreamError(f"{path}: expected {{period: [one passage per fact]}} with a list for {period!r}")
        _align(rows, path, period, raw, texts, report)


def _align(rows: list[str], path: Path, period: str, raw: list[dict], texts: dict, report: ImportReport) -> None:
    """Row j of a period's passages is about fact j: keep it if it names the entity, or states the value under
    another name for the entity (counted as renamed); drop it if it names neither."""
    if len(rows) < len(raw):
        raise StreamError(f"{path}: {len(rows)} passages for {period}, fewer than the {len(raw)} facts")
    for index, (fact, row) in enumerate(zip(raw, rows)):
        text = f" {normalize_answer(row)} "
        if f" {normalize_answer(fact['entity'])} " in text:
            texts[period][index].append(row)
        elif f" {normalize_answer(fact[f'value_{period}'])} " in text:
            texts[period][index].append(row)
            report.keep(f"passages that name their entity differently but state its value ({path.name})")
        else:
            report.drop(f"passages that name neither their fact's entity nor its value ({path.name})")


def _probes(path: Path, periods: list[str], raw: list[dict[str, Any]], report: ImportReport,
            templates: int, said: list[str]) -> dict[str, list[Probe]]:
    """The dataset's probes of each period, about the facts kept, each with its held-out question forms (or
    `templates` of the family, the rotation turning once per probe, none whose wording `said[fact]` holds)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise StreamError(f"{path}: expected {{period: {{\"changed\": [...], \"unchanged\": [...]}}}}")
    facts = {(normalize_answer(f["entity"]), normalize_answer(f["relation"])): (i, f) for i, f in enumerate(raw)}
    probes: dict[str, list[Probe]] = {}
    turns = itertools.count()
    for index, period in enumerate(periods):
        groups = data.get(period)
        if not isinstance(groups, dict):
            raise StreamError(f"{path}: no probes for period {period!r}")
        probes[period] = []
        for group in ("changed", "unchanged"):
            for number, record in enumerate(groups.get(group) or []):
                where = f"{path}: {period}.{group}[{number}]"
                if not isinstance(record, dict) or not all(isinstance(record.get(k), str) and record[k].strip()
                                                           for k in ("prompt", "ground_truth", "subject", "relation")):
                    raise StreamError(f"{where}: expected 'prompt', 'ground_truth', 'subject' and 'relation' strings")
                found = facts.get((normalize_answer(record["subject"]), normalize_answer(record["relation"])))
                if found is None:
                    report.drop("probes about facts not kept (--facts) or not in synthetic_facts_raw.json")
                    continue
                fact_index, fact = found
                answer = record["ground_truth"]
                kind = "new" if index == 0 else "changed" if record.get("is_changed") else "unchanged"
                fields = dict(answer=answer, kind=kind, key=f"{fact['entity']} | {fact['relation']}",
                              other_values=tuple(dict.fromkeys(v for p in periods if (v := fact[f"value_{p}"]) != answer)),
                              learned_in=_began(fact, periods, index))
                probes[period].append(Probe(prompt=record["prompt"], form="cloze", **fields))
                if templates:
                    forms = asked(fact["entity"], fact["relation"], None, "What", period, templates, next(turns),
                                  now=index == len(periods) - 1,
                                  allowed=lambda prompt: f" {wording(prompt)} " not in said[fact_index])
                    probes[period] += [Probe(prompt=prompt, form=form, **fields) for form, prompt in forms.items()]
                else:
                    probes[period] += question_probes(fact["entity"], fact["relation"], period, **fields)
        if not probes[period]:
            raise StreamError(f"{path}: no probe of period {period} is about a fact kept")
    return probes


def _began(fact: dict[str, Any], periods: list[str], index: int) -> str:
    """The period from which the fact's value at `periods[index]` holds (the start of its run of equal values)."""
    start = index
    while start > 0 and normalize_answer(fact[f"value_{periods[start - 1]}"]) == normalize_answer(fact[f"value_{periods[index]}"]):
        start -= 1
    return periods[start]
