"""Several methods trained as one ("replay+ewc"): every hook runs each part's, in the order named.

Parts that only add to a step compose freely: replayed examples (extend_batch), penalties (summed),
gradient edits, end-of-task work. What only one part can decide is refused at the first conflict,
naming both parts: the optimizer, and the routing of inference prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from retain.methods.base import Encode, Exported, Features, Method, MethodError, Routing, StreamData, TaskData, TrainingContext
from retain.stream import Stream


class Composed(Method):
    config_class = dict

    def __init__(self, parts: Sequence[Method]) -> None:
        names = [part.name for part in parts]
        if len(parts) < 2 or len(set(names)) < len(names):
            raise MethodError(f"--method {'+'.join(names)}: a composition names two or more different methods")
        self.parts = list(parts)
        self.name = "+".join(names)
        self.trains = any(part.trains for part in parts)
        self.versioned = any(part.versioned for part in parts)
        self.sharded_by = frozenset.intersection(*(part.sharded_by for part in parts))
        super().__init__({part.name: part.config for part in parts})

    def prepare(self, model: nn.Module) -> nn.Module:
        for part in self.parts:
            model = part.prepare(model)
        return model

    def check(self, stream: Stream) -> None:
        for part in self.parts:
            part.check(stream)

    def before_stream(self, model: nn.Module, data: StreamData) -> None:
        for part in self.parts:
            part.before_stream(model, data)

    def before_task(self, model: nn.Module, context: TrainingContext) -> list[dict[str, str]] | None:
        chosen: list[dict[str, str]] | None = None
        for part in self.parts:  # each part chooses among the examples the parts before it kept
            task = context.task if chosen is None else dataclasses.replace(context.task, train=chosen)
            chosen = part.before_task(model, dataclasses.replace(context, task=task)) or chosen
        return chosen

    def optimizer(self, model: nn.Module, context: TrainingContext) -> torch.optim.Optimizer | list[dict[str, Any]] | None:
        return self._only_one("the optimizer", [(part, part.optimizer(model, context)) for part in self.parts])

    def extend_batch(self, features: list[Features]) -> list[Features]:
        for part in self.parts:
            features = part.extend_batch(features)
        return features

    def after_forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], context: TrainingContext) -> torch.Tensor | None:
        penalties = [p for part in self.parts if (p := part.after_forward(model, inputs, context)) is not None]
        return sum(penalties[1:], penalties[0]) if penalties else None

    def after_backward(self, model: nn.Module, context: TrainingContext) -> None:
        for part in self.parts:
            part.after_backward(model, context)

    def after_task(self, model: nn.Module, data: TaskData, context: TrainingContext) -> dict[str, float]:
        report: dict[str, float] = {}
        for part in self.parts:
            report |= {f"{part.name}.{key}": value for key, value in part.after_task(model, data, context).items()}
        return report

    def route(self, model: nn.Module, prompts: Sequence[str], encode: Encode) -> Routing | None:
        return self._only_one("inference routing", [(part, part.route(model, prompts, encode)) for part in self.parts])

    def export(self, as_of: str | None) -> Exported:
        if as_of is not None and not self.versioned:
            return super().export(as_of)
        parts = [part.export(as_of if part.versioned else None) for part in self.parts]
        period = self._only_one("the version read", [(part, e.period) for part, e in zip(self.parts, parts)])
        return Exported(period, {k: v for e in parts for k, v in e.routing.items()},
                        {k: v for e in parts for k, v in e.tensors.items()})

    def state_dict(self) -> dict[str, Any]:
        return {part.name: part.state_dict() for part in self.parts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part in self.parts:
            part.load_state_dict(state[part.name])

    def _only_one(self, what: str, answers: list[tuple[Method, Any]]) -> Any:
        deciding = [(part, answer) for part, answer in answers if answer is not None]
        if len(deciding) > 1:
            raise MethodError(f"--method {self.name}: {deciding[0][0].name} and {deciding[1][0].name} both decide "
                              f"{what}; they cannot be combined")
        return deciding[0][1] if deciding else None
