"""The hook interface every continual-learning method implements, and the registry that names them."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from retain.evaluation import Encode, Routing
from retain.stream import Stream, Task
from retain.text import time_key

Features = dict[str, list[int]]
IGNORE_INDEX = -100  # the label of tokens that carry no loss (a prompt's)
Collate = Callable[[list[Features]], dict[str, torch.Tensor]]
Tokenize = Callable[[list[dict[str, str]]], list[Features]]


@dataclass
class Exported:
    """What `retain export` carries besides a model's weights, for the modeling code it ships (`retain.modeling`)."""

    period: str | None = None  # the one period whose version every input reads (`as_of`); None: routed per input
    routing: dict[str, Any] = dataclasses.field(default_factory=dict)  # per method, for config.json's "retain" entry
    tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # saved with the weights, as "retain_<key>"


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


@dataclass
class TrainingContext:
    """Where training stands, handed to the training hooks so that no method keeps its own counters.

    The trainer updates it: `task`/`task_index` when a task starts, `step` and `run_step` after every
    optimizer step (`run_step` continues across tasks and resumes), `learning_rate` is the task's base rate.
    """

    task: Task | None = None
    task_index: int = 0
    learning_rate: float = 0.0
    step: int = 0
    run_step: int = 0


class Method:
    """Base class: every hook is a no-op, so plain sequential fine-tuning is the base class itself.

    Subclasses set `name` and `config_class` (a dataclass whose fields carry their help text) and
    override only the hooks they need. The trainer calls every hook; it never asks which method it runs.
    In the order the trainer calls them:

    | hook | when | returns |
    |---|---|---|
    | `prepare(model)` | once, before anything | the model to train |
    | `check(stream)` | before anything is trained | raises MethodError for a stream it cannot learn |
    | `before_stream(model, data)` | once, with the whole stream | – |
    | `before_task(model, context)` | a task starts | the examples to train on (None: all of the task's) |
    | `optimizer(model, context)` | the task's optimizer is built | an optimizer, param groups, or None |
    | `extend_batch(features)` | each training batch | the batch's examples |
    | `after_forward(model, inputs, context)` | each forward, before backward | a penalty to add, or None |
    | `after_backward(model, context)` | each backward, before the step | – |
    | `after_task(model, data, context)` | a task's training ended | numbers for its report |
    | `route(model, prompts, encode)` | each inference batch | a Routing, or None |
    | `state_dict()` / `load_state_dict()` | checkpoints | what resuming needs |
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    trains: ClassVar[bool] = True  # False: the method learns nothing by gradient (a retrieval baseline); no training loop
    versioned: ClassVar[bool] = False  # True: it keeps a version of what it learned per period (`export(as_of)`)
    # The parameter-sharding backends ("fsdp", "deepspeed") the method runs under. One whose state follows whole
    # parameters (gradient masks or scales on them, Fisher anchors, versioned rows) runs under neither unless it
    # follows the shards of each backend it names.
    sharded_by: ClassVar[frozenset[str]] = frozenset({"fsdp", "deepspeed"})

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_class()

    def prepare(self, model: nn.Module) -> nn.Module:
        """Called once before the first task; may wrap or modify the model and returns the one to train."""
        return model

    def check(self, stream: Stream) -> None:
        """Called with the whole stream before anything is trained or written: raise MethodError for anything
        about the stream that would stop this method later (CASM's periods), so that no task is wasted on it."""

    def before_stream(self, model: nn.Module, data: StreamData) -> None:
        """Called once before the first task with the whole stream (e.g. statistics of its background text)."""

    def before_task(self, model: nn.Module, context: TrainingContext) -> list[dict[str, str]] | None:
        """Called at the start of each task (`context.task`), before its optimizer is created. Returns the task's
        examples to train on (e.g. without those restating known facts); None trains on all of them."""
        return None

    def optimizer(self, model: nn.Module, context: TrainingContext) -> torch.optim.Optimizer | list[dict[str, Any]] | None:
        """The task's optimizer; or parameter groups ({"params": [...], "lr": ...}) for the optimizer
        TrainingArguments ask for; None trains every parameter that requires grad at `context.learning_rate`."""
        return None

    def extend_batch(self, features: list[Features]) -> list[Features]:
        """Called on each training batch's examples before collation (e.g. to mix in replayed ones)."""
        return features

    def after_forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], context: TrainingContext) -> torch.Tensor | None:
        """Called after each training forward pass, before backward (e.g. to choose slots to train). Returns a
        regulariser to add to the loss (counted once per optimizer step), or None."""
        return None

    def after_backward(self, model: nn.Module, context: TrainingContext) -> None:
        """Called after each backward pass, before the optimizer step (gradient masks, dampening)."""

    def after_task(self, model: nn.Module, data: TaskData, context: TrainingContext) -> dict[str, float]:
        """Called when a task's training ends (Fisher estimates, buffers, freezing). Returns numbers about the
        task, stored beside its timings in result.json."""
        return {}

    def route(self, model: nn.Module, prompts: Sequence[str], encode: Encode) -> Routing | None:
        """Called at inference before each batch of prompts: set up the model for them (which adapter, which
        memory version) and say what it reads. `encode(texts)` tokenizes as the model will be fed (for a
        method that routes on tokens). None: the prompts are read as they are, unrouted."""
        return None

    def follow_up(self, model: nn.Module, prompt: str, context: Sequence[str], encode: Encode) -> str:
        """A turn of a conversation (`retain ask --conversation`) as it is asked, given the turns before it (oldest
        first; `model` and `encode` as `route` gets them): by default the conversation so far, a turn a line, for the
        model to read in context."""
        return "\n".join([*context, prompt])

    def export(self, as_of: str | None) -> Exported:
        """Before an export: what the exported model needs besides its weights to read inputs as this method does
        (`Exported.routing`, `Exported.tensors`); with `as_of`, a versioned method instead makes the model read, for
        every input, what it reads for an input dated `as_of`, and names that period."""
        if as_of is not None:
            raise MethodError(f"--as-of {as_of}: {self.name} keeps one version of what it learned; drop --as-of")
        return Exported()

    def state_dict(self) -> dict[str, Any]:
        """Everything besides model weights that a checkpoint must hold to resume this method."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


METHODS: dict[str, type[Method]] = {}


class MethodError(ValueError):
    """An unknown method, a method that cannot learn a stream, or a bad method option."""


class ConfigError(MethodError):
    """A bad value of one option of a method's config; says which (the CLI names it as `--method-arg option`)."""

    def __init__(self, owner: str, option: str, reason: str) -> None:
        self.owner, self.option, self.reason = owner, option, reason
        super().__init__(f"{owner}.{option}: {reason}")


