"""Methods by name, with options given as strings (the CLI's `--method-arg key=value`, a run's config.json)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from retain.methods.base import METHODS, ConfigError, Method, MethodError
from retain.methods.composed import Composed


def build_method(name: str, options: dict[str, str] | None = None) -> Method:
    """A registered method, or several joined by "+" ("replay+ewc"), from string options. An option of a
    composition goes to the one part that has it, or to the part it names first ("ewc.fisher_samples")."""
    options = dict(options or {})
    names = [part.strip() for part in name.split("+")]
    for part in names:
        if part not in METHODS:
            raise MethodError(f"--method: unknown method {part!r}; available: {', '.join(sorted(METHODS))}")
    if len(names) == 1:
        return _build(names[0], options)
    per_part: dict[str, dict[str, str]] = {part: {} for part in names}
    for key, value in options.items():
        part, dot, option = key.partition(".")
        if not dot:
            part, option = _part_having(names, key, name), key
        elif part not in per_part:
            raise MethodError(f"--method-arg {key}: {part!r} is not a part of {name}")
        per_part[part][option] = value
    return Composed([_build(part, per_part[part]) for part in names])


def method_options(name: str) -> list[tuple[str, Any, str]]:
    """(option, default, help) for each config field of a registered method."""
    return [(f.name, None if f.default is dataclasses.MISSING else f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(METHODS[name].config_class)]


def _part_having(names: list[str], option: str, composition: str) -> str:
    having = [name for name in names if option in _fields(name)]
    if not having:
        raise MethodError(f"--method-arg {option}: no part of {composition} has this option")
    if len(having) > 1:
        raise MethodError(f"--method-arg {option}: {' and '.join(having)} have it; name the part ({having[0]}.{option})")
    return having[0]


def _fields(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(METHODS[name].config_class)}


def _build(name: str, options: dict[str, str]) -> Method:
    cls, known = METHODS[name], _fields(name)
    hints = typing.get_type_hints(cls.config_class)
    values: dict[str, Any] = {}
    for key, raw in options.items():
        if key not in known:
            raise ConfigError(cls.config_class.__name__, key, f"{name} has no option {key!r}; options: {', '.join(sorted(known))}")
        values[key] = _coerce(raw, hints[key], cls.config_class.__name__, key)
    return cls(cls.config_class(**values))


def _coerce(raw: Any, kind: Any, owner: str, option: str) -> Any:
    """`raw` as a value of `kind`: bool, int, float, str, a Literal of those, or any of them `| None` ("none")."""
    if not isinstance(raw, str):
        return raw
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        if type(None) in args and raw.strip().lower() in ("none", ""):
            return None
        (kind,) = [arg for arg in args if arg is not type(None)]
    if typing.get_origin(kind) is typing.Literal:
        return raw  # checked against its values by the config
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if kind in (int, float):
            return kind(raw)
    except ValueError:
        raise ConfigError(owner, option, f"{raw!r} is not a valid {kind.__name__}") from None
    return raw
