"""Experience replay: a reservoir buffer of past training examples mixed into every training batch."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

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
        extra = round(len(features) * self.config.ratio / (1 - self.config.ratio))
        return features + [self.rng.choice(self.buffer) for _ in range(extra)]

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
