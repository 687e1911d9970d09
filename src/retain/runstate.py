"""The run directory: resolved config, results, predictions, and atomic per-task checkpoints for resume.

Layout of DIR:
    config.json          the resolved run configuration (a resume must match it)
    result.json          matrices, summary and timings; "complete": false until the last task
    predictions.jsonl    one line per probe per evaluation row
    checkpoints/LATEST   name of the newest complete checkpoint
    checkpoints/task-NNN/{model.safetensors, method.pt, progress.json}

Every file is written to a temporary name, fsynced and renamed, and a checkpoint directory is only
named in LATEST once all its files are on disk, so a crash at any moment leaves the previous
checkpoint intact and a resume never sees half a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from retain.result import RunResult


class RunDirectoryError(RuntimeError):
    pass


def atomic_write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        with file.open("rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(path)


class RunDirectory:
    """Opens DIR for a new run (refusing to clobber an old one unless `overwrite`) or for a resume."""

    def __init__(self, path: str | Path, config: dict[str, Any], resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        config_file = self.path / "config.json"
        if resume:
            if not config_file.is_file():
                raise RunDirectoryError(f"--resume: {config_file} not found; nothing to resume")
            saved = json.loads(config_file.read_text())
            changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            if changed:
                details = "; ".join(f"{k}: saved {saved.get(k)!r}, now {config.get(k)!r}" for k in changed)
                raise RunDirectoryError(f"--resume: the options differ from the run in {self.path}: {details}")
        else:
            if self.path.exists() and any(self.path.iterdir()):
                if not overwrite:
                    raise RunDirectoryError(
                        f"--output {self.path} already holds a run; pass --resume to continue it or --overwrite to replace it"
                    )
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write(config_file, json.dumps(config, indent=2, sort_keys=True))
        self.config = config

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoints / "LATEST"
        return self.checkpoints / pointer.read_text().strip() if pointer.is_file() else None

    def save_checkpoint(self, model: nn.Module, method_state: dict[str, Any], result: RunResult) -> Path:
        name = f"task-{result.completed_tasks:03d}"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.checkpoints))
        save_model(model, str(staging / "model.safetensors"))
        torch.save(method_state, staging / "method.pt")
        (staging / "progress.json").write_text(json.dumps(result.state()))
        _fsync_tree(staging)
        final = self.checkpoints / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        _fsync_dir(self.checkpoints)
        atomic_write(self.checkpoints / "LATEST", name)
        for old in self.checkpoints.iterdir():
            if old.name not in (name, "LATEST"):
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        self.write_results(result)
        return final

    def load_checkpoint(
        self, model: nn.Module, restore_method: Callable[[dict[str, Any]], None] | None = None
    ) -> tuple[dict[str, Any], RunResult] | None:
        """Restore the model's weights in place; return (method state, result so far), or None if no checkpoint.

        `restore_method` gets the method state before the weights load, so a method whose modules grow
        during a run (one adapter per task) can rebuild them for the saved weights to fit.
        """
        checkpoint = self.latest_checkpoint()
        if checkpoint is None:
            return None
        method_state = torch.load(checkpoint / "method.pt", weights_only=False)
        if restore_method is not None:
            restore_method(method_state)
        missing, unexpected = load_model(model, str(checkpoint / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise RunDirectoryError(
                f"{checkpoint}: weights do not fit the model (missing {len(missing)}, unexpected {len(unexpected)})"
            )
        result = RunResult.from_state(json.loads((checkpoint / "progress.json").read_text()))
        return method_state, result

    def write_results(self, result: RunResult) -> None:
        atomic_write(self.path / "result.json", json.dumps(result.to_json(), indent=2))
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions())
        atomic_write(self.path / "predictions.jsonl", lines)
