"""Sequential full fine-tuning: every weight trains on each task in turn, with nothing to protect the past."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from retain.methods.base import Method, MethodConfig, register


@dataclass
class FullFTConfig(MethodConfig):
    pass


@register
class FullFineTuning(Method):
    name = "full_ft"
    config_class = FullFTConfig

    def prepare(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(True)
        return model
