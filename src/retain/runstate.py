"""Checkpoints and the run directory: resolved config, results, predictions, per-task checkpoints for resume.

A checkpoint is a directory that holds no pickle, so opening one never runs code:
    model.safetensors                 the weights
    method.safetensors, method.json   the method's state (retain.serialization: tensors + JSON)
    progress.json                     the method's name and what the writer adds (a run's results so far, tasks)
    manifest.json                     size and sha256 of each file above, checked before anything is read

Layout of a run directory DIR:
    config.json          the resolved run configuration, with a hash of every stream file (a resume must match it)
    result.json          matrices, summary and timings; "complete": false until the last task
    predictions.jsonl    one line per probe per evaluation row
    checkpoints/LATEST   name of the newest complete checkpoint
    checkpoints/task-NNN a checkpoint after task NNN; the newest two are kept

Every file is written to a temporary name, fsynced and renamed, and a checkpoint directory is only
named in LATEST once all its files are on disk, so a crash (or a full disk) at any moment leaves the
previous checkpoint intact. A damaged newest checkpoint is reported by name, and a resume falls back to
the one before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from safetensors.torch import load_model, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from retain.result import RunResult
from retain.serialization import StateError, load_state, save_state

logger = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2
MANIFEST = "manifest.json"
# What retain writes into a run directory; --overwrite deletes a directory only if it holds nothing else.
RUN_FILES = {"config.json", "result.json", "predictions.jsonl", "checkpoints", "trainer"}


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint saves of `model`: its weights, tied weights once, each tensor holding only its own bytes
    (DeepSpeed keeps parameters as views of flat buffers: those are copied). When FSDP or DeepSpeed ZeRO-3 shards the
    parameters across processes, the whole weights are gathered onto the main process's CPU and the others get an
    empty dict: every process must call it then (the gather is collective)."""
    if any(isinstance(p, DTensor) for p in model.parameters()):
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    elif any(hasattr(p, "ds_id") for p in model.parameters()):  # DeepSpeed ZeRO-3: each process holds a partition
        import deepspeed

        main = PartialState().is_main_process
        with deepspeed.zero.GatheredParameters(list(model.parameters())):  # collective; only the main process copies
            weights = {name: t.to("cpu", copy=True) for name, t in model.state_dict().items()} if main else {}
    else:
        weights = model.state_dict()
    once = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: _alone(tensor) for name, tensor in weights.items() if name in once}


def _alone(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    return tensor if tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size() else tensor.clone()


def write_checkpoint(path: Path, model: nn.Module | dict[str, torch.Tensor], method: str, method_state: Any,
                     progress: dict[str, Any]) -> Path:
    """Write a checkpoint into a staging directory beside `path`, then rename it into place (replacing `path`).
    `model` is a model or its weights (`model_weights`). On any error the staging directory is removed and
    whatever was at `path` is untouched."""
    weights = model_weights(model) if isinstance(model, nn.Module) else model
    return _staged(path, lambda staging: save_file(weights, str(staging / "model.safetensors")), method, method_state,
                   progress)


def upgrade_checkpoint(path: Path, method: str) -> None:
    """Rewrite a checkpoint of the older pickle format in place. Its method.pt is read with torch's
    weights-only loader, which admits tensors and plain containers only and so runs no code either."""
    try:
        state = torch.load(path / "method.pt", weights_only=True)
        result = json.loads((path / "progress.json").read_text(encoding="utf-8"))
    except Exception as error:  # torch raises pickle's own error types for anything it will not load
        raise RunDirectoryError(f"{path}: cannot be converted safely ({type(error).__name__}: {error})") from None
    _staged(path, lambda staging: shutil.copy2(path / "model.safetensors", staging / "model.safetensors"), method,
            state, {"result": result})


def _staged(path: Path, write_model: Callable[[Path], Any], method: str, method_state: Any, progress: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write_model(staging)
        save_state(method_state, staging, "method")
        (staging / "progress.json").write_text(json.dumps({"method": method, **progress}))
        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(staging.iterdir())}
        (staging / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))
        for file in staging.iterdir():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(staging)
        retired = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired, ignore_errors=True)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def verify_checkpoint(path: Path) -> None:
    """Raise RunDirectoryError naming the problem unless `path` is a complete, undamaged checkpoint."""
    if not path.is_dir():
        raise RunDirectoryError(f"{path}: missing")
    if (path / "method.pt").is_file() or (path / "continual.pt").is_file():
        raise RunDirectoryError(
            f"{path}: saved by an older retain as a pickle, which retain no longer opens (a pickle can run code "
            "when loaded). If you trust it, convert the run with `retain upgrade-run RUN_DIR`")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RunDirectoryError(f"{path / MANIFEST}: missing or damaged") from None
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file():
            raise RunDirectoryError(f"{file}: missing")
        if file.stat().st_size != expected["size"] or _sha256(file) != expected["sha256"]:
            raise RunDirectoryError(f"{file}: damaged (its size or sha256 differs from {MANIFEST})")


def read_checkpoint(path: Path, model: nn.Module, restore_method: Callable[[Any], None] | None = None
                    ) -> tuple[Any, dict[str, Any]]:
    """Verify and read a checkpoint: restore the weights in place; return (method state, progress).

    `restore_method` gets the method state before the weights load, so a method whose modules grow
    during a run (one adapter per task) can rebuild them for the saved weights to fit.
    """
    verify_checkpoint(path)
    return read_verified(path, model, restore_method)


