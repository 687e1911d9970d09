"""PlasticityGatedMLP: a feed-forward block split into a slow (pretrained) and a fast pathway, mixed per token."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from retain.nn.product_key_memory import decoder_layers

# Feed-forward layouts the surgery knows, by the submodules that identify them.
FEED_FORWARD_LAYOUTS = {
    "gated (Llama, Mistral, Qwen, SmolLM)": ("gate_proj", "up_proj", "down_proj"),
    "GPT-2": ("c_fc", "c_proj"),
}


def feed_forward_layout(mlp: nn.Module) -> str:
    """The name of `mlp`'s layout; ValueError naming the module's class when it is not one we know."""
    for layout, parts in FEED_FORWARD_LAYOUTS.items():
        if all(isinstance(getattr(mlp, part, None), nn.Module) for part in parts):
            return layout
    raise ValueError(
        f"{type(mlp).__name__}: unsupported feed-forward block; supported layouts: "
        + "; ".join(f"{name} ({'/'.join(parts)})" for name, parts in FEED_FORWARD_LAYOUTS.items())
    )


class LowRankDelta(nn.Module):
    """A bottleneck B·act(A·x) whose output starts at zero (B zero-initialised)."""

    def __init__(self, hidden_size: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size, bias=False)
        self.act = nn.SiLU()
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class PlasticityGatedMLP(nn.Module):
    """out = π·fast(x) + (1−π)·slow(x), with π = sigmoid(gate(x)) per token.

    `slow` is the pretrained block itself. `fast` starts as an exact copy of it (`fast_rank=0`) or as
    slow(x) plus a zero-initialised low-rank bottleneck (`fast_rank>0`), so before training the block
    computes exactly what it computed before. π of the last forward stays in `plasticity` for the
    gate regulariser and gradient dampening; `force_slow` pins π to 0. `slow_gradient_scale`, when set, is
    asked in the backward for a factor on the slow pathway's parameter gradients (None: unscaled). The
    scale sits in the forward's graph, on the weights the forward used, so it also holds when FSDP swaps
    in gathered copies of sharded parameters (a hook on the parameter itself would never see them).
    """

    def __init__(self, slow: nn.Module, hidden_size: int, fast_rank: int = 0, gate_std: float = 0.02) -> None:
        super().__init__()
        feed_forward_layout(slow)
        self.slow = slow
        self.fast = copy.deepcopy(slow) if fast_rank == 0 else None
        self.fast_delta = LowRankDelta(hidden_size, fast_rank) if fast_rank > 0 else None
        reference = next(slow.parameters())
        self.gate = nn.Linear(hidden_size, 1).to(device=reference.device, dtype=reference.dtype)
        # Small random weights: π starts near 1/2 but differs per token, so the regulariser has a direction.
        nn.init.normal_(self.gate.weight, std=gate_std)
        nn.init.zeros_(self.gate.bias)
        if self.fast_delta is not None:
            self.fast_delta.to(device=reference.device, dtype=reference.dtype)
        self.plasticity: torch.Tensor | None = None
        self.force_slow = False
        self.slow_gradient_scale: Callable[[], torch.Tensor | None] | None = None

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        slow = self._slow(x, *args, **kwargs)
        if self.force_slow:
            self.plasticity = None
            return slow
        pi = torch.sigmoid(self.gate(x))
        self.plasticity = pi.squeeze(-1)
        delta = self.fast(x, *args, **kwargs) - slow if self.fast is not None else self.fast_delta(x)
        return slow + pi * delta

    def _slow(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        scale = self.slow_gradient_scale
        if scale is None or not torch.is_grad_enabled():
            return self.slow(x, *args, **kwargs)
        scaled = {name: _ScaleGradient.apply(p, scale) for name, p in self.slow.named_parameters() if p.requires_grad}
        return functional_call(self.slow, scaled, (x, *args), kwargs, strict=False)


class _ScaleGradient(torch.autograd.Function):
    """The identity; its backward multiplies the gradient by `scale()`, read then (None: unchanged)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, scale: Callable[[], torch.Tensor | None]) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        factor = ctx.scale()
        return (grad if factor is None else grad * factor.to(grad.dtype)), None


def gate_feed_forwards(model: nn.Module, layers: list[int] | None = None, fast_rank: int = 0) -> list[PlasticityGatedMLP]:
    """Replace the feed-forward block of `layers` (default: all) with a PlasticityGatedMLP; returns them in layer order."""
    stack = decoder_layers(model)
    chosen = range(len(stack)) if layers is None else layers
    hidden = model.config.get_text_config().hidden_size
    gated = []
    for index in chosen:
        if not -len(stack) <= index < len(stack):
            raise ValueError(f"layer {index} is out of range: the model has {len(stack)} layers")
        stack[index].mlp = PlasticityGatedMLP(stack[index].mlp, hidden, fast_rank)
        gated.append(stack[index].mlp)
    return gated
