"""Whole tensors and shards of tensors that FSDP may have sharded (as DTensors); plain tensors pass through."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, Replicate, distribute_tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` detached, gathered whole when sharded (collective: every process must call it)."""
    tensor = tensor.detach()
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor; the tensor itself otherwise."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def laid_out_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor `full` laid out as `like` is: cut to this process's shard when `like` is sharded (every
    process holds `full`, so nothing is sent)."""
    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


@torch.no_grad()
def assign(param: torch.Tensor, full: torch.Tensor) -> None:
    """Set `param` to the whole tensor `full` (its shard of it, when sharded)."""
    local(param).copy_(local(laid_out_like(full.to(param.dtype), param)))


def embed(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` of an embedding table; sharded by rows, each process looks up its rows and the lookups are summed,
    so the table is never gathered whole."""
    if not isinstance(weight, DTensor):
        return torch.nn.functional.embedding(ids, weight)
    ids = distribute_tensor(ids, weight.device_mesh, [Replicate()] * weight.device_mesh.ndim, src_data_rank=None)
    return torch.nn.functional.embedding(ids, weight).full_tensor()
