"""Classification tasks whose rules contradict each other on the same inputs.

Every item is "the <filler> <cue> <filler>" over invented words; each task labels every cue `yes` or `no`.
The second task's rule is the first one's negation, and each later task's agrees with every earlier one on
some cues and contradicts it on others. So a model that learns a later task by overwriting an earlier
task's weights gets the earlier task wrong exactly where they disagree: forgetting is as visible as it gets.

- `named=True`: the prompt names its rule ("Rule beta: …") and every task trains and is probed on the same
  sentences; what an item means depends on the name alone.
- `named=False`: the prompt names no rule; each task's items use fillers of their own, so only the content
  tells which rule applies (what routing by content, or a joint model, can use).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from retain.bench.task_suite import invented_words
from retain.stream import Probe, Stream, Task

NAMES = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")
LABELS = ("yes", "no")
CUES = 8
FILLERS = 12  # per task when the rule is not named; shared when it is


@dataclass(frozen=True)
class ConflictingRulesConfig:
    tasks: int = field(default=3, metadata={"help": f"Tasks, 2 to {len(NAMES)}."})
    train_examples: int = field(default=48, metadata={"help": "Training examples per task."})
    probes: int = field(default=24, metadata={"help": "Probes per task (sentences never seen in training)."})
    named: bool = field(default=True, metadata={"help": "Name the task's rule in the prompt."})
    seed: int = field(default=0, metadata={"help": "Seed: the same config and seed give a byte-identical stream."})

    def __post_init__(self) -> None:
        if not 2 <= self.tasks <= len(NAMES):
            raise ValueError(f"conflicting rules: tasks must be 2 to {len(NAMES)}, got {self.tasks}")
        if self.train_examples < 1 or self.probes < 1:
            raise ValueError("conflicting rules: train_examples and probes must be at least 1")
        if self.train_examples + self.probes > CUES * FILLERS * (FILLERS - 1):
            raise ValueError(f"conflicting rules: at most {CUES * FILLERS * (FILLERS - 1)} distinct sentences per task")


def rules(tasks: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Each task's label (index into LABELS) for every cue: balanced, the second the first's negation, each
    later one neither equal to nor the negation of any earlier one."""
    balanced = [v for v in itertools.product((0, 1), repeat=CUES) if sum(v) == CUES // 2]
    first = rng.choice(balanced)
    chosen = [first, tuple(1 - b for b in first)]
    while len(chosen) < tasks:
        candidate = rng.choice(balanced)
        if candidate not in chosen and tuple(1 - b for b in candidate) not in chosen:
            chosen.append(candidate)
    return chosen


def generate(config: ConflictingRulesConfig = ConflictingRulesConfig(), name: str = "conflicting-rules") -> Stream:
    rng = random.Random(config.seed)
    words = invented_words(rng, CUES + FILLERS * (1 if config.named else config.tasks))
    cues, fillers = words[:CUES], words[CUES:]
    labels = rules(config.tasks, rng)

    def sentences(own: list[str]) -> list[tuple[str, int]]:
        """train_examples + probes distinct (sentence, cue index), the probes last."""
        every = [(f"the {a} {cue} {b}", c) for c, cue in enumerate(cues) for a, b in itertools.permutations(own, 2)]
        return rng.sample(every, config.train_examples + config.probes)

    common = sentences(fillers) if config.named else None
    tasks = []
    for t in range(config.tasks):
        items = common if config.named else sentences(fillers[FILLERS * t: FILLERS * (t + 1)])
        prefix = f"Rule {NAMES[t]}: " if config.named else "Item: "
        examples = [(f"{prefix}{sentence}\nMatch:", LABELS[labels[t][c]]) for sentence, c in items]
        train = [{"prompt": prompt, "completion": f" {answer}"} for prompt, answer in examples[: config.train_examples]]
        probes = [Probe(prompt=prompt, answer=answer, kind=NAMES[t], choices=LABELS)
                  for prompt, answer in examples[config.train_examples:]]
        tasks.append(Task(name=NAMES[t], train=train, probes=probes))
    return Stream(name=name, tasks=tasks)
