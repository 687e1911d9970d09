"""Tasks, probes and streams: built in Python or loaded (and validated) from a `stream.yaml` directory."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class StreamError(ValueError):
    """A stream definition is invalid; the message names the file and line (or the Python object)."""


@dataclass(frozen=True)
class Probe:
    """A prompt with a gold answer. With `choices`, it is scored by likelihood ranking instead of generation.

    `key` names the question independently of time: probes of different tasks that share a key ask
    the same question as of different periods (which is how historical accuracy is measured).
    `form` names the wording (cloze, question, time_clause, now, …), so that scores are reported per form.
    `other_values` are the values the same fact takes at other times: a prediction naming one of them is
    wrong even if it also names the answer. `learned_in` names the task whose training stated the answer
    (default: the probe's own task), which is what routing accuracy compares a method's route with.
    """

    prompt: str
    answer: str
    kind: str = ""
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    key: str = ""
    form: str = ""
    other_values: tuple[str, ...] = ()
    learned_in: str = ""

    @classmethod
    def from_record(cls, record: Any, where: str) -> Probe:
        record = _mapping(record, where)
        _require(record, ("prompt", "answer"), where)
        _unknown(record, {"prompt", "answer", "kind", "aliases", "choices", "key", "form", "other_values", "learned_in"},
                 where)
        probe = cls(
            prompt=_string(record, "prompt", where),
            answer=_string(record, "answer", where),
            kind=str(record.get("kind", "")),
            aliases=_strings(record, "aliases", where),
            choices=_strings(record, "choices", where),
            key=str(record.get("key", "")),
            form=str(record.get("form", "")),
            other_values=_strings(record, "other_values", where),
            learned_in=str(record.get("learned_in", "")),
        )
        if probe.choices and probe.answer not in probe.choices:
            raise StreamError(f"{where}: answer {probe.answer!r} is not one of its choices {list(probe.choices)}")
        return probe

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"prompt": self.prompt, "answer": self.answer, "kind": self.kind}
        if self.aliases:
            record["aliases"] = list(self.aliases)
        if self.choices:
            record["choices"] = list(self.choices)
        for name in ("key", "form", "learned_in"):
            if getattr(self, name):
                record[name] = getattr(self, name)
        if self.other_values:
            record["other_values"] = list(self.other_values)
        return record


@dataclass
class Task:
    """One step of a stream: training examples, the probes that measure it, and optionally its facts.

    A training example is `{"text": ...}` (loss on every token) or `{"prompt": ..., "completion": ...}`
    (loss on the completion only). `train` and `probes` accept lists of dicts or `datasets.Dataset`s.
    """

    name: str
    train: list[dict[str, str]]
    probes: list[Probe]
    period: str | None = None
    facts: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise StreamError(f"{where}: name must be a non-empty string")
        self.train = [_train_record(r, f"{where} train[{i}]") for i, r in enumerate(self.train)]
        self.probes = [
            p if isinstance(p, Probe) else Probe.from_record(p, f"{where} probes[{i}]") for i, p in enumerate(self.probes)
        ]
        self.facts = [_fact_record(r, f"{where} facts[{i}]") for i, r in enumerate(self.facts)]
        if not self.train:
            raise StreamError(f"{where}: has no training examples")
        if not self.probes:
            raise StreamError(f"{where}: has no probes")
        if self.period is not None:
            self.period = str(self.period)

    def to_record(self) -> dict[str, Any]:
        """Plain data that `Task(**record)` turns back into this task."""
        return {"name": self.name, "train": self.train, "probes": [p.to_record() for p in self.probes],
                "period": self.period, "facts": self.facts}


@dataclass
class Stream:
    """Tasks in training order, plus optional plain text: `general` measures damage to general ability
    (perplexity), `background` is what methods may calibrate on (SMF's slot statistics). The two never
    share a text, so no method tunes on what its damage is measured on. `locality` prompts ask what no task
    teaches (a known subject's other attributes, other subjects' same attribute): their answers must not change."""

    name: str
    tasks: list[Task]
    general: list[str] = field(default_factory=list)
    background: list[str] = field(default_factory=list)
    locality: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise StreamError(f"stream {self.name!r}: has no tasks")
        shared = (set(self.general) | set(self.locality)) & set(self.background)
        if shared:
            raise StreamError(f"stream {self.name!r}: {len(shared)} text(s) are both general or locality (evaluation) and background "
                              f"(calibration) text, e.g. {next(iter(shared))[:60]!r}; the two must be disjoint")
        seen: set[str] = set()
        for task in self.tasks:
            if task.name in seen:
                raise StreamError(f"stream {self.name!r}: duplicate task name {task.name!r}")
            seen.add(task.name)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def __len__(self) -> int:
        return len(self.tasks)


def load_stream(directory: str | Path) -> Stream:
    """Load and validate `DIRECTORY/stream.yaml` and the JSONL files it names (paths relative to it)."""
    directory = Path(directory)
    spec_path = directory / "stream.yaml"
    if not spec_path.is_file():
        raise StreamError(f"{spec_path}: not found (a stream directory holds stream.yaml)")
    spec = read_yaml(_utf8(spec_path.read_bytes(), spec_path), str(spec_path))
    spec = _mapping(spec, str(spec_path))
    _require(spec, ("name", "tasks"), str(spec_path))
    _unknown(spec, {"name", "tasks", "general", "background", "locality"}, str(spec_path))
    if not isinstance(spec["tasks"], list) or not spec["tasks"]:
        raise StreamError(f"{spec_path}: 'tasks' must be a non-empty list")

    tasks = []
    for index, entry in enumerate(spec["tasks"]):
        where = f"{spec_path}: tasks[{index}]"
        entry = _mapping(entry, where)
        _require(entry, ("name", "train", "probes"), where)
        _unknown(entry, {"name", "period", "train", "probes", "facts"}, where)
        for key in ("train", "probes", "facts"):
            if key in entry and not isinstance(entry[key], str):
                raise StreamError(f"{where}: '{key}' must be a file path relative to the stream, got {entry[key]!r}")
        name = str(entry["name"])
        train_file, probes_file = directory / entry["train"], directory / entry["probes"]
        train = [_train_record(r, w) for r, w in _read_jsonl(train_file)]
        probes = [Probe.from_record(r, w) for r, w in _read_jsonl(probes_file)]
        facts = [_fact_record(r, w) for r, w in _read_jsonl(directory / entry["facts"])] if "facts" in entry else []
        if not train:
            raise StreamError(f"{train_file}: task {name!r} has no training examples")
        if not probes:
            raise StreamError(f"{probes_file}: task {name!r} has no probes")
        period = entry.get("period")
        tasks.append(Task(name=name, train=train, probes=probes, period=None if period is None else str(period), facts=facts))

    for key in ("general", "background", "locality"):
        if key in spec and not isinstance(spec[key], str):
            raise StreamError(f"{spec_path}: '{key}' must be a file path relative to the stream, got {spec[key]!r}")
    texts = {key: load_jsonl_texts(directory / spec[key]) if key in spec else [] for key in ("general", "background", "locality")}
    try:
        return Stream(name=str(spec["name"]), tasks=tasks, **texts)
    except StreamError as error:
        raise StreamError(f"{spec_path}: {error}") from None


def load_jsonl_texts(path: Path) -> list[str]:
    """The `text` field of every line of a JSONL file (e.g. a background or general-text corpus)."""
    return [_string(_mapping(record, where), "text", where) for record, where in _read_jsonl(Path(path))]


def check_stream_output(directory: Path) -> None:
    """Refuse, before anything is generated, an output that is not new, empty, or a stream's own directory (which is
    rewritten): a file in the way, or a folder holding other files (a run's)."""
    for part in (directory, *directory.parents):
        if part.exists():
            if not part.is_dir():
                raise StreamError(f"--output {directory}: a file stands where a directory is needed ({part})")
            break
    if directory.is_dir() and any(directory.iterdir()) and not (directory / "stream.yaml").is_file():
        raise StreamError(f"--output {directory}: holds files that are not a stream's; choose a new or empty folder")


def save_stream(stream: Stream, directory: str | Path) -> Path:
    """Write `stream` in the directory format that `load_stream` reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for task in stream.tasks:
        folder = directory / _safe_name(task.name)
        folder.mkdir(exist_ok=True)
        _write_jsonl(folder / "train.jsonl", task.train)
        _write_jsonl(folder / "probes.jsonl", [p.to_record() for p in task.probes])
        entry: dict[str, Any] = {"name": task.name}
        if task.period is not None:
            entry["period"] = task.period
        entry |= {"train": f"{folder.name}/train.jsonl", "probes": f"{folder.name}/probes.jsonl"}
        if task.facts:
            _write_jsonl(folder / "facts.jsonl", task.facts)
            entry["facts"] = f"{folder.name}/facts.jsonl"
        entries.append(entry)
    spec: dict[str, Any] = {"name": stream.name, "tasks": entries}
    if stream.general:
        _write_jsonl(directory / "general.jsonl", [{"text": t} for t in stream.general])
        spec["general"] = "general.jsonl"
    if stream.background:
        _write_jsonl(directory / "background.jsonl", [{"text": t} for t in stream.background])
        spec["background"] = "background.jsonl"
    if stream.locality:
        _write_jsonl(directory / "locality.jsonl", [{"text": t} for t in stream.locality])
        spec["locality"] = "locality.jsonl"
    (directory / "stream.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return directory


def _read_jsonl(path: Path) -> Iterable[tuple[Any, str]]:
    if not path.is_file():
        raise StreamError(f"{path}: file not found")
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        line = _utf8(raw, Path(f"{path}:{number}"))
        if not line.strip():
            continue
        try:
            yield json.loads(line), f"{path}:{number}"
        except json.JSONDecodeError as error:
            raise StreamError(f"{path}:{number}: invalid JSON: {error.msg}") from None
        except RecursionError:
            raise StreamError(f"{path}:{number}: nested too deeply") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the mapping's own construction refuses it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(text: str, where: str) -> Any:
    """Parse `text` (of `where`, named in errors with the line) as safe YAML with unique keys."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else "?"
        raise StreamError(f"{where}:{line}: invalid YAML: {error.problem}") from None
    except yaml.reader.ReaderError as error:  # a character YAML does not allow, such as a control byte
        line = text[: error.position].count("\n") + 1
        raise StreamError(f"{where}:{line}: invalid YAML: character {chr(error.character)!r} is not allowed") from None
    except (yaml.YAMLError, RecursionError) as error:
        raise StreamError(f"{where}: invalid YAML ({type(error).__name__})") from None


def _utf8(data: bytes, where: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise StreamError(f"{where}: not UTF-8 text (byte {error.start}: {data[error.start:error.start + 1]!r})") from None


def stream_files(directory: str | Path) -> dict[str, str]:
    """sha256 of stream.yaml and of every file it names, by path relative to the stream: what a run records,
    so that resuming it on a stream that changed since is refused, naming what changed."""
    directory = Path(directory)
    spec = yaml.safe_load((directory / "stream.yaml").read_text(encoding="utf-8"))
    names = ["stream.yaml", *(entry[k] for entry in spec["tasks"] for k in ("train", "probes", "facts") if k in entry),
             *(spec[k] for k in ("general", "background", "locality") if k in spec)]
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()[:16] for name in dict.fromkeys(names)}


def _write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _train_record(record: Any, where: str) -> dict[str, str]:
    record = _mapping(record, where)
    if "text" in record:
        _unknown(record, {"text"}, where)
        return {"text": _string(record, "text", where)}
    if "prompt" in record or "completion" in record:
        _require(record, ("prompt", "completion"), where)
        _unknown(record, {"prompt", "completion"}, where)
        return {"prompt": _string(record, "prompt", where, allow_empty=True), "completion": _string(record, "completion", where)}
    raise StreamError(f"{where}: a training example needs 'text', or 'prompt' and 'completion'")


def _fact_record(record: Any, where: str) -> dict[str, str]:
    record = _mapping(record, where)
    keys = ("subject", "relation", "object", "valid_from")
    _require(record, keys, where)
    for key, what in (("subject_aliases", "the subject's other names"),
                      ("relation_aliases", "the relation's other wordings")):
        aliases = record.get(key, [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
            raise StreamError(f"{where}: '{key}' must be a list of {what} (non-empty strings)")
    return {key: str(record[key]) for key in keys} | {k: v for k, v in record.items() if k not in keys}


def _mapping(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, Mapping):
        raise StreamError(f"{where}: expected an object, got {type(record).__name__}")
    return dict(record)


def _require(record: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
    missing = [key for key in keys if key not in record or record[key] is None]
    if missing:
        raise StreamError(f"{where}: missing field {', '.join(repr(k) for k in missing)}")


def _unknown(record: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(record) - allowed)
    if extra:
        raise StreamError(f"{where}: unknown field {', '.join(repr(k) for k in extra)} (allowed: {sorted(allowed)})")


def _string(record: Mapping[str, Any], key: str, where: str, allow_empty: bool = False) -> str:
    if key not in record:
        raise StreamError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, str) or (not value.strip() and not allow_empty):
        raise StreamError(f"{where}: {key!r} must be a non-empty string")
    return value


def _strings(record: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = record.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        raise StreamError(f"{where}: {key!r} must be a list of non-empty strings")
    return tuple(values)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
