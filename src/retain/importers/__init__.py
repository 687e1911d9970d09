"""Importers: public temporal-knowledge datasets, as users have them on disk, turned into retain streams.

`retain import casm DIR` reads the CASM repository's Synthetic TemporalWiki; `retain import temporalwiki`
reads TemporalWiki's monthly diff sets and probe triples. Each validates its input like the stream loader
(one message naming the file and line), and returns the stream with a report of what it kept and dropped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retain.bench.temporal_facts import BACKGROUND_TEXT, GENERAL_TEXT
from retain.stream import Probe, Stream, StreamError, save_stream
from retain.text import spoken_time

__all__ = ["ImportReport", "question_probes", "read_csv", "read_json", "write_imported"]


@dataclass
class ImportReport:
    """What an importer wrote, and every row it left out with the reason."""

    lines: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # what → rows kept that the reader should know of
    dropped: dict[str, int] = field(default_factory=dict)  # reason → rows left out

    def note(self, line: str) -> None:
        self.lines.append(line)

    def keep(self, what: str, count: int = 1) -> None:
        self.kept[what] = self.kept.get(what, 0) + count

    def drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count

    def text(self) -> str:
        kept = [f"  kept {n}: {what}" for what, n in self.kept.items()]
        dropped = [f"  dropped {n}: {reason}" for reason, n in self.dropped.items()] or ["  dropped nothing"]
        return "\n".join([*self.lines, *kept, *dropped])


def read_json(path: Path) -> Any:
    """A JSON file's content; a missing file, bytes that are not UTF-8 or bad JSON stop with the file and line."""
    if not path.is_file():
        raise StreamError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise StreamError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise StreamError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None


def read_csv(path: Path, columns: Sequence[str]) -> Iterator[tuple[dict[str, str], str]]:
    """Each row of a CSV file with a header naming at least `columns`, with "file:line" for messages."""
    if not path.is_file():
        raise StreamError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise StreamError(f"{path}:1: expected columns {list(columns)}, found {reader.fieldnames or []}")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                empty = [c for c in columns if not (row.get(c) or "").strip()]
                if empty:
                    raise StreamError(f"{where}: empty {', '.join(repr(c) for c in empty)}")
                yield {c: row[c].strip() for c in columns}, where
    except UnicodeDecodeError as error:
        raise StreamError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except csv.Error as error:
        raise StreamError(f"{path}: malformed CSV: {error}") from None


def write_imported(stream: Stream, output: str | Path) -> Path:
    """Save an imported stream with retain's general (evaluation) and background (calibration) text, into a new
    or empty directory: an importer never writes over files it did not write."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise StreamError(f"--output {output}: already exists and is not an empty directory")
    stream.general, stream.background = list(GENERAL_TEXT), list(BACKGROUND_TEXT)
    return save_stream(stream, output)


def question_probes(subject: str, relation: str, period: str, **fields: Any) -> list[Probe]:
    """The held-out question and time-clause forms of a (subject, relation) probe as of `period` (the cloze form
    comes with the data or is "[period] The {relation} of {subject} is")."""
    when = spoken_time(period)
    return [Probe(prompt=f"Q: What was the {relation} of {subject} in {when}?\nA:", form="question", **fields),
            Probe(prompt=f"In {when}, the {relation} of {subject} was", form="time_clause", **fields)]
