"""The fact router on follow-ups: a conversation's second turn that names no subject ("And in 2020?").

Over a `medium` stream's facts (seeds 0, 1, 2), each probe of the template family (`--probe-templates` all of them)
is a first turn, about its fact as of its period; a second turn in each of `FOLLOW_UPS` (phrasings of our own, none
a probe template) asks about the same fact as of another period of the stream, or now. The second turn is read as
`retain ask --conversation` reads it (`retain.knowledge.follow_up`, then `read`), and scored as `relations.py`
scores probes: precision and recall of (fact, period), per phrasing and per half of the first turn's template, with
the router finding facts verbatim only, with the relation matcher on the words alone (`ask=false`) and asking the
model too (`by_meaning` and `ask`, CASM's defaults).
Two controls that must not follow the first turn: the stream's locality questions (they name their own subject) and
a first turn that is a locality question (no fact to follow). No training: the registry holds the stream's facts,
the matcher reads the pretrained model.

    python benchmarks/follow_ups.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

from common import ROOT, machine, write
from relations import count, fact_key, matchers, medium_stream, read_right, summarise, tally

from retain import load_model
from retain.knowledge import follow_up, read
from retain.relations import RelationMatcher
from retain.text import spoken_time

# Second turns, `{t}` another period of the stream in words as a person writes it; None: about now.
FOLLOW_UPS: tuple[tuple[str, str | None], ...] = (
    ("and-in", "And in {t}?"), ("what-about", "What about in {t}?"), ("back-in", "And back in {t}?"),
    ("how-about", "How about {t}?"), ("and-now", None), ("these-days", None),
)
PRESENT = {"and-now": "And now?", "these-days": "And these days?"}


def scores(seed: int, relate: RelationMatcher | None) -> dict[str, dict[str, float | None]]:
    stream, registry, periods = medium_stream(seed)
    # (subject | relation) → period → the period whose training taught the answer as of it
    taught: dict[str, dict[str, str]] = {}
    for task in stream.tasks:
        for probe in task.probes:
            taught.setdefault(fact_key(probe.key), {})[task.period] = probe.learned_in
    rng = random.Random(seed)
    counts: dict[str, list[int]] = {}
    for task in stream.tasks:
        for probe in task.probes:
            if probe.form.split("/")[1].startswith("now"):
                continue  # a first turn about now: its follow-ups would ask what it asked
            for name, text in FOLLOW_UPS:
                other = rng.choice([p for p in periods if p != task.period])
                second = PRESENT[name] if text is None else text.format(t=spoken_time(other))
                asked = periods[-1] if text is None else other
                alone = follow_up(second, [probe.prompt], periods, registry, relate)
                seen = read(alone, periods, registry, relate=relate)
                count(counts, (name, f"{probe.form.split('/')[0]}/*"), seen,
                      read_right(seen, probe.key, taught[fact_key(probe.key)][asked], periods))
    result = tally(counts)
    first = stream.tasks[0].probes[0].prompt
    # Controls: a question naming its own subject is not a follow-up, and nothing known is no turn to follow.
    result["locality"] = {"precision": None, "recall": statistics.fmean(
        read(follow_up(q, [first], periods, registry, relate), periods, registry, relate=relate).version is None
        for q in stream.locality)}
    result["after-locality"] = {"precision": None, "recall": statistics.fmean(
        read(follow_up("And now?", [q], periods, registry, relate), periods, registry, relate=relate).fact is None
        for q in stream.locality)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "follow_ups.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    model, tokenizer = load_model(args.model)
    model.eval()
    words, asking = matchers(model, tokenizer)
    per_seed = {seed: {"verbatim": scores(seed, None), "by_meaning_words": scores(seed, words),
                       "by_meaning": scores(seed, asking)} for seed in seeds}
    summary = summarise(per_seed)
    for router, rows in summary.items():
        for form, row in rows.items():
            print(router, form, {m: None if v is None else round(v["mean"], 3) for m, v in row.items()})
    write(args.output, {"benchmark": "follow-ups", "model": args.model, "seeds": seeds, "follow_ups": dict(FOLLOW_UPS),
                        "machine": machine(), "mean_sd": summary, "per_seed": per_seed})


if __name__ == "__main__":
    main()
