"""Elastic weight consolidation (Kirkpatrick et al. 2017) and its online variant (Schwarz et al. 2018)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from retain.fisher import FisherAnchor, diagonal_fisher
from retain.methods.base import Method, MethodConfig, TaskData, TrainingContext, register


@dataclass
class EWCConfig(MethodConfig):
    # λ is large because the empirical Fisher at a well-trained point is tiny (mean ≈ 5e-7 per weight
    # on SmolLM2-135M). On the demo stream 1e4 changed nothing, 1e8 stopped new learning; 1e6 was best.
    ewc_lambda: float = field(default=1e6, metadata={"help": "Penalty strength λ in λ/2·Σ F(θ−θ*)².", "min": 0})
    mode: Literal["separate", "online"] = field(
        default="separate",
        metadata={"help": "'separate': every task's penalty counts fully; 'online': older Fisher decays by gamma."},
    )
    gamma: float = field(default=1.0, metadata={"help": "Online mode: decay of the accumulated Fisher per task.", "min": 0})
    fisher_samples: int = field(default=64, metadata={"help": "Training examples per task used to estimate the Fisher.",
                                                      "min": 1})
    params: str | None = field(default=None, metadata={"help": "Regex of parameter names to anchor; None = all trainable."})
    seed: int = field(default=0, metadata={"help": "Seed for choosing the Fisher examples."})


@register
class EWC(Method):
    """Penalty λ/2·Σ F(θ−θ*)², with all tasks' terms merged into one (F, θ*) pair (see `FisherAnchor`)."""

    name = "ewc"
    config_class = EWCConfig
    # The Fisher and anchors follow FSDP's shards. DeepSpeed keeps gradients in its own partitioned buffers, not in the
    # p.grad the Fisher is read from.
    sharded_by = frozenset({"fsdp"})

    def __init__(self, config: EWCConfig | None = None) -> None:
        super().__init__(config)
        self.anchor = FisherAnchor(self.config.mode, self.config.gamma)

    def anchored_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        pattern = re.compile(self.config.params) if self.config.params else None
        return {
            name: p
            for name, p in model.named_parameters()
            if p.requires_grad and (pattern is None or pattern.search(name))
        }

    def after_forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], context: TrainingContext) -> torch.Tensor | None:
        total = self.anchor.penalty(model)
        return None if total is None else 0.5 * self.config.ewc_lambda * total

    def after_task(self, model: nn.Module, data: TaskData, context: TrainingContext) -> dict[str, float]:
        params = self.anchored_parameters(model)
        rng = random.Random(f"{self.config.seed}:{data.task.name}")
        sample = rng.sample(data.features, min(self.config.fisher_samples, len(data.features)))
        self.anchor.add(params, diagonal_fisher(model, (data.collate([f]) for f in sample), params))
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.anchor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor.load_state_dict(state)
