"""A causal LM with the sparse feed-forward memory that retain's SMF and CASM write, for
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` without retain installed.

Each listed down projection computes down(a) + Σ_{i ∈ top-k |a|} a_i·Δ_i: the written row Δ_i of unit i reaches only
the tokens whose k largest feed-forward activations include unit i. Folding Δ into the dense weights would add
a_i·Δ_i for every token instead, so the rows are kept apart, as retain computes them. Written by `retain export`.
"""

import torch
import transformers
from torch import nn

BASE = getattr(transformers, "__BASE__")  # the architecture the memory was written into (set by `retain export`)


class SparseMemoryProjection(nn.Module):
    """down(a) + the written rows of the k units of largest |a| per token, weighted by a."""

    def __init__(self, down: nn.Module, units: int, hidden: int, k: int) -> None:
        super().__init__()
        self.down = down
        self.delta = nn.Parameter(torch.zeros(units, hidden, dtype=down.weight.dtype))
        self.k = k

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        flat = a.reshape(-1, a.shape[-1])
        units = flat.detach().abs().topk(self.k, dim=-1).indices
        weights = flat.gather(-1, units).to(self.delta.dtype)
        written = nn.functional.embedding_bag(units, self.delta, per_sample_weights=weights, mode="sum")
        down = self.down(a)
        return down + written.view(*a.shape[:-1], -1).to(down.dtype)


class RetainMemoryForCausalLM(BASE):
    def __init__(self, config) -> None:
        super().__init__(config)
        memory = config.retain_memory
        for name, units, hidden in memory["modules"]:
            parent_name, _, attribute = name.rpartition(".")
            parent = self.get_submodule(parent_name)
            setattr(parent, attribute, SparseMemoryProjection(getattr(parent, attribute), units, hidden, memory["k"]))
