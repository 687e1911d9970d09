"""Diagonal Fisher information from per-example gradients of the model's own loss (shared by EWC and ARIA)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


def diagonal_fisher(
    model: nn.Module, examples: Iterable[dict[str, torch.Tensor]], params: dict[str, nn.Parameter]
) -> dict[str, torch.Tensor]:
    """Mean over examples of the squared gradient of `model(**example).loss` for each parameter in `params`.

    Each element of `examples` must be a batch of one example: squaring a batch-mean gradient would
    measure the gradient's mean, not its second moment, and underestimate the Fisher. With
    torch.distributed initialised, sums and counts are all-reduced so every rank gets the same estimate.
    """
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
    if dist.is_available() and dist.is_initialized():
        for tensor in fisher.values():
            dist.all_reduce(tensor)
        dist.all_reduce(total)
    if total.item() == 0:
        raise ValueError("diagonal_fisher: no examples given")
    return {name: f / total for name, f in fisher.items()}
