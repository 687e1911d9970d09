"""Checkpoint state without pickle: tensors in a safetensors file, everything else in JSON.

A method's `state_dict()` (and the trainer's continual state) is a tree of dicts, lists, tuples,
strings, numbers, booleans, None and tensors. `save_state` writes the tensors to NAME.safetensors and
the tree, with each tensor replaced by a reference, to NAME.json; `load_state` reads them back. Neither
file can carry code, so opening a checkpoint someone else wrote never runs anything. A value of any
other type is refused when saving, naming where in the state it sits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"


class StateError(ValueError):
    """A state that cannot be saved without pickle, or a state file that cannot be read; the message names it."""


def encode(state: Any, tensors: dict[str, torch.Tensor], where: str = "state") -> Any:
    """`state` as JSON-ready data, its tensors moved into `tensors` under the keys it now refers to."""
    if isinstance(state, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = state.detach().to("cpu").contiguous().clone()  # safetensors refuses shared storage
        return {_TENSOR: key}
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    if isinstance(state, tuple):
        return {_TUPLE: [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(state)]}
    if isinstance(state, list):
        return [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(state)]
    if isinstance(state, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in state):
            return {k: encode(v, tensors, f"{where}[{k!r}]") for k, v in state.items()}
        return {_DICT: [[encode(k, tensors, f"{where} key"), encode(v, tensors, f"{where}[{k!r}]")] for k, v in state.items()]}
    raise StateError(f"{where} is a {type(state).__name__}, which a checkpoint cannot hold without pickle "
                     "(use tensors, numbers, strings, lists, tuples and dicts)")


def decode(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(data, list):
        return [decode(v, tensors) for v in data]
    if isinstance(data, dict):
        if set(data) == {_TENSOR}:
            return tensors[data[_TENSOR]]
        if set(data) == {_TUPLE}:
            return tuple(decode(v, tensors) for v in data[_TUPLE])
        if set(data) == {_DICT}:
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in data[_DICT]}
        return {k: decode(v, tensors) for k, v in data.items()}
    return data


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list | tuple) else key


def save_state(state: Any, directory: Path, name: str) -> list[Path]:
    """Write `state` as DIRECTORY/NAME.safetensors and DIRECTORY/NAME.json; return the two paths."""
    tensors: dict[str, torch.Tensor] = {}
    tree = encode(state, tensors)
    paths = [directory / f"{name}.safetensors", directory / f"{name}.json"]
    save_file(tensors, str(paths[0]))
    paths[1].write_text(json.dumps(tree))
    return paths


def load_state(directory: Path, name: str) -> Any:
    """Read what `save_state` wrote; a missing or damaged file is reported by name."""
    tensor_file, tree_file = directory / f"{name}.safetensors", directory / f"{name}.json"
    for path in (tensor_file, tree_file):
        if not path.is_file():
            raise StateError(f"{path}: missing")
    try:
        tensors = load_file(str(tensor_file))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise StateError(f"{tensor_file}: damaged ({error})") from None
    try:
        tree = json.loads(tree_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StateError(f"{tree_file}: damaged ({error})") from None
    try:
        return decode(tree, tensors)
    except KeyError as error:
        raise StateError(f"{tree_file}: refers to tensor {error} that {tensor_file.name} does not hold") from None
