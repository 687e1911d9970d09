"""SlotMemory: value rows ("slots") that each token reads a few of; what SMF trains and CASM versions.

A subclass says which parameters hold the rows (`value_blocks`: consecutive slot ranges) and records
the slots each forward read in `last_indices` (*batch, reads). Reads can be versioned per example: example i reads
`tables[table_of[i]]` (a frozen full table) or, where table_of[i] is −1, the live rows. A subclass reads its live
rows through `live(values, start)`, where `gradient_filter` (set by the method that trains them) sees their gradient:
in the forward's own graph, so also when FSDP gathers the rows from shards for the forward and scatters the gradient
back afterwards. Outside the forward, rows of parameters FSDP shards are read and written whole (gathered from every
process: all must call).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from retain.nn.sharding import assign, whole


class SlotMemory(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[torch.Tensor] = []
        self.table_of: torch.Tensor | None = None
        # (gradient of rows start…, start) → the gradient kept; None keeps all of it.
        self.gradient_filter: Callable[[torch.Tensor, int], torch.Tensor] | None = None

    def live(self, values: torch.Tensor, start: int) -> torch.Tensor:
        """`values` (the rows from slot `start` on), as a forward reads them: their gradient passes `gradient_filter`."""
        return _FilterGradient.apply(values, self, start) if values.requires_grad else values

    def value_blocks(self) -> list[tuple[int, nn.Parameter]]:
        """(first slot, parameter whose rows are the next slots), in slot order."""
        raise NotImplementedError

    @property
    def slots(self) -> int:
        return sum(len(values) for _, values in self.value_blocks())

    @property
    def dim(self) -> int:
        return self.value_blocks()[0][1].shape[1]

    def value_table(self) -> torch.Tensor:
        """A detached copy of every slot's live value row."""
        return torch.cat([whole(values) for _, values in self.value_blocks()])

    def read_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """A detached copy of the live value rows `rows`."""
        out = torch.empty(len(rows), self.dim)
        for start, values in self.value_blocks():
            mine = (rows >= start) & (rows < start + len(values))
            out[mine] = whole(values)[(rows[mine] - start).to(values.device)].to(out.device, out.dtype)
        return out

    @torch.no_grad()
    def write_rows(self, rows: torch.Tensor, rows_values: torch.Tensor) -> None:
        for start, values in self.value_blocks():
            mine = (rows >= start) & (rows < start + len(values))
            index, new = (rows[mine] - start).to(values.device), rows_values[mine].to(values.device, values.dtype)
            if not isinstance(values, DTensor):
                values[index] = new
                continue
            rows_of_all = whole(values)  # sharded: write the whole rows, keep this process's shard of them
            rows_of_all[index] = new
            assign(values, rows_of_all)

    def token_tables(self, tokens: int, device: torch.device) -> torch.Tensor | None:
        """Per flattened token, the table it reads (−1: live), or None when reads are not versioned."""
        if self.table_of is None:
            return None
        if tokens % len(self.table_of):
            raise ValueError(f"memory routed for {len(self.table_of)} inputs, got a batch of {tokens} tokens")
        # Tokens of example i are rows i·T … (i+1)·T−1 of the flattened batch.
        return self.table_of.to(device).repeat_interleave(tokens // len(self.table_of))

    def table_rows(self, table: int, start: int, live: torch.Tensor) -> torch.Tensor:
        """Rows start … start+len(live)−1 of `table`, or `live` itself for −1."""
        return live if table < 0 else self.tables[table][start : start + len(live)].to(live.device, live.dtype)


class _FilterGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: torch.Tensor, memory: SlotMemory, start: int) -> torch.Tensor:  # type: ignore[override]
        ctx.memory, ctx.start = memory, start
        return values.view_as(values)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        keep = ctx.memory.gradient_filter
        return (grad if keep is None else keep(grad, ctx.start)), None, None
