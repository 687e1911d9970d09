"""Snapshot: one LoRA adapter per period, each query read by the adapter CASM's router picks for it.

The control that says what CASM's versioned memory adds. Each period trains a new PEFT LoRA adapter, started from
the previous period's (so adapter k is the model as of period k: a snapshot), on the same examples every method
gets; earlier adapters are frozen. At inference each prompt goes through `retain.knowledge.read`, as CASM's do: the
period whose version of the fact it asks about was stated, else the period its time names, else (scope "facts")
no adapter at all; its adapter answers it, in a mixed batch (PEFT's `adapter_names`). Storage is one adapter per
period, where CASM keeps the memory rows each period wrote: both report the bytes each period adds
(`stored_bytes`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from retain.fact_questions import WORDINGS
from retain.knowledge import FactRegistry, RelationScorer, follow_up, read
from retain.methods.base import (
    Encode, Exported, Method, MethodConfig, MethodError, Routing, TaskData, TrainingContext, check_periods, register,
    task_period,
)
from retain.relations import Answers, model_matcher
from retain.stream import Stream

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class SnapshotConfig(MethodConfig):
    r: int = field(default=16, metadata={"help": "Rank of each period's LoRA adapter.", "min": 1})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    target_modules: str = field(default="all-linear", metadata={"help": "Comma-separated module names, or 'all-linear'."})
    scope: Literal["facts", "all"] = field(default="facts", metadata={
        "help": "As CASM's: 'facts' reads a prompt naming no time and no known fact with no adapter; 'all': the latest."})
    by_meaning: bool = field(default=True, metadata={"help": "As CASM's: find a relation asked in other words."})
    ask: bool = field(default=True, metadata={"help": "As CASM's: with by_meaning, also ask the pretrained model "
                                                      "which relation a query asks for."})
    read_as: Literal["asked", "question"] = field(default="question", metadata={
        "help": "As CASM's: read a query whose fact is found in the asker's words or as a training question."})


@register
class Snapshot(Method):
    name = "snapshot"
    config_class = SnapshotConfig
    versioned = True
    sharded_by = frozenset()  # mixed-batch adapters are read whole

    def __init__(self, config: SnapshotConfig | None = None) -> None:
        super().__init__(config)
        self.periods: list[str] = []
        self.registry = FactRegistry()
        self.routed: list[str] | None = None  # the adapter of each prompt of the batch being read; None in training
        self.model: PeftModel | None = None
        self.answers: Answers = {}  # as CASM's: the pretrained model's reading of a query's words, never trained

    def prepare(self, model: nn.Module) -> nn.Module:
        model = self.model = get_peft_model(model, self._lora(), adapter_name=self._adapter(0))
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.register_forward_pre_hook(self._inject, with_kwargs=True)
        return model

    def _lora(self) -> PeftLoraConfig:
        targets = self.config.target_modules
        return PeftLoraConfig(r=self.config.r, lora_alpha=self.config.alpha, task_type="CAUSAL_LM",
                              target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")])

    @staticmethod
    def _adapter(index: int) -> str:
        return f"period_{index}"

    def _inject(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Each prompt of a routed batch through its own adapter (PEFT's mixed-batch forward)."""
        if self.routed is not None and not module.training:
            kwargs["adapter_names"] = self.routed
        return args, kwargs

    def check(self, stream: Stream) -> None:
        check_periods(stream, self.periods, self.name)

    def before_task(self, model: nn.Module, context: TrainingContext) -> None:
        self.routed = None
        task = context.task
        self.periods.append(task_period(task, self.periods[-1] if self.periods else None, self.name))
        self.registry.observe_facts(task.facts, self.periods[-1])
        self._add_adapters(len(self.periods))

    def _add_adapters(self, count: int) -> None:
        """Adapters up to `count`, each new one a copy of the one before; only the last trains."""
        model = self.model
        while len(model.peft_config) < count:
            index = len(model.peft_config)
            model.add_adapter(self._adapter(index), self._lora())
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, LoraLayer):
                        for part in (module.lora_A, module.lora_B):
                            part[self._adapter(index)].weight.copy_(part[self._adapter(index - 1)].weight)
        model.set_adapter(self._adapter(count - 1))  # trainable: this one only

    def after_task(self, model: nn.Module, data: TaskData, context: TrainingContext) -> dict[str, float]:
        name = self._adapter(len(self.periods) - 1)
        size = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if f".{name}." in n)
        return {"stored_bytes": float(size)}

    def route(self, model: nn.Module, prompts: Sequence[str], encode: Encode) -> Routing | None:
        if not self.periods:
            return None
        relate = self._matcher(model, encode)
        question = WORDINGS[0] if self.config.read_as == "question" else None
        reads = [read(p, self.periods, self.registry, self.config.scope, None, relate, question) for p in prompts]
        self.routed = [BASE if r.version is None else self._adapter(r.version) for r in reads]
        return Routing(texts=[r.text for r in reads],
                       names=["pretrained" if r.version is None else self.periods[r.version] for r in reads],
                       facts=["" if r.fact is None else f"{r.fact.subject} | {r.fact.relation}" for r in reads])

    def follow_up(self, model: nn.Module, prompt: str, context: Sequence[str], encode: Encode) -> str:
        """As CASM's: the turn on its own, naming the fact the conversation is on."""
        relate = self._matcher(model, encode)
        return follow_up(prompt, context, self.periods, self.registry, relate, WORDINGS[0])

    def _matcher(self, model: nn.Module, encode: Encode) -> RelationScorer | None:
        if not self.config.by_meaning:
            return None
        return model_matcher(model, encode, self._pretrained if self.config.ask else None, self.answers)

    @contextlib.contextmanager
    def _pretrained(self) -> Iterator[None]:
        """Meanwhile a forward of one example reads no adapter (the pretrained model)."""
        before, self.routed = self.routed, [BASE]
        try:
            yield
        finally:
            self.routed = before

    def export(self, as_of: str | None) -> Exported:
        raise MethodError("snapshot is a benchmark control (one adapter per period, read by retain's router): it does "
                          "not export; export casm or lora")

    def state_dict(self) -> dict[str, Any]:
        return {"periods": self.periods, "registry": self.registry.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The periods, registry and one adapter per period (their weights come with the model's)."""
        self.periods, self.registry = list(state["periods"]), FactRegistry.from_state(state["registry"])
        self.routed = None
        if self.periods:
            self._add_adapters(len(self.periods))
