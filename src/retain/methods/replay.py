"""Experience replay: a reservoir buffer of past training examples mixed into every training batch.

Data parallel, every process holds the same buffer (the same examples, reservoir and seed) and draws the replayed
examples of the whole global batch, keeping its own share: together the processes replay exactly what one process
would for the same global batch (when the global replay count divides by the number of processes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from accelerate import PartialState
from torch import nn

from retain.methods.base import Features, Method, MethodConfig, TaskData, TrainingContext, register


@dataclass
class ReplayConfig(MethodConfig):
    buffer_size: int = field(default=256, metadata={"help": "Examples kept from all past tasks together.", "min": 0})
    ratio: float = field(default=0.25, metadata={"help": "Share of each training batch drawn from the buffer.", "min": 0,
                                                 "below": 1})
    seed: int = field(default=0, metadata={"help": "Seed of the reservoir and of the replay draws."})


@register
class Replay(Method):
    """Each batch of n new examples gets round(n·r/(1−r)) replayed ones, so replay is a share r of it.

    The buffer is a uniform sample of every example seen (reservoir sampling, Vitter's algorithm R).
    """

    name = "replay"
    config_class = ReplayConfig

    def __init__(self, config: ReplayConfig | None = None) -> None:
        super().__init__(config)
        self.buffer: list[Features] = []
        self.seen = 0
        self.rng = random.Random(self.config.seed)

    def extend_batch(self, features: list[Features]) -> list[Features]:
        if not self.buffer or self.config.ratio == 0:
            return features
        processes = PartialState()
        extra = round(len(features) * processes.num_processes * self.config.ratio / (1 - self.config.ratio))
        drawn = [self.rng.choice(self.buffer) for _ in range(extra)]
        share = -(-extra // processes.num_processes)
        return features + drawn[processes.process_index * share : (processes.process_index + 1) * share]

    def after_task(self, model: nn.Module, data: TaskData, context: TrainingContext) -> dict[str, float]:
        for example in data.features:
            self.seen += 1
            if len(self.buffer) < self.config.buffer_size:
                self.buffer.append(example)
            else:
                slot = self.rng.randrange(self.seen)
                if slot < self.config.buffer_size:
                    self.buffer[slot] = example
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer, "seen": self.seen, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer, self.seen = list(state["buffer"]), int(state["seen"])
        self.rng.setstate(state["rng"])
