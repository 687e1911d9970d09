"""Product-key memory (Lample et al. 2019; Berges et al. 2024), and its retrofit into a pretrained LM.

A query is split in two halves; each half is scored against √N half-keys, the top k of each half
give k² candidate slots whose score is the sum of their halves' scores, and the top k of those
are read: a softmax over their scores weights their value rows, summed over heads. Exact top-k over
all N = n_keys² slots, at the cost of 2·√N scores per head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from retain.nn.slot_memory import SlotMemory


class ProductKeyMemory(SlotMemory):
    def __init__(self, dim: int, n_keys: int = 128, heads: int = 4, k: int = 32, key_dim: int = 128) -> None:
        super().__init__()
        if key_dim % 2 or k > n_keys:
            raise ValueError(f"ProductKeyMemory: key_dim must be even and k ≤ n_keys (got key_dim={key_dim}, k={k})")
        self.n_keys, self.heads, self.k, self.half = n_keys, heads, k, key_dim // 2
        self.query = nn.Linear(dim, heads * key_dim, bias=False)
        self.keys = nn.Parameter(torch.randn(heads, 2, n_keys, self.half) / math.sqrt(self.half))
        self.values = nn.EmbeddingBag(n_keys * n_keys, dim, mode="sum")
        self.last_indices: torch.Tensor | None = None  # (*batch, heads·k) slots read by the last forward

    def value_blocks(self) -> list[tuple[int, nn.Parameter]]:
        return [(0, self.values.weight)]

    def lookup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and slot indices of the top k slots per head: two tensors of shape (tokens, heads, k)."""
        q = self.query(x).view(-1, self.heads, 2, self.half)
        first = torch.einsum("thd,hnd->thn", q[:, :, 0], self.keys[:, 0])
        second = torch.einsum("thd,hnd->thn", q[:, :, 1], self.keys[:, 1])
        top_first, index_first = first.topk(self.k, dim=-1)
        top_second, index_second = second.topk(self.k, dim=-1)
        candidates = (top_first[..., :, None] + top_second[..., None, :]).flatten(-2)
        slots = (index_first[..., :, None] * self.n_keys + index_second[..., None, :]).flatten(-2)
        scores, position = candidates.topk(self.k, dim=-1)
        return scores, slots.gather(-1, position)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        scores, slots = self.lookup(x.reshape(-1, shape[-1]))
        weights = torch.softmax(scores.float(), dim=-1).to(x.dtype)
        flat = slots.reshape(len(slots), -1)
        self.last_indices = flat.detach().view(*shape[:-1], -1)
        weights = weights.reshape(len(slots), -1)
        table_of = self.token_tables(len(flat), x.device)
        live = self.live(self.values.weight, 0)
        if table_of is None:
            return nn.functional.embedding_bag(flat, live, per_sample_weights=weights, mode="sum").view(shape)
        out = torch.empty(len(flat), shape[-1], dtype=x.dtype, device=x.device)
        for table in table_of.unique().tolist():
            rows = table_of == table
            weight = self.table_rows(table, 0, live)
            out[rows] = nn.functional.embedding_bag(flat[rows], weight, per_sample_weights=weights[rows], mode="sum")
        return out.view(shape)


class MemoryAugmentedMLP(nn.Module):
    """A decoder layer's feed-forward block with a memory read added beside it: mlp(x) + memory(x)."""

    def __init__(self, mlp: nn.Module, memory: ProductKeyMemory) -> None:
        super().__init__()
        self.mlp, self.memory = mlp, memory

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.mlp(x, *args, **kwargs) + self.memory(x)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder layers of a Llama/Mistral/Qwen/SmolLM-style or GPT-2-style causal LM."""
    for path in ("model.layers", "model.model.layers", "transformer.h", "base_model.model.model.layers"):
        module: nn.Module | None = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList) and all(hasattr(layer, "mlp") for layer in module):
            return module
    raise ValueError(f"{type(model).__name__}: cannot find its decoder layers (supported: Llama-style model.layers, GPT-2 transformer.h)")


def insert_memory(model: nn.Module, layer: int, **memory_options: int) -> ProductKeyMemory:
    """Add a product-key memory beside the feed-forward block of `layer`, values zero so outputs are unchanged."""
    layers = decoder_layers(model)
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"memory layer {layer} is out of range: the model has {len(layers)} layers")
    target = layers[layer]
    reference = next(target.mlp.parameters())
    hidden = model.config.hidden_size
    memory = ProductKeyMemory(hidden, **memory_options).to(device=reference.device, dtype=reference.dtype)
    nn.init.zeros_(memory.values.weight)
    target.mlp = MemoryAugmentedMLP(target.mlp, memory)
    return memory
