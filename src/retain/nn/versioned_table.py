"""VersionedTable: a SlotMemory's value rows kept per period, copy-on-write, and read per example at any version.

Version v is the memory as period v closed; the last version is the live values. The first time a
period is about to write a row, the row's value as the previous period closed is copied aside, and
never touched again. So every closed version can be rebuilt bit for bit (the live values, with each row
taken from the first copy made after that version), while rows no later period wrote are shared by all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from retain.nn.slot_memory import SlotMemory


class VersionedTable:
    def __init__(self, memory: SlotMemory) -> None:
        self.memory = memory
        self.versions = 0  # periods begun
        # copies[v]: the rows period v+1 wrote, with their values as period v closed (indices, rows).
        self.copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._copied: set[int] = set()
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # this period's (rows, their values before it)
        self._tables: dict[int, torch.Tensor] = {}
        self._zeros: torch.Tensor | None = None

    def begin(self) -> None:
        """A new period starts: its writes go to the live values, which it alone reads until it closes."""
        self.versions += 1
        self._copied, self._pending, self._tables = set(), [], {}
        self.read_live()

    def before_write(self, rows: torch.Tensor) -> None:
        """Keep aside the values of the `rows` about to be written that this period has not written yet."""
        if self.versions < 2:
            return  # the first period has no earlier version to keep
        fresh = [row for row in rows.tolist() if row not in self._copied]
        if fresh:
            kept = torch.tensor(fresh)
            self._pending.append((kept, self.memory.read_rows(kept)))
            self._copied.update(fresh)

    def close(self) -> None:
        """The period ends; its rows' earlier values become the copy that rebuilds the version before it."""
        if self.versions >= 2:
            rows, values = [r for r, _ in self._pending], [v for _, v in self._pending]
            self.copies.append((torch.cat(rows) if rows else torch.empty(0, dtype=torch.long),
                                torch.cat(values) if values else torch.empty(0, self.memory.dim)))
        self._pending, self._tables = [], {}

    def copied_rows(self) -> int:
        """Rows the last closed period copied on write."""
        return len(self.copies[-1][0]) if self.versions >= 2 and self.copies else 0

    def copied_bytes(self) -> int:
        """Bytes the last closed period's copy keeps (its rows' indices and earlier values)."""
        if self.versions < 2 or not self.copies:
            return 0
        rows, values = self.copies[-1]
        return rows.numel() * rows.element_size() + values.numel() * values.element_size()

    def values_at(self, version: int) -> torch.Tensor:
        """The value table as period `version` closed (the last one: the live values)."""
        if version >= len(self.copies):
            return self.memory.value_table()
        if version not in self._tables:
            table = self.memory.value_table()
            for rows, values in reversed(self.copies[version:]):  # the earliest copy after `version` wins
                table[rows.to(table.device)] = values.to(table.device, table.dtype)
            self._tables[version] = table
        return self._tables[version]

    def read(self, versions: Sequence[int | None]) -> None:
        """Make example i of the next forwards read version `versions[i]`; None reads no memory at all (zeros:
        a memory's values start at zero, so that is the pretrained model)."""
        latest = self.versions - 1
        tables = [self.values_at(v) for v in range(latest)]
        index: dict[int | None, int] = {latest: -1}  # the slot memory's −1 is its live values
        if None in versions:
            index[None] = len(tables)
            if self._zeros is None:
                self._zeros = torch.zeros(self.memory.slots, self.memory.dim)
            tables.append(self._zeros)
        self.memory.tables = tables
        self.memory.table_of = torch.tensor([index.get(version, version) for version in versions])

    @contextlib.contextmanager
    def pretrained(self) -> Iterator[None]:
        """Meanwhile a forward of one example reads no memory (the pretrained model); then reads go on as before."""
        before = self.memory.tables, self.memory.table_of
        self.read([None])
        try:
            yield
        finally:
            self.memory.tables, self.memory.table_of = before

    def read_live(self) -> None:
        """Every example reads the live values (as in training)."""
        self.memory.tables, self.memory.table_of = [], None

    @torch.no_grad()
    def rollback(self) -> None:
        """Withdraw the latest period: every row it wrote gets back the value it had before."""
        rows, values = self.copies.pop()
        self.memory.write_rows(rows, values)
        self.versions -= 1
        self._tables = {}
        self.read_live()

    def state_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "copies": self.copies}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.versions, self.copies = int(state["versions"]), list(state["copies"])
        self._tables = {}
