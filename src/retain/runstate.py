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

A run directory is a sandbox: retain follows no symbolic link in it, reads only checkpoint names it writes
(task-NNN) and file names without a path, and deletes only its own files (the checkpoints' manifests list
theirs). One process writes to it at a time: it holds an exclusive lock (`.retain.lock`, naming its pid and
start time) for the whole run, which the operating system releases if it dies; readers take no lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import PartialState
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from retain.result import RunResult
from retain.serialization import StateError, load_state, save_state

logger = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2
MANIFEST = "manifest.json"
LOCK = ".retain.lock"
# What retain writes into a run directory; --overwrite deletes a directory only if it holds nothing else.
RUN_FILES = {"config.json", "result.json", "predictions.jsonl", "checkpoints", "trainer", LOCK}
# The keys of a run's config.json (recipes.run_config): a folder whose config.json lacks them is not a run.
CONFIG_KEYS = {"method", "method_args", "model", "seed", "stream", "stream_files", "training_args"}
CHECKPOINT_NAME = re.compile(r"task-\d{3}")
CHECKPOINT_FILES = {"model.safetensors", "method.safetensors", "method.json", "progress.json", MANIFEST, "method.pt",
                    "continual.pt"}  # the last two: an older retain's, which `upgrade-run` converts
REQUIRED = {"model.safetensors", "progress.json"}
FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # a file of a checkpoint: no path, no "..", not hidden
# Names retain's atomic writes use while writing: a killed run's leftovers, removed when the run is opened again.
TEMPORARY = re.compile(r"\.(task-\d{3}|LATEST|config\.json|result\.json|predictions\.jsonl)\..+")


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
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()  # its text is long, and coloured
        raise RunDirectoryError(f"{path}: cannot be converted safely ({type(error).__name__}: "
                                f"{first[0][:200] if first else ''})") from None
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
        entries = {name: (int(e["size"]), str(e["sha256"])) for name, e in manifest.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise RunDirectoryError(f"{path / MANIFEST}: missing or damaged") from None
    if stray := next((name for name in entries if not FILE_NAME.fullmatch(name)), None):
        raise RunDirectoryError(f"{path / MANIFEST}: damaged (lists {stray[:60]!r}, not a file of the checkpoint)")
    if missing := sorted(REQUIRED - set(entries)):
        raise RunDirectoryError(f"{path / MANIFEST}: damaged (does not list {missing[0]})")
    for name, (size, sha256) in entries.items():
        file = path / name
        if not file.is_file() or file.is_symlink():
            raise RunDirectoryError(f"{file}: missing")
        if file.stat().st_size != size or _sha256(file) != sha256:
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
    except (StateError, ValueError, RecursionError) as error:
        raise RunDirectoryError(f"{path}: {error}") from None
    if not isinstance(progress, dict):
        raise RunDirectoryError(f"{path / 'progress.json'}: damaged (not a mapping)")
    if restore_method is not None:
        try:
            restore_method(method_state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
            raise RunDirectoryError(f"{path}/method.json: does not fit the method ({type(error).__name__}: "
                                    f"{str(error)[:200]})") from None
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except (SafetensorError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise RunDirectoryError(f"{path / 'model.safetensors'}: does not fit the model ({first})") from None
    if missing or unexpected:
        raise RunDirectoryError(
            f"{path}: weights do not fit the model (missing {len(missing)}, unexpected {len(unexpected)})")
    return method_state, progress


def _entries(path: Path) -> set[str]:
    """What `path` holds, leaving out empty directories retain makes before a run starts (the Trainer's)."""
    return {p.name for p in path.iterdir() if not (p.name in RUN_FILES and p.is_dir() and not any(p.iterdir()))}


def foreign_file(path: Path, config: bool = True) -> str | None:
    """The first file or folder under run directory `path` that retain did not write (relative to it), or None.
    A folder is a run only with a run's config.json (`config`: check it); checkpoints hold only retain's names and
    files."""
    names = _entries(path)
    if config and ("config.json" not in names or not _is_run_config(path / "config.json")):
        return "config.json (not a retain run's)" if "config.json" in names else "no config.json"
    if other := sorted(n for n in names - RUN_FILES if not TEMPORARY.fullmatch(n)):
        return other[0]
    checkpoints = path / "checkpoints"
    for entry in sorted(checkpoints.iterdir()) if checkpoints.is_dir() else ():
        if entry.name == "LATEST" and entry.is_file() or TEMPORARY.fullmatch(entry.name):
            continue
        if not (CHECKPOINT_NAME.fullmatch(entry.name) and entry.is_dir()):
            return f"checkpoints/{entry.name}"
        if other := sorted(f.name for f in entry.iterdir() if f.name not in CHECKPOINT_FILES or not f.is_file()):
            return f"checkpoints/{entry.name}/{other[0]}"
    return None


def read_run_config(run: Path) -> dict[str, Any]:
    """A run directory's config.json, refused in one line unless it is one retain wrote (see CONFIG_KEYS)."""
    file = run / "config.json"
    if not file.is_file():
        raise RunDirectoryError(f"{run}: no config.json; not a run directory")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise RunDirectoryError(f"{file}: damaged ({type(error).__name__})") from None
    if not isinstance(config, dict) or (missing := sorted(CONFIG_KEYS - set(config))):
        raise RunDirectoryError(f"{file}: damaged (no {missing[0] if isinstance(config, dict) else 'mapping'!r}): "
                                "not a retain run's")
    return config


def _is_run_config(file: Path) -> bool:
    try:
        read_run_config(file.parent)
    except RunDirectoryError:
        return False
    return True


def check_no_symlink(path: Path) -> None:
    """Refuse a run directory that is, or holds, a symbolic link: retain reads and deletes only inside its own tree."""
    links = [path] if path.is_symlink() else [Path(root) / name for root, dirs, files in os.walk(path)
                                               for name in (*dirs, *files) if (Path(root) / name).is_symlink()]
    if links:
        raise RunDirectoryError(f"{links[0]}: a symbolic link in a run directory; retain follows none (put the real "
                                "folder or file there, or choose another --output)")


def _remove(path: Path) -> None:
    """Delete what retain wrote at `path` (a file, a checkpoint's listed files, a temporary or Trainer folder)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class RunLock:
    """An exclusive lock on a run directory for one writing process, held until `release` or the process ends (the
    operating system drops a dead process's lock, so a stale one is taken over). The lock file names the holder.
    A process is one writer: `RunLock.of` gives the lock it already holds on a directory."""

    held: ClassVar[dict[str, RunLock]] = {}  # this process's locks, by resolved directory

    @classmethod
    def of(cls, path: Path) -> RunLock:
        key = str(path.resolve())
        if key not in cls.held:
            cls.held[key] = cls(path)
        return cls.held[key]

    def __init__(self, path: Path) -> None:
        self.key = str(path.resolve())
        self.fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 200).decode(errors="replace").strip() or "a process that has not said which"
            os.close(self.fd)
            raise RunDirectoryError(f"{path}: another retain process is writing to it ({holder}); wait for it to end or "
                                    "choose another --output") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}".encode())

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.held.pop(self.key, None)


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
        self.lock: RunLock | None = None
        if self.path.exists() or self.path.is_symlink():
            check_no_symlink(self.path)
        if not write:
            return
        if resume:
            self._open_for_resume()
            return
        existing = self.check_new(self.path, overwrite)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock.of(self.path)
            for name in existing:  # an earlier run's files (checked above), deleted only once the lock is ours
                _remove(self.path / name)
            atomic_write(self.path / "config.json", json.dumps(config, indent=2, sort_keys=True))
        except OSError as error:
            raise RunDirectoryError(f"--output {self.path}: cannot write there ({error.strerror or error})") from None

    @staticmethod
    def check_new(path: Path, overwrite: bool) -> list[str]:
        """Refuse `path` for a new run unless it is empty, absent, or (with `overwrite`) a run retain wrote, with
        nothing else in it and no other process writing to it (its lock is then held); returns the entries an
        overwrite deletes. Deletes nothing."""
        check_output(path)
        existing = next(part for part in (path, *path.parents) if part.exists())
        if not os.access(existing, os.W_OK):
            raise RunDirectoryError(f"--output {path}: cannot write there ({existing} is read-only or not writable)")
        if not path.is_dir() or not (names := _entries(path)):
            return []
        check_no_symlink(path)
        if foreign := foreign_file(path):
            raise RunDirectoryError(f"--output {path} holds files retain did not write ({foreign}); retain never "
                                    "deletes those, even with --overwrite: choose another --output")
        if not overwrite:
            raise RunDirectoryError(f"--output {path} already holds a run; pass --resume to continue it or --overwrite "
                                    "to replace it")
        RunLock.of(path)
        return sorted(names - {LOCK})

    def _open_for_resume(self) -> None:
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise RunDirectoryError(f"--resume: {config_file} not found; nothing to resume")
        try:
            saved = json.loads(config_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise RunDirectoryError(f"{config_file}: damaged ({str(error)[:200]})") from None
        if foreign := foreign_file(self.path, config=False):  # a config.json of another kind differs from the run's
            raise RunDirectoryError(f"--resume: {self.path} holds files retain did not write ({foreign}); move them "
                                    "out of the run directory")
        changes = config_changes(saved, self.config)
        if changes:
            raise RunDirectoryError(f"--resume: {len(changes)} option(s) differ from the run in {self.path}: "
                                    + "; ".join(changes))
        self.lock = RunLock.of(self.path)
        self._prune()

    def _prune(self) -> None:
        """Keep the newest KEEP_CHECKPOINTS checkpoints; remove older ones and what a killed write left behind."""
        for left in (p for p in (*self.path.iterdir(), *self._checkpoint_entries()) if TEMPORARY.fullmatch(p.name)):
            _remove(left)
        named = sorted(p.name for p in self._checkpoint_entries() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir())
        latest = self._intact_name()
        keep = {*named[-KEEP_CHECKPOINTS:], *([latest] if latest else [])}
        for old in (self.checkpoints / name for name in named if name not in keep):
            _remove(old)

    def _checkpoint_entries(self) -> list[Path]:
        return list(self.checkpoints.iterdir()) if self.checkpoints.is_dir() else []

    def _latest_name(self) -> str | None:
        """The checkpoint LATEST names; None without LATEST. A name that is not task-NNN is refused by name."""
        pointer = self.checkpoints / "LATEST"
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        if not CHECKPOINT_NAME.fullmatch(name):
            raise RunDirectoryError(f"{pointer}: names {name[:60]!r}, not a checkpoint of this run (task-NNN)")
        return name

    def latest_checkpoint(self) -> Path | None:
        name = self._latest_name()
        return None if name is None else self.checkpoints / name

    def save_checkpoint(self, model: nn.Module | dict[str, torch.Tensor], method_state: Any, result: RunResult,
                        method: str = "") -> Path | None:
        if not self.write:
            return None
        name = f"task-{result.completed_tasks:03d}"
        previous = self._intact_name()
        try:
            final = write_checkpoint(self.checkpoints / name, model, method, method_state, {"result": result.state()})
            atomic_write(self.checkpoints / "LATEST", name)
            self._prune()
            self.write_results(result)
        except (OSError, SafetensorError) as error:
            kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
            code = re.search(r"os error (\d+)", str(error))  # safetensors reports the system's error in its text
            reason = getattr(error, "strerror", None) or (os.strerror(int(code[1])) if code else str(error)[:200])
            raise RunDirectoryError(f"{self.checkpoints}: could not write checkpoint {name} ({reason}); {kept}") from None
        return final

    def _intact_name(self) -> str | None:
        try:
            return self._latest_name()
        except RunDirectoryError:
            return None

    def load_checkpoint(
        self, model: nn.Module, restore_method: Callable[[Any], None] | None = None
    ) -> tuple[Any, RunResult] | None:
        """Restore the newest intact checkpoint into `model` (and the method, through `restore_method`); return
        (method state, result so far), or None if the run has none. A damaged newest checkpoint is reported and
        the one before it used; with none intact, the error names every problem found."""
        problems = []
        try:
            latest = self.latest_checkpoint()
        except RunDirectoryError as error:
            problems.append(str(error))
            latest = None
        if latest is None and not problems:
            return None
        older = sorted((p for p in self._checkpoint_entries() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()
                        and p != latest), reverse=True)
        for checkpoint in [c for c in (latest, *older) if c is not None]:
            try:
                verify_checkpoint(checkpoint)
                method_state, progress = read_verified(checkpoint, model, restore_method)  # hashed once, just above
                if not isinstance(progress.get("result"), dict):
                    raise RunDirectoryError(f"{checkpoint / 'progress.json'}: damaged (no result)")
                result = RunResult.from_state(progress["result"])
            except RunDirectoryError as error:
                problems.append(str(error))
                continue
            except (KeyError, TypeError, ValueError) as error:
                problems.append(f"{checkpoint / 'progress.json'}: damaged ({type(error).__name__}: {str(error)[:100]})")
                continue
            if problems:
                logger.warning("%s; resuming from %s instead", "; ".join(problems), checkpoint.name)
            return method_state, result
        raise RunDirectoryError("; ".join(problems) + ": no intact checkpoint to resume from (start over with --overwrite)")

    def write_results(self, result: RunResult) -> None:
        if not self.write:
            return
        atomic_write(self.path / "result.json", json.dumps(result.to_json(), indent=2))
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions())
        atomic_write(self.path / "predictions.jsonl", lines)
