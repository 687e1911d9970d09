"""A sequence of instruction tasks that share one vocabulary of invented words, and so interfere.

The words mean nothing to a pretrained model, so each task must be learned from its examples:
- `verdict`: a review containing one cue word → positive / negative (likelihood ranking of choices)
- `section`: a headline whose cue word decides its section → sports / science / trade / arts (choices)
- `extract`: a record of owner, place and item → the place (exact match)
- `reverse`: three words → the same words in reverse order (exact match)
The same words are cues with different meanings in the two classification tasks and fillers in
the others, so learning one task overwrites what the previous ones stored in the same weights.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from retain.stream import Probe, Stream, Task

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u"]
VERDICTS = ("positive", "negative")
SECTIONS = ("sports", "science", "trade", "arts")


@dataclass(frozen=True)
class TaskSuiteConfig:
    train_examples: int = field(default=48, metadata={"help": "Training examples per task."})
    probes: int = field(default=16, metadata={"help": "Probes per task (instances never seen in training)."})
    seed: int = field(default=0, metadata={"help": "Seed: the same config and seed give a byte-identical stream."})


Example = tuple[str, str, tuple[str, ...]]  # prompt, answer, choices


def generate(config: TaskSuiteConfig = TaskSuiteConfig(), name: str = "task-suite") -> Stream:
    rng = random.Random(config.seed)
    words = invented_words(rng, 24)
    verdict_cues = {w: VERDICTS[i % 2] for i, w in enumerate(words[:8])}
    section_cues = {w: SECTIONS[i % 4] for i, w in enumerate(words[4:12])}  # overlaps the verdict cues on purpose
    fillers = words[12:]

    def verdict() -> Example:
        cue = rng.choice(sorted(verdict_cues))
        a, b = rng.sample(fillers, 2)
        return f"Review: the {a} was {cue} and {b}.\nVerdict:", verdict_cues[cue], VERDICTS

    def section() -> Example:
        cue = rng.choice(sorted(section_cues))
        a, b = rng.sample(fillers, 2)
        return f"Headline: {a} {cue} {b}\nSection:", section_cues[cue], SECTIONS

    def extract() -> Example:
        owner, place, item = rng.sample(words, 3)
        return f"Record: owner {owner}; place {place}; item {item}\nPlace:", place, ()

    def reverse() -> Example:
        a, b, c = rng.sample(words, 3)
        return f"Sequence: {a} {b} {c}\nReversed:", f"{c} {b} {a}", ()

    tasks = [_task(task_name, make, config) for task_name, make in
             (("verdict", verdict), ("section", section), ("extract", extract), ("reverse", reverse))]
    return Stream(name=name, tasks=tasks)


def invented_words(rng: random.Random, count: int) -> list[str]:
    """`count` distinct two-syllable words no pretrained model has a meaning for."""
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(2)) + rng.choice(["", "n", "k", "x"])
        if word not in words:
            words.append(word)
    return words


def _task(name: str, make: Callable[[], Example], config: TaskSuiteConfig) -> Task:
    seen: set[str] = set()
    examples: list[Example] = []
    for _ in range(100 * (config.train_examples + config.probes)):
        example = make()
        if example[0] not in seen:
            seen.add(example[0])
            examples.append(example)
        if len(examples) == config.train_examples + config.probes:
            break
    else:
        raise ValueError(f"task suite: task {name!r} has too few distinct instances for the requested sizes")
    train = [{"prompt": prompt, "completion": f" {answer}"} for prompt, answer, _ in examples[: config.train_examples]]
    probes = [Probe(prompt=prompt, answer=answer, kind=name, choices=choices)
              for prompt, answer, choices in examples[config.train_examples :]]
    return Task(name=name, train=train, probes=probes)


def joint(stream: Stream) -> Task:
    """One task holding every task's training examples (the multi-task upper bound) and all probes."""
    return Task(name="joint", train=[e for t in stream.tasks for e in t.train], probes=[p for t in stream.tasks for p in t.probes])
