"""LoRA through PEFT: one adapter trained through the stream, or a fresh adapter per task merged after it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from retain.methods.base import Method, MethodConfig, TaskData, TrainingContext, register


@dataclass
class LoRAConfig(MethodConfig):
    r: int = field(default=16, metadata={"help": "Rank of the low-rank update.", "min": 1})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input.", "min": 0, "below": 1})
    target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names to adapt, or 'all-linear'."}
    )
    per_task: bool = field(
        default=False,
        metadata={"help": "Merge the adapter into the base weights after each task and start a fresh one."},
    )


@register
class LoRA(Method):
    name = "lora"
    config_class = LoRAConfig

    def prepare(self, model: nn.Module) -> nn.Module:
        targets = self.config.target_modules
        peft_config = PeftLoraConfig(
            r=self.config.r,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, peft_config)

    @torch.no_grad()
    def after_task(self, model: nn.Module, data: TaskData, context: TrainingContext) -> dict[str, float]:
        if not self.config.per_task:
            return {}
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for adapter in module.active_adapters:
                    base = module.get_base_layer().weight
                    base += module.get_delta_weight(adapter).to(base.dtype)
                    module.reset_lora_parameters(adapter, init_lora_weights=True)
        return {}
