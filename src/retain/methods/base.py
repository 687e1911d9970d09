"""The hook interface every continual-learning method implements, and the registry that names them."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from retain.stream import Stream, Task
from retain.text import time_key

Features = dict[str, list[int]]
IGNORE_INDEX = -100  # the label of tokens that carry no loss (a prompt's)
Collate = Callable[[list[Features]], dict[str, torch.Tensor]]
Tokenize = Callable[[list[dict[str, str]]], list[Features]]


@dataclass
class StreamData:
    """The stream about to be learned, with the trainer's tokenization and batching."""

    stream: Stream
    tokenize: Tokenize
    collate: Collate


@dataclass
class TaskData:
    """A finished task's tokenized training examples, the collate function that batches them, and
    `complete`: greedy continuations of prompts by the model as trained, read without any routing."""

    task: Task
    features: list[Features]
    collate: Collate
    complete: Callable[[Sequence[str]], list[str]] | None = None


class Method:
    """Base class: every hook is a no-op, so plain sequential fine-tuning is the base class itself.

    Subclasses set `name` and `config_class` (a dataclass whose fields carry their help text) and
    override only the hooks they need. The trainer calls every hook; it never asks which method it runs.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    trains: ClassVar[bool] = True  # False: the method learns nothing by gradient (a retrieval baseline); no training loop

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_class()

    def prepare(self, model: nn.Module) -> nn.Module:
        """Called once before the first task; may wrap or modify the model and returns the one to train."""
        return model

    def check(self, stream: Stream) -> None:
        """Called with the whole stream before anything is trained or written: raise MethodError for anything
        about the stream that would stop this method later (CASM's periods), so that no task is wasted on it."""

    def before_stream(self, model: nn.Module, data: StreamData) -> None:
        """Called once before the first task with the whole stream (e.g. statistics of its general text)."""

    def before_task(self, model: nn.Module, task: Task) -> None:
        """Called at the start of each task, before its optimizer is created."""

    def training_examples(self, task: Task) -> list[dict[str, str]]:
        """The examples of `task` to train on, asked after `before_task` (e.g. without those restating known facts)."""
        return task.train

    def create_optimizer(self, model: nn.Module, learning_rate: float) -> torch.optim.Optimizer | None:
        """The optimizer of a task; None lets the Trainer build the one TrainingArguments ask for."""
        return None

    def param_groups(self, model: nn.Module, learning_rate: float) -> list[dict[str, Any]] | None:
        """Optimizer groups ({"params": [...], "lr": ...}) for the optimizer TrainingArguments ask for;
        None trains every parameter that requires grad at `learning_rate`."""
        return None

    def extend_batch(self, features: list[Features]) -> list[Features]:
        """Called on each training batch's examples before collation (e.g. to mix in replayed ones)."""
        return features

    def after_forward(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
        """Called after each training forward pass, before backward (e.g. to choose slots to train)."""

    def penalty(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """A regulariser added to each training step's loss, once per optimizer step."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Called after each backward pass, before the optimizer step (gradient masks, dampening)."""

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after each optimizer step (step counters for warm-ups)."""

    def route(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: Sequence[str]
    ) -> list[str] | None:
        """Called at inference before each batch of prompts: set up the model for these inputs (which adapter,
        which memory version) and return, per example, the name of the task it was routed to; None: no routing."""
        return None

    def prompt_text(self, prompt: str) -> str:
        """The text the model reads for an inference prompt (`route` still sees the prompt as given)."""
        return prompt

    def after_task(self, model: nn.Module, data: TaskData) -> None:
        """Called when a task's training ends (Fisher estimates, buffers, freezing)."""

    def task_report(self) -> dict[str, float]:
        """Numbers about the task just consolidated, stored beside its timings in result.json."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything besides model weights that a checkpoint must hold to resume this method."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


METHODS: dict[str, type[Method]] = {}


class MethodError(ValueError):
    """An unknown method or a bad method option; the message names the option."""


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def layer_list(text: str) -> list[int] | None:
    """The decoder layers a `layers` option names ("3,7"); None when empty (the method's default)."""
    try:
        return [int(part) for part in text.split(",")] if text.strip() else None
    except ValueError:
        raise MethodError(f"--method-arg layers: expected comma-separated integers, got {text!r}") from None


def task_period(task: Task, previous: str | None, method: str) -> str:
    """The task's period (or name), which a time-versioned method needs to be a time later than `previous`."""
    period = task.period or task.name
    try:
        time_key(period)
    except ValueError:
        raise MethodError(f"{method}: task {task.name!r} needs a period that is a time (e.g. 2018 or 2021-03), "
                          f"got {period!r}") from None
    if previous is not None and time_key(period) <= time_key(previous):
        raise MethodError(f"{method}: period {period!r} of task {task.name!r} does not come after {previous!r}")
    return period


def check_periods(stream: Stream, periods: Sequence[str], method: str) -> None:
    """Every task of `stream` not yet learned (after `periods`) has a time as its period, in order."""
    previous = periods[-1] if periods else None
    for task in stream.tasks[len(periods):]:
        previous = task_period(task, previous, method)


def build_method(name: str, args: dict[str, str] | None = None) -> Method:
    """Instantiate a registered method from string arguments such as the CLI's `--method-arg k=v`."""
    if name not in METHODS:
        raise MethodError(f"--method: unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    hints = typing.get_type_hints(cls.config_class)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    values: dict[str, Any] = {}
    for key, raw in (args or {}).items():
        if key not in fields:
            raise MethodError(f"--method-arg {key}: {name} has no option {key!r}; options: {', '.join(sorted(fields))}")
        values[key] = _coerce(raw, hints[key], f"--method-arg {key}")
    return cls(cls.config_class(**values))


def method_options(name: str) -> list[tuple[str, Any, str]]:
    """(option, default, help) for each config field of a registered method."""
    return [
        (f.name, f.default, f.metadata.get("help", ""))
        for f in dataclasses.fields(METHODS[name].config_class)
    ]


def _coerce(raw: str, kind: Any, where: str) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind in (int, float):
            return kind(raw)
    except ValueError:
        raise MethodError(f"{where}: {raw!r} is not a valid {kind.__name__}") from None
    return raw
