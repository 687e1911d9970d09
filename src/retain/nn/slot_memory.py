"""SlotMemory: value rows ("slots") that each token reads a few of; what SMF trains and CASM versions.

A subclass says which parameters hold the rows (`value_blocks`: consecutive slot ranges) and records
the slots each forward read in `last_indices` (*batch, reads). Reads can be versioned per example: example i reads
`tables[table_of[i]]` (a frozen full table) or, where table_of[i] is −1, the live rows.
"""

from __future__ import annotations

import torch
from torch import nn


class SlotMemory(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[torch.Tensor] = []
        self.table_of: torch.Tensor | None = None

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
        return torch.cat([values.detach() for _, values in self.value_blocks()])

    def read_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """A detached copy of the live value rows `rows`."""
        out = torch.empty(len(rows), self.dim)
        for start, values in self.value_blocks():
            mine = (rows >= start) & (rows < start + len(values))
            out[mine] = values.detach()[(rows[mine] - start).to(values.device)].to(out.device, out.dtype)
        return out

    @torch.no_grad()
    def write_rows(self, rows: torch.Tensor, rows_values: torch.Tensor) -> None:
        for start, values in self.value_blocks():
            mine = (rows >= start) & (rows < start + len(values))
            values[(rows[mine] - start).to(values.device)] = rows_values[mine].to(values.device, values.dtype)

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
