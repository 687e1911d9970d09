"""The fact router's relation matcher (`retain.relations`): its settings fitted on dev pairs, then scored on the
temporal-facts stream's probe templates, which no choice looked at.

1. Fit: for each embedding (the input embeddings raw, centred, or less their top 1–20 principal directions; the
   states after each of the first six decoder layers), temperature and "none" similarity of a grid, the mean
   log-likelihood of the right option on `DEV_PAIRS`, each paraphrase asked against three relations, with its own
   (the answer) or without it (the answer is "none"), and on `DEV_UNRELATED`, each asked against one and three
   relations (the answer is "none"). The best setting is printed beside the one in `retain.relations`.
   Then asking the model (`retain.relations.model_asker`), on `DEV_QUESTIONS` (relations of our own asked with
   verbs) and on the dev pairs asked as "What was the {paraphrase} of it?": for each way of joining the two
   readings (the words unless unsure, then the model; the model alone; the surer of the two) and each temperature
   and "none" score of a grid, the share of right decisions (the right relation, or none when none is right). The
   best is printed beside `ASK_TEMPERATURE` and `ASK_NONE`, with precision and recall on the dev questions.
2. Score, with the settings in `retain.relations`: the router (`retain.knowledge.read`) on every template of the
   family (`--probe-templates` all of them), over a `medium` stream's facts, with and without the matcher: per
   template, precision and recall of (fact, period): did it name the probe's fact and read the period that taught
   the answer; and the share of the stream's locality questions that read no memory ("recall" of `locality`). No
   training is involved: the registry holds the stream's facts, the model is the pretrained one.
3. Score the same way the router on `PERSON_WORDINGS` (forms "person/…"): each relation asked as a person might,
   with verbs, other nouns and other time phrases. They were written and committed before their first measurement
   and are never used for a choice: a check on wordings that no template, alias or matcher setting was shaped to.

    python benchmarks/relations.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import random
import statistics
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch

from common import ROOT, machine, mean_sd, write

from retain import load_model
from retain.bench.temporal_facts import PRESETS, generate
from retain.knowledge import FactRegistry, Read, read
from retain.relations import (ASK_NONE, ASK_TEMPERATURE, COMMON_DIRECTIONS, DEV_KINDS, DEV_PAIRS, DEV_QUESTIONS,
                               DEV_UNRELATED, NONE_SIMILARITY, TEMPERATURE, Ask, RelationMatcher, beside_none,
                               input_embedder, model_matcher)
from retain.stream import Stream
from retain.text import normalize_answer, spoken_time, wording


# Each relation of the stream asked as a person might ({s} the subject, {t} the period as a sentence names it; none
# with {t} asks about now, in the last period only). Not the generator's names or aliases, nor a training sentence.
PERSON_WORDINGS: dict[str, tuple[str, ...]] = {
    "harbour master": ("Who ran the harbour at {s} in {t}?", "who was in charge of the harbour of {s} back in {t}",
                       "Who's the harbour boss at {s} these days?"),
    "dock capacity": ("How many ships could {s} take in {t}?", "In early {t}, how big were the docks at {s}?",
                      "How many vessels can dock at {s} today?"),
    "mayor": ("Who led the town of {s} in {t}?", "Who was {s}'s top elected official around {t}?", "Who runs {s} now?"),
    "chief export": ("What did {s} mostly sell abroad in {t}?", "{s}'s biggest export in {t}?",
                     "What does {s} ship out most these days?"),
    "population": ("How many people lived in {s} in {t}?", "As of {t}, how many inhabitants did {s} have?",
                   "How many people call {s} home today?"),
    "director": ("Who ran {s} in {t}?", "Who was in charge of {s} in early {t}?", "Who heads {s} today?"),
    "headquarters": ("Where did {s} have its main office in {t}?", "In {t}, where was {s} headquartered?",
                     "Where is {s} run from these days?"),
    "staff": ("How many people worked at {s} in {t}?", "How many employees did {s} have back in {t}?",
              "How many people does {s} employ now?"),
    "captain": ("Who commanded {s} in {t}?", "Who was the skipper of {s} around {t}?",
                "Who is at the helm of {s} now?"),
    "home port": ("Which port was {s} based at in {t}?", "Where did {s} call home in {t}?",
                  "Where does {s} berth these days?"),
    "registration code": ("What was {s}'s registration number in {t}?", "What ID number did {s} carry in {t}?",
                          "What is the registry number of {s} now?"),
    "lead engineer": ("Who led the engineering work on {s} in {t}?", "Who was the top engineer on {s} in {t}?",
                      "Who is heading the engineers on {s} now?"),
    "budget": ("How much money did {s} have in {t}?", "How much was spent on {s} in {t}?",
               "How much money does {s} have now?"),
    "completion date": ("When was {s} supposed to be finished, as of {t}?", "In {t}, when was {s} expected to be done?",
                        "When will {s} be completed?"),
}


def person_questions(subject: str, relation: str, period: str, last: bool) -> list[tuple[str, bool]]:
    """(question, whether it names a time) for each of `relation`'s `PERSON_WORDINGS` asked about `subject` at
    `period`: the dated ones, and in the `last` period those about now too."""
    questions = []
    for template in PERSON_WORDINGS[relation]:
        dated = "{t}" in template
        if dated or last:
            prompt = template.format(s=subject, t=spoken_time(period))
            questions.append((prompt[:1].upper() + prompt[1:] if template.startswith("{s}") else prompt, dated))
    return questions


def dev_cases(seed: int = 0) -> list[tuple[str, list[str], int | None]]:
    """(paraphrase, three candidate relations, the index of the right one or None)."""
    rng = random.Random(seed)
    relations = [r for r, _ in DEV_PAIRS]
    cases = []
    for i, (relation, paraphrase) in enumerate(DEV_PAIRS):
        others = rng.sample([r for r in relations if r != relation], 3)
        with_it = [relation, *others[:2]]
        rng.shuffle(with_it)
        cases += [(paraphrase, with_it, with_it.index(relation)), (paraphrase, others, None)]
    return cases + [(other, rng.sample(relations, k), None) for other in DEV_UNRELATED for k in (1, 3)]


def layer_embedder(model, tokenizer, layer: int, common: int | None = COMMON_DIRECTIONS):
    """Texts → the unit mean of the model's states after decoder layer `layer` (0: the input embeddings, less their
    mean and `common` top directions, raw for None)."""
    if layer == 0:
        return input_embedder(model.get_input_embeddings().weight, tokenizer.encode, common)

    @torch.no_grad()
    def embed(texts):
        states = [model(torch.tensor([tokenizer.encode(f" {t}")]), output_hidden_states=True).hidden_states[layer][0]
                  for t in texts]
        return torch.nn.functional.normalize(torch.stack([s.mean(0) for s in states]), dim=-1)

    return embed


def fit(model, tokenizer) -> dict:
    """The grid's best setting by mean log-likelihood of the right option on the dev cases, and its accuracy."""
    cases = dev_cases()
    results = []
    embeddings = [*((0, common) for common in (None, 0, 1, 2, 3, 5, 8, 10, 15, 20)),
                  *((layer, None) for layer in range(1, 7))]
    for layer, common in embeddings:
        matcher = RelationMatcher(layer_embedder(model, tokenizer, layer, common))
        sims = [matcher.similarities(normalize_answer(p), c) for p, c, _ in cases]
        grid = itertools.product((0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2), [n / 20 for n in range(2, 19)])
        for temperature, none in grid:
            loglik = right = 0.0
            for s, (_, _, answer) in zip(sims, cases):
                logits = [x / temperature for x in s.tolist()] + [none / temperature]
                top = max(logits)
                log_z = top + math.log(sum(math.exp(v - top) for v in logits))
                target = len(logits) - 1 if answer is None else answer
                loglik += logits[target] - log_z
                right += max(range(len(logits)), key=logits.__getitem__) == target
            results.append({"layer": layer, "common_directions": common, "temperature": temperature, "none_similarity": none,
                            "loglik": loglik / len(cases), "accuracy": right / len(cases)})
    best = max(results, key=lambda r: r["loglik"])
    chosen = next(r for r in results if (r["layer"], r["common_directions"], r["temperature"], r["none_similarity"])
                  == (0, COMMON_DIRECTIONS, TEMPERATURE, NONE_SIMILARITY))
    return {"best": best, "in_use": chosen, "cases": len(cases)}