def read_verified(path: Path, model: nn.Module, restore_method: Callable[[Any], None] | None = None
                  ) -> tuple[Any, dict[str, Any]]:
    """`read_checkpoint` for a checkpoint `verify_checkpoint` has just passed (hashing a model once is enough)."""
    try:
        method_state = load_state(path, "method")
        progress = json.loads((path / "progress.json").read_text(encoding="utf-8"))
    except (StateError, ValueError) as error:
        raise RunDirectoryError(f"{path}: {error}") from None
    if restore_method is not None:
        restore_method(method_state)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise RunDirectoryError(
            f"{path}: weights do not fit the model (missing {len(missing)}, unexpected {len(unexpected)})")
    return method_state, progress


def _entries(path: Path) -> set[str]:
    """What `path` holds, leaving out empty directories retain makes before a run starts (the Trainer's)."""
    return {p.name for p in path.iterdir() if not (p.name in RUN_FILES and p.is_dir() and not any(p.iterdir()))}


def is_run_directory(path: Path) -> bool:
    """Whether `path` holds a retain run and nothing else (an interrupted write's temporary files aside)."""
    names = _entries(path)
    temporary = {n for n in names if any(n.startswith(f".{f}.") for f in RUN_FILES)}
    return "config.json" in names and names - temporary <= RUN_FILES


def check_output(path: Path) -> None:
    """Refuse, in one line, an output path that cannot be a directory because a file stands on it or above it."""
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise RunDirectoryError(f"--output {path}: a file stands where a directory is needed ({part})")
            return


def config_changes(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """The options that differ between two configs, one "option: saved X, now Y" each (nested dicts flattened)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [change for key in sorted(set(saved) | set(now), key=str)
                for change in config_changes(saved.get(key), now.get(key), f"{prefix}{key}.")]
    return [] if saved == now else [f"{prefix.rstrip('.')}: saved {saved!r}, now {now!r}"]


class RunDirectory:
    """Opens DIR for a new run (refusing to clobber an old one unless `overwrite`) or for a resume.

    With `write=False` (every process but the main one of a distributed run) it writes nothing and checks nothing
    that the main process, which opened DIR first, has checked: it only reads checkpoints to resume from.
    """

    def __init__(self, path: str | Path, config: dict[str, Any], resume: bool = False, overwrite: bool = False,
                 write: bool = True) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.config, self.write = config, write
        config_file = self.path / "config.json"
        if not write:
            return
        if resume:
            if not config_file.is_file():
                raise RunDirectoryError(f"--resume: {config_file} not found; nothing to resume")
            try:
                saved = json.loads(config_file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise RunDirectoryError(f"{config_file}: damaged ({error})") from None
            changes = config_changes(saved, config)
            if changes:
                raise RunDirectoryError(f"--resume: {len(changes)} option(s) differ from the run in {self.path}: "
                                        + "; ".join(changes))
        else:
            check_output(self.path)
            try:
                if self.path.exists() and _entries(self.path):
                    if not is_run_directory(self.path):
                        raise RunDirectoryError(f"--output {self.path} holds files retain did not write; retain never "
                                                "deletes those, even with --overwrite: choose another --output")
                    if not overwrite:
                        raise RunDirectoryError(f"--output {self.path} already holds a run; pass --resume to continue "
                                                "it or --overwrite to replace it")
                    shutil.rmtree(self.path)
                self.path.mkdir(parents=True, exist_ok=True)
            except (NotADirectoryError, FileExistsError):
                check_output(self.path)
                raise
            atomic_write(config_file, json.dumps(config, indent=2, sort_keys=True))

    def latest_checkpoint(self) -> Path | None:
        pointer = self.checkpoints / "LATEST"
        return self.checkpoints / pointer.read_text().strip() if pointer.is_file() else None

    def save_checkpoint(self, model: nn.Module | dict[str, torch.Tensor], method_state: Any, result: RunResult,
                        method: str = "") -> Path | None:
        if not self.write:
            return None
        name = f"task-{result.completed_tasks:03d}"
        previous = self.latest_checkpoint()
        try:
            final = write_checkpoint(self.checkpoints / name, model, method, method_state, {"result": result.state()})
            atomic_write(self.checkpoints / "LATEST", name)
        except OSError as error:
            kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
            raise RunDirectoryError(f"{self.checkpoints}: could not write checkpoint {name} "
                                    f"({error.strerror or error}); {kept}") from None
        keep = sorted(p.name for p in self.checkpoints.glob("task-*") if p.is_dir())[-KEEP_CHECKPOINTS:]
        for old in self.checkpoints.iterdir():
            if old.name not in (*keep, "LATEST"):
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        self.write_results(result)
        return final

    def load_checkpoint(
        self, model: nn.Module, restore_method: Callable[[Any], None] | None = None
    ) -> tuple[Any, RunResult] | None:
        """Restore the newest intact checkpoint into `model` (and the method, through `restore_method`); return
        (method state, result so far), or None if the run has none. A damaged newest checkpoint is reported and
        the one before it used; with none intact, the error names every problem found."""
        latest = self.latest_checkpoint()
        if latest is None:
            return None
        older = sorted((p for p in self.checkpoints.glob("task-*") if p.is_dir() and p != latest), reverse=True)
        problems = []
        for checkpoint in [latest, *older]:
            try:
                verify_checkpoint(checkpoint)
            except RunDirectoryError as error:
                problems.append(str(error))
                continue
            if problems:
                logger.warning("%s; resuming from %s instead", "; ".join(problems), checkpoint.name)
            method_state, progress = read_verified(checkpoint, model, restore_method)  # hashed once, just above
            return method_state, RunResult.from_state(progress["result"])
        raise RunDirectoryError("; ".join(problems) + ": no intact checkpoint to resume from (start over with --overwrite)")

    def write_results(self, result: RunResult) -> None:
        if not self.write:
            return
        atomic_write(self.path / "result.json", json.dumps(result.to_json(), indent=2))
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions())
        atomic_write(self.path / "predictions.jsonl", lines)
