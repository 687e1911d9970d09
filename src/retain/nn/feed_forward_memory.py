"""A pretrained model's own feed-forward blocks, read as one sparse key-value memory.

A feed-forward block computes down(a) with a = act(x·W_in): each intermediate unit i is a slot whose
key is its input weights and whose value is column i of the down projection (Geva et al. 2021,
"Transformer Feed-Forward Layers Are Key-Value Memories"). A token reads every slot, weighted by
a_i; the slots it reads most are the k units of largest |a_i|. Unlike a retrofitted product-key
memory, these keys are pretrained and the rest of the model already reads these values, so writing a
few value rows changes what the model says from any wording that activates them.

The down projections of the chosen layers are replaced by `MemoryProjection`s that hold the value rows
(intermediate × hidden, the transposed weight), so every slot of every layer is one row, as in a
product-key memory's value table. Before training the model computes what it computed before.
"""

from __future__ import annotations

import torch
from torch import nn

from retain.nn.gated_mlp import feed_forward_layout
from retain.nn.product_key_memory import decoder_layers
from retain.nn.slot_memory import SlotMemory

# The down projection of each known feed-forward layout, and whether its weight is stored (in, out).
DOWN_PROJECTIONS = {"gated (Llama, Mistral, Qwen, SmolLM)": ("down_proj", False), "GPT-2": ("c_proj", True)}


class MemoryProjection(nn.Module):
    """out = a·values + bias, recording the k units of largest |a| per token as the slots read."""

    def __init__(self, values: torch.Tensor, bias: torch.Tensor | None, memory: FeedForwardMemory, start: int) -> None:
        super().__init__()
        self.values = nn.Parameter(values.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.start = start
        object.__setattr__(self, "memory", memory)  # a back-reference, not a submodule

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        shape = a.shape
        flat = a.reshape(-1, shape[-1])
        self.memory.reads[self.start] = (flat.detach().abs().topk(self.memory.k, dim=-1).indices + self.start).view(
            *shape[:-1], -1)
        table_of = self.memory.token_tables(len(flat), a.device)
        if table_of is None:
            out = flat @ self.values
        else:
            out = torch.empty(len(flat), self.values.shape[1], dtype=a.dtype, device=a.device)
            for table in table_of.unique().tolist():
                rows = table_of == table
                out[rows] = flat[rows] @ self.memory.table_rows(table, self.start, self.values)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*shape[:-1], -1)


class FeedForwardMemory(SlotMemory):
    """The units of the feed-forward blocks of `layers` (default: all) as one memory of value rows."""

    def __init__(self, model: nn.Module, layers: list[int] | None = None, k: int = 32) -> None:
        super().__init__()
        stack = decoder_layers(model)
        chosen = range(len(stack)) if layers is None else layers
        self.k = k
        self.reads: dict[int, torch.Tensor] = {}
        self.projections: list[MemoryProjection] = []  # plain list: each is registered in its own layer
        start = 0
        for index in chosen:
            if not -len(stack) <= index < len(stack):
                raise ValueError(f"memory layer {index} is out of range: the model has {len(stack)} layers")
            mlp = stack[index].mlp
            name, stored_in_out = DOWN_PROJECTIONS[feed_forward_layout(mlp)]
            down = getattr(mlp, name)
            values = down.weight if stored_in_out else down.weight.T
            if k > len(values):
                raise ValueError(f"memory k={k} exceeds the {len(values)} units of layer {index}'s feed-forward block")
            projection = MemoryProjection(values, down.bias, self, start)
            setattr(mlp, name, projection)
            self.projections.append(projection)
            start += len(values)

    def value_blocks(self) -> list[tuple[int, nn.Parameter]]:
        return [(p.start, p.values) for p in self.projections]

    @property
    def last_indices(self) -> torch.Tensor | None:
        if not self.reads:
            return None
        return torch.cat([self.reads[p.start] for p in self.projections if p.start in self.reads], dim=-1)