def matchers(model, tokenizer) -> tuple[RelationMatcher, RelationMatcher]:
    """The matcher on the words alone (`ask=false`) and the default one, which asks the model too (the pretrained
    model: no memory to switch off)."""
    asking = model_matcher(model, lambda texts: tokenizer(list(texts), return_tensors="pt"), contextlib.nullcontext)
    return RelationMatcher(asking.embed), asking


# How the words' and the model's confidences join: what `RelationMatcher` does is "surer".
JOINS = {"words, else model": lambda w, m: w if sum(w) >= 0.5 else m, "model": lambda w, m: m,
         "surer": lambda w, m: [max(a, b) for a, b in zip(w, m)]}


def fit_ask(words: RelationMatcher, ask: Ask) -> dict:
    """The join, temperature and "none" score with the most right decisions on the dev questions and pairs, the
    setting in use, and the precision and recall of both on the dev questions."""
    cases = [(wording(q.format(s="it", t="2019")), list(DEV_KINDS[k]),
              None if r is None else DEV_KINDS[k].index(r), "questions")
             for k, q, r in DEV_QUESTIONS]
    cases += [(wording(f"What was the {p} of it?"), c, a, "pairs") for p, c, a in dev_cases()]
    read = [(words(w, c), ask(w, c), answer, kind) for w, c, answer, kind in cases]
    results = []
    for join, temperature, none in itertools.product(JOINS, (0.25, 0.5, 1.0, 2.0), [n / 4 for n in range(-24, 0)]):
        counts: dict[str, list[int]] = {}
        decided = 0
        for w, scores, answer, kind in read:
            sure = JOINS[join](w, beside_none(scores, none, temperature))
            best = max(range(len(sure)), key=sure.__getitem__)
            named = sure[best] >= 0.5
            decided += best == answer if named else answer is None
            c = counts.setdefault(kind, [0, 0, 0])
            c[0], c[1], c[2] = c[0] + (named and best == answer), c[1] + named, c[2] + (answer is not None)
        results.append({"join": join, "temperature": temperature, "none": none, "right": decided / len(read),
                        **{f"dev_{kind}": score for kind, score in tally(counts).items()}})
    best = max(results, key=lambda r: r["right"])
    chosen = next(r for r in results if (r["join"], r["temperature"], r["none"]) == ("surer", ASK_TEMPERATURE, ASK_NONE))
    return {"best": best, "in_use": chosen, "cases": len(read)}


