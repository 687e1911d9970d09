"""A pretrained model's own feed-forward blocks, read as one sparse key-value memory.

A feed-forward block computes down(a) with a = act(x·W_in): each intermediate unit i is a slot whose
key is its input weights and whose value is column i of the down projection (Geva et al. 2021,
"Transformer Feed-Forward Layers Are Key-Value Memories"). The slots a token reads are the k units
of largest |a_i|. Unlike a retrofitted product-key memory, these keys are pretrained and the rest of
the model already reads these values, so what is written reaches the answer from other wordings of
the same fact.

Writes are kept apart from the pretrained values and read sparsely: each chosen layer's down
projection becomes down(a) + Σ_{i ∈ top-k |a|} a_i·Δ_i, with one zero-initialised row Δ_i per unit.
Every unit contributes to every token densely, so writing into the pretrained values themselves
would reach all text a little; a written Δ_i reaches only the tokens that read unit i.
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
    """down(a) + the written rows of the k units of largest |a| per token, weighted by a."""

    def __init__(self, down: nn.Module, units: int, hidden: int, memory: FeedForwardMemory, start: int) -> None:
        super().__init__()
        self.down = down
        self.delta = nn.Parameter(torch.zeros(units, hidden, dtype=down.weight.dtype, device=down.weight.device))
        self.start = start
        object.__setattr__(self, "memory", memory)  # a back-reference, not a submodule

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        shape = a.shape
        flat = a.reshape(-1, shape[-1])
        units = flat.detach().abs().topk(self.memory.k, dim=-1).indices
        self.memory.reads[self.start] = (units + self.start).view(*shape[:-1], -1)
        weights = flat.gather(-1, units).to(self.delta.dtype)  # under autocast `a` is bf16, the rows stay fp32
        table_of = self.memory.token_tables(len(flat), a.device)
        live = self.memory.live(self.delta, self.start)
        if table_of is None:
            written = nn.functional.embedding_bag(units, live, per_sample_weights=weights, mode="sum")
        else:
            written = torch.empty(len(flat), self.delta.shape[1], dtype=self.delta.dtype, device=a.device)
            for table in table_of.unique().tolist():
                rows = table_of == table
                delta = self.memory.table_rows(table, self.start, live)
                written[rows] = nn.functional.embedding_bag(units[rows], delta, per_sample_weights=weights[rows], mode="sum")
        down = self.down(a)
        return down + written.view(*shape[:-1], -1).to(down.dtype)


class FeedForwardMemory(SlotMemory):
    """The units of the feed-forward blocks of `layers` (default: all) as one memory of value rows.

    Its value rows are the written changes Δ (zero until trained), one per unit, layer after layer.
    """

    def __init__(self, model: nn.Module, layers: list[int] | None = None, k: int = 32) -> None:
        super().__init__()
        stack = decoder_layers(model)
        chosen = range(len(stack)) if layers is None else layers
        self.k = k
        hidden = model.config.get_text_config().hidden_size
        self.reads: dict[int, torch.Tensor] = {}
        self.projections: list[MemoryProjection] = []  # plain list: each is registered in its own layer
        start = 0
        for index in chosen:
            if not -len(stack) <= index < len(stack):
                raise ValueError(f"memory layer {index} is out of range: the model has {len(stack)} layers")
            mlp = stack[index].mlp
            name, stored_in_out = DOWN_PROJECTIONS[feed_forward_layout(mlp)]
            down = getattr(mlp, name)
            units = down.weight.shape[0 if stored_in_out else 1]
            if k > units:
                raise ValueError(f"memory k={k} exceeds the {units} units of layer {index}'s feed-forward block")
            projection = MemoryProjection(down, units, hidden, self, start)
            setattr(mlp, name, projection)
            self.projections.append(projection)
            start += units

    def value_blocks(self) -> list[tuple[int, nn.Parameter]]:
        return [(p.start, p.delta) for p in self.projections]

    @property
    def last_indices(self) -> torch.Tensor | None:
        if not self.reads:
            return None
        return torch.cat([self.reads[p.start] for p in self.projections if p.start in self.reads], dim=-1)
