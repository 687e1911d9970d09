"""Diagonal Fisher information from per-example gradients of the model's own loss (shared by EWC and ARIA)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from accelerate import PartialState
from accelerate.utils import reduce
from torch import nn
from torch.distributed.tensor import DTensor

from retain.nn.sharding import laid_out_like, local, whole


def diagonal_fisher(
    model: nn.Module, examples: Iterable[dict[str, torch.Tensor]], params: dict[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    """Mean over examples of the squared gradient of `model(**example).loss` for each parameter in `params`.

    Each element of `examples` must be a batch of one example: squaring a batch-mean gradient would
    measure the gradient's mean, not its second moment, and underestimate the Fisher. Data parallel, every
    process is given the same examples and takes its share of them; sums and counts are added over processes, so
    every process gets the estimate one process would. Sharded by FSDP, every process runs every example (the
    gradient FSDP leaves a process is its shard of the mean over processes, here of one and the same example) and
    keeps the Fisher of its own shard.
    """
    state, sharded = PartialState(), any(isinstance(p, DTensor) for p in params.values())
    examples = list(examples)
    if not sharded:
        examples = examples[state.process_index :: state.num_processes]
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()  # dropout would add noise that is not part of the model's predictive distribution
    device = next(iter(params.values())).device
    try:
        for example in examples:
            model.zero_grad(set_to_none=True)
            loss = model(**{k: v.to(device) for k, v in example.items()}).loss
            loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach().float() ** 2
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    total = torch.tensor(float(count), device=device)
    if not sharded:
        total, fisher = reduce(total, "sum"), reduce(fisher, "sum")
    if total.item() == 0:
        raise ValueError("diagonal_fisher: no examples given")
    return {name: f / total for name, f in fisher.items()}


class FisherAnchor:
    """A quadratic anchor Σ F(θ−θ*)² over named parameters, with every task's terms merged into one (F, θ*) pair.

    `separate` sums every task's quadratic: Σ_t F_t(θ−θ*_t)² equals (Σ F_t)(θ−θ̄)² plus a constant, with θ̄
    the Fisher-weighted mean of the anchors, so the gradient is exact and memory stays at two copies of the
    anchored weights whatever the number of tasks. `online` keeps F ← γF + F_t and anchors at the latest weights.
    """

    def __init__(self, mode: str = "separate", gamma: float = 1.0) -> None:
        if mode not in ("separate", "online"):
            raise ValueError(f"mode: expected 'separate' or 'online', got {mode!r}")
        self.mode, self.gamma = mode, gamma
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def add(self, params: dict[str, nn.Parameter], fisher: dict[str, torch.Tensor]) -> None:
        """Merge one task's Fisher `fisher`, anchored at the current values of `params`."""
        for name, p in params.items():
            theta, f_new = p.detach().clone(), fisher[name]
            if name not in self.fisher:
                self.fisher[name], self.anchor[name] = f_new, theta
                continue
            self._laid_out(name, p)
            if self.mode == "online":
                self.fisher[name] = self.gamma * self.fisher[name] + f_new
                self.anchor[name] = theta
            else:
                merged = self.fisher[name] + f_new
                weighted = self.fisher[name] * self.anchor[name] + f_new * theta
                self.anchor[name] = torch.where(merged > 0, weighted / merged.clamp_min(1e-30), theta)
                self.fisher[name] = merged

    def penalty(self, model: nn.Module, scale: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor | None:
        """Σ F(θ−θ*)² at the model's current weights, each parameter's term times its `scale` (a constant: its
        gradient is scaled alike) when given; None before the first task was added. Sharded by FSDP, the sum over
        this process's shard: its gradient is exactly the whole penalty's on that shard."""
        if not self.fisher:
            return None
        scale = scale or {}
        terms = []
        for name, p in model.named_parameters():
            if name in self.fisher:
                f, anchor = self._laid_out(name, p)
                term = (f * (local(p) - anchor) ** 2).sum()
                terms.append(term * scale[name] if name in scale else term)
        return sum(terms)

    def _laid_out(self, name: str, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(F, θ*) of `name` as `p` is laid out: whole tensors read from a checkpoint are cut to `p`'s shard once."""
        if isinstance(p, DTensor) and not isinstance(self.fisher[name], DTensor):
            for store in (self.fisher, self.anchor):
                store[name] = laid_out_like(store[name], p)
        return local(self.fisher[name]), local(self.anchor[name])

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """Whole tensors, also when sharded (gathered: every process must call it)."""
        return {kind: {n: whole(t).cpu() if isinstance(t, DTensor) else t for n, t in store.items()}
                for kind, store in (("fisher", self.fisher), ("anchor", self.anchor))}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.fisher, self.anchor = dict(state["fisher"]), dict(state["anchor"])