def medium_stream(seed: int) -> tuple[Stream, FactRegistry, list[str]]:
    """A `medium` stream asked in every template of the family, a registry of its facts, and its periods."""
    stream = generate(replace(PRESETS["medium"], probe_templates=38, seed=seed))
    registry = FactRegistry()
    for task in stream.tasks:
        registry.observe_facts(task.facts, task.period)
    return stream, registry, [task.period for task in stream.tasks]


def fact_key(key: str) -> str:
    """A probe's or a read's "subject | relation[ | …]" as the fact it names, normalised."""
    return normalize_answer(" | ".join(key.split(" | ")[:2]))


def read_right(seen: Read, key: str, period: str, periods: list[str]) -> bool:
    """Whether a read named the fact of `key` and the version of `period`."""
    return seen.fact is not None and fact_key(f"{seen.fact.subject} | {seen.fact.relation}") == fact_key(key) \
        and periods[seen.version] == period


def tally(counts: dict[str, list[int]]) -> dict[str, dict[str, float | None]]:
    """Per form, [right, named, asked] → precision (of the named) and recall (of the asked)."""
    return {form: {"precision": r / n if n else None, "recall": r / total}
            for form, (r, n, total) in sorted(counts.items())}


def count(counts: dict[str, list[int]], forms: Iterable[str], seen: Read, right: bool) -> None:
    """Adds a read to each form's [right, named, asked]."""
    for form in forms:
        c = counts.setdefault(form, [0, 0, 0])
        c[0], c[1], c[2] = c[0] + right, c[1] + (seen.fact is not None), c[2] + 1


def summarise(per_seed: dict[int, dict[str, dict[str, dict]]]) -> dict[str, dict[str, dict]]:
    """Per router and form, the mean ± sd over seeds of precision and recall."""
    seeds = list(per_seed)
    return {router: {form: {m: mean_sd([per_seed[s][router][form][m] for s in seeds]) for m in ("precision", "recall")}
                     for form in per_seed[seeds[0]][router]} for router in per_seed[seeds[0]]}


def router_scores(seed: int, matcher: RelationMatcher | None) -> dict[str, dict[str, float | None]]:
    """Per template (and per half), the router's precision and recall of (fact, period) on a `medium` stream; and
    per relation of `PERSON_WORDINGS` ("person/mayor"), as of a time or now, each of the stream's facts asked in its
    wordings in every period (about now in the last)."""
    stream, registry, periods = medium_stream(seed)
    counts: dict[str, list[int]] = {}
    for task in stream.tasks:
        for probe in task.probes:
            seen = read(probe.prompt, periods, registry, relate=matcher)
            count(counts, (probe.form, probe.form.split("/")[0] + "/*"), seen,
                  read_right(seen, probe.key, probe.learned_in, periods))
    for index, task in enumerate(stream.tasks):
        last = index == len(stream.tasks) - 1
        for key, learned_in in dict.fromkeys((probe.key, probe.learned_in) for probe in task.probes):
            subject, relation = key.split(" | ")[:2]
            for prompt, dated in person_questions(subject, relation, task.period, last):
                seen = read(prompt, periods, registry, relate=matcher)
                count(counts, (f"person/{relation}", "person/as-of" if dated else "person/now", "person/*"), seen,
                      read_right(seen, key, learned_in, periods))
    scores = tally(counts)
    # A locality question names a stream subject or relation but no fact the stream has: any memory it reads is wrong.
    scores["locality"] = {"precision": None, "recall": statistics.fmean(
        read(prompt, periods, registry, relate=matcher).version is None for prompt in stream.locality)}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "relations.json")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    model.eval()
    calibration = fit(model, tokenizer)
    print("fit:", calibration)
    words, asking = matchers(model, tokenizer)
    calibration["ask"] = fit_ask(words, asking.ask)
    print("ask:", calibration["ask"])
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = {"verbatim": router_scores(seed, None), "by_meaning_words": router_scores(seed, words),
                          "by_meaning": router_scores(seed, asking)}
        for router, scores in per_seed[seed].items():
            print(seed, router, {h: scores[h] for h in ("dev/*", "test/*", "person/*", "locality")})
    write(args.output, {"benchmark": "relations", "model": args.model, "seeds": seeds, "machine": machine(),
                        "calibration": calibration, "mean_sd": summarise(per_seed), "per_seed": per_seed})


if __name__ == "__main__":
    main()
