"""What methods need when training is data parallel (torchrun, accelerate launch): sums every process gets."""

from __future__ import annotations

import torch
import torch.distributed as dist


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all processes when training is distributed (in place); as it is otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def processes() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def process_index() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
