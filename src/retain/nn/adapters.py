"""Per-task residual bottleneck adapters after a feed-forward block, chosen per example."""

from __future__ import annotations

import torch
from torch import nn

from retain.nn.sharding import assign


class BottleneckAdapter(nn.Module):
    """y + up(act(down(y))), the residual written here as just the bottleneck's output; `up` starts at zero."""

    def __init__(self, hidden_size: int, dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, dim)
        self.up = nn.Linear(dim, hidden_size)
        self.act = nn.GELU()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class TaskAdapters(nn.Module):
    """Wraps a feed-forward block: out = y + adapter_t(y), y = block(x), t the adapter chosen for each example.

    `active` is None (no adapter), an int (one adapter for the whole batch, as in training), or a tensor
    of one adapter index per example (−1: none), as routing sets it at inference.
    """

    def __init__(self, block: nn.Module, hidden_size: int, dim: int) -> None:
        super().__init__()
        self.block = block
        self.hidden_size, self.dim = hidden_size, dim
        self.adapters = nn.ModuleList()
        self.active: int | torch.Tensor | None = None

    def add_adapter(self) -> BottleneckAdapter:
        reference = next(self.block.parameters())
        adapter = BottleneckAdapter(self.hidden_size, self.dim).to(device=reference.device, dtype=reference.dtype)
        self.adapters.append(adapter)
        return adapter

    def reset_adapter(self, index: int) -> BottleneckAdapter:
        """Adapter `index` drawn afresh, in place, as `add_adapter` draws a new one (its parameters may be shards)."""
        adapter, fresh = self.adapters[index], BottleneckAdapter(self.hidden_size, self.dim)
        for param, value in zip(adapter.parameters(), fresh.parameters()):
            assign(param, value.detach())
        return adapter

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.block(x, *args, **kwargs)
        if self.active is None:
            return y
        if isinstance(self.active, int):
            return y + self.adapters[self.active](y)
        if len(self.active) != len(y):
            raise ValueError(f"adapters were routed for {len(self.active)} inputs but got a batch of {len(y)}; route this batch first")
        out = y.clone()
        for index in self.active.unique().tolist():
            if index >= 0:
                rows = self.active == index
                out[rows] = y[rows] + self.adapters[index](y[rows])
        return out
