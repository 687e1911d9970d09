"""Elastic weight consolidation (Kirkpatrick et al. 2017) and its online variant (Schwarz et al. 2018)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from retain.fisher import diagonal_fisher
from retain.methods.base import MethodError, Method, TaskData, register


@dataclass
class EWCConfig:
    # λ is large because the empirical Fisher at a well-trained point is tiny (mean ≈ 5e-7 per weight
    # on SmolLM2-135M). On the demo stream 1e4 changed nothing, 1e8 stopped new learning; 1e6 was best.
    ewc_lambda: float = field(default=1e6, metadata={"help": "Penalty strength λ in λ/2·Σ F(θ−θ*)²."})
    mode: str = field(
        default="separate",
        metadata={"help": "'separate': every task's penalty counts fully; 'online': older Fisher decays by gamma."},
    )
    gamma: float = field(default=1.0, metadata={"help": "Online mode: decay of the accumulated Fisher per task."})
    fisher_samples: int = field(default=64, metadata={"help": "Training examples per task used to estimate the Fisher."})
    params: str = field(default="", metadata={"help": "Regex of parameter names to anchor; empty = all trainable."})
    seed: int = field(default=0, metadata={"help": "Seed for choosing the Fisher examples."})

    def __post_init__(self) -> None:
        if self.mode not in ("separate", "online"):
            raise MethodError(f"--method-arg mode: expected 'separate' or 'online', got {self.mode!r}")


@register
class EWC(Method):
    """Penalty λ/2·Σ F(θ−θ*)², with all tasks' terms merged into one (F, θ*) pair.

    Separate mode sums every task's quadratic: Σ_t F_t(θ−θ*_t)² equals (Σ F_t)(θ−θ̄)² plus a constant,
    with θ̄ the Fisher-weighted mean of the anchors, so the gradient is exact and memory stays at two
    copies of the anchored weights whatever the number of tasks. Online mode keeps F ← γF + F_t and
    anchors at the latest weights.
    """

    name = "ewc"
    config_class = EWCConfig

    def __init__(self, config: EWCConfig | None = None) -> None:
        super().__init__(config)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def anchored_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        pattern = re.compile(self.config.params) if self.config.params else None
        return {
            name: p
            for name, p in model.named_parameters()
            if p.requires_grad and (pattern is None or pattern.search(name))
        }

    def penalty(self, model: nn.Module, inputs: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor | None:
        if not self.fisher:
            return None
        params = dict(model.named_parameters())
        total = sum((self.fisher[n] * (params[n] - self.anchor[n]) ** 2).sum() for n in self.fisher)
        return 0.5 * self.config.ewc_lambda * total

    def after_task(self, model: nn.Module, data: TaskData) -> None:
        params = self.anchored_parameters(model)
        rng = random.Random(f"{self.config.seed}:{data.task.name}")
        sample = rng.sample(data.features, min(self.config.fisher_samples, len(data.features)))
        fisher = diagonal_fisher(model, (data.collate([f]) for f in sample), params)
        for name, p in params.items():
            theta, f_new = p.detach().clone(), fisher[name]
            if name not in self.fisher:
                self.fisher[name], self.anchor[name] = f_new, theta
            elif self.config.mode == "online":
                self.fisher[name] = self.config.gamma * self.fisher[name] + f_new
                self.anchor[name] = theta
            else:
                merged = self.fisher[name] + f_new
                weighted = self.fisher[name] * self.anchor[name] + f_new * theta
                self.anchor[name] = torch.where(merged > 0, weighted / merged.clamp_min(1e-30), theta)
                self.fisher[name] = merged

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher, self.anchor = dict(state["fisher"]), dict(state["anchor"])