@dataclass
class MethodConfig:
    """Base of every method's options, in PEFT's style: typed fields with `metadata={"help": …}`, `None` for
    "the method's default". Checked once, when made: a `Literal` field against its values, a number against
    `metadata["min"]` (inclusive) and `metadata["below"]` (exclusive). Subclasses add checks across fields."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):
            value, kind = getattr(self, spec.name), hints[spec.name]
            allowed = _literal_values(kind)
            if allowed and value not in allowed and value is not None:
                self.fail(spec.name, f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    self.fail(spec.name, f"must be a finite number, got {value}")
                if "min" in spec.metadata and value < spec.metadata["min"]:
                    self.fail(spec.name, f"must be ≥ {spec.metadata['min']}, got {value}")
                if "below" in spec.metadata and value >= spec.metadata["below"]:
                    self.fail(spec.name, f"must be below {spec.metadata['below']}, got {value}")

    def fail(self, option: str, reason: str) -> typing.NoReturn:
        raise ConfigError(type(self).__name__, option, reason)


def _literal_values(kind: Any) -> tuple[Any, ...]:
    """The values of a `Literal[...]` type, also inside `Literal[...] | None`; () for any other type."""
    if typing.get_origin(kind) is typing.Literal:
        return typing.get_args(kind)
    return tuple(v for arg in typing.get_args(kind) for v in _literal_values(arg))


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def layer_list(config: MethodConfig, text: str | None) -> list[int] | None:
    """The decoder layers a config's `layers` option names ("3,7"); None when unset (the method's default)."""
    try:
        return [int(part) for part in text.split(",")] if text and text.strip() else None
    except ValueError:
        config.fail("layers", f"expected comma-separated integers, got {text!r}")


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


def check_sharding(method: Method, fsdp_asked: bool, fsdp: bool, deepspeed: bool) -> None:
    """Refuse what would run other than asked: FSDP that accelerate does not enable (it shards only on GPUs), and a
    method under a sharding backend (FSDP, DeepSpeed: parameters and gradients split across processes) that its
    state does not follow."""
    if fsdp_asked and not fsdp:
        raise MethodError("--fsdp: accelerate shards with FSDP only on GPUs; on CPUs several processes are data parallel "
                          "(torchrun, or accelerate launch without --fsdp or an FSDP config)")
    backend = "fsdp" if fsdp else "deepspeed" if deepspeed else None
    if backend is not None and backend not in method.sharded_by:
        under = " or ".join(_BACKENDS[b] for b in sorted(method.sharded_by)) or "no sharding backend"
        raise MethodError(f"{method.name} keeps state per whole parameter that {_BACKENDS[backend]} would shard (it runs "
                          f"under {under}); run it data parallel (without --fsdp / --deepspeed)")


_BACKENDS = {"fsdp": "FSDP", "deepspeed": "DeepSpeed"}


def check_periods(stream: Stream, periods: Sequence[str], method: str) -> None:
    """Every task of `stream` not yet learned (after `periods`) has a time as its period, in order."""
    previous = periods[-1] if periods else None
    for task in stream.tasks[len(periods):]:
        previous = task_period(task, previous, method)
