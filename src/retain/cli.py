"""The `retain` command line: `retain run` trains one method through a stream; `retain methods` lists them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from transformers import HfArgumentParser
from transformers.utils import logging as hf_logging

from retain.methods import METHODS, MethodError, build_method, method_options
from retain.models import EMBEDDED_DEFAULT, ModelLoadError, load_model
from retain.result import RunResult
from retain.runstate import RunDirectory, RunDirectoryError
from retain.stream import StreamError, load_stream
from retain.trainer import ContinualTrainer, ContinualTrainingArguments

USER_ERRORS = (StreamError, ModelLoadError, RunDirectoryError, MethodError)
# Options that may change between a run and its resume without changing what the run computes.
_RESUMABLE_CHANGES = {"output_dir", "logging_dir", "disable_tqdm", "report_to", "run_name", "dataloader_num_workers"}


@dataclass
class RunArguments:
    stream: str | None = field(default=None, metadata={"help": "Stream directory holding stream.yaml (required)."})
    output: str | None = field(default=None, metadata={"help": "Run directory for results and checkpoints (required)."})
    method: str = field(default="full_ft", metadata={"help": f"One of: {', '.join(sorted(METHODS))}."})
    model: str = field(
        default=EMBEDDED_DEFAULT, metadata={"help": f"'{EMBEDDED_DEFAULT}' (embedded), 'tiny', a HF id or a path."}
    )
    method_arg: list[str] = field(
        default_factory=list, metadata={"help": "Method options as k=v (see `retain methods`).", "nargs": "*"}
    )
    config: str | None = field(default=None, metadata={"help": "YAML file of any of these options; flags override it."})
    resume: bool = field(default=False, metadata={"help": "Continue the run in --output from its last checkpoint."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing run in --output."})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="retain",
        description="Continual fine-tuning of causal LMs: teach a stream of tasks, measure what is kept.",
        epilog="`retain run --help` lists every option, including all of transformers' TrainingArguments.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("run", help="train one method through a stream and measure every task after each", add_help=False)
    commands.add_parser("methods", help="list the methods and their --method-arg options")
    if argv and argv[0] == "run":
        return _run(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "methods":
        _print_methods()
    return 0


def _run(argv: list[str]) -> int:
    try:
        run_args, train_args = _parse_run_arguments(argv)
        return _execute(run_args, train_args, Console(stderr=True))
    except USER_ERRORS as error:
        print(f"retain run: error: {error}", file=sys.stderr)  # one unwrapped line: paths stay copyable
        return 2


def _parse_run_arguments(argv: list[str]) -> tuple[RunArguments, ContinualTrainingArguments]:
    parser = HfArgumentParser((RunArguments, ContinualTrainingArguments), prog="retain run",
                              description="Train one method through a stream, evaluating every task after each.")
    config_path = argparse.ArgumentParser(add_help=False)
    config_path.add_argument("--config")
    config_file = config_path.parse_known_args(argv)[0].config
    if config_file:
        parser.set_defaults(**_read_config(Path(config_file), parser))
    run_args, train_args = parser.parse_args_into_dataclasses(argv)
    for option in ("stream", "output"):
        if getattr(run_args, option) is None:
            parser.error(f"--{option} is required")
    train_args.output_dir = str(Path(run_args.output) / "trainer")
    return run_args, train_args


def _read_config(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if not path.is_file():
        raise RunDirectoryError(f"--config {path}: file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise RunDirectoryError(f"--config {path}: invalid YAML: {error}") from None
    if not isinstance(values, dict):
        raise RunDirectoryError(f"--config {path}: expected a mapping of option: value")
    known = {action.dest for action in parser._actions}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RunDirectoryError(f"--config {path}: unknown option {', '.join(unknown)} (see `retain run --help`)")
    return values


def _parse_method_args(pairs: list[str]) -> dict[str, str]:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MethodError(f"--method-arg {pair!r}: expected key=value")
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed


def _execute(run_args: RunArguments, train_args: ContinualTrainingArguments, console: Console) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    hf_logging.set_verbosity_warning()
    stream = load_stream(run_args.stream)
    method_args = _parse_method_args(run_args.method_arg)
    method = build_method(run_args.method, method_args)
    training = json.loads(train_args.to_json_string())
    config = {
        "method": run_args.method,
        "method_args": method_args,
        "model": run_args.model,
        "stream": str(Path(run_args.stream).resolve()),
        "seed": train_args.seed,
        "training_args": {k: v for k, v in training.items() if k not in _RESUMABLE_CHANGES},
    }
    console.print(f"Loading model [bold]{run_args.model}[/] …")
    model, tokenizer = load_model(run_args.model, seed=train_args.seed)
    run_dir = RunDirectory(run_args.output, config, resume=run_args.resume, overwrite=run_args.overwrite)
    trainer = ContinualTrainer(model=model, args=train_args, method=method, processing_class=tokenizer)
    result = trainer.fit(stream, run_dir=run_dir, model_name=run_args.model)
    Console().print(summary_table(result))
    console.print(f"Results in [bold]{run_dir.path}[/] (result.json, predictions.jsonl)")
    return 0


def summary_table(result: RunResult) -> Table:
    """The EM matrix (rows: after each task) and the run's summary metrics."""
    table = Table(title=f"{result.method} on {result.model}: exact match after each task", title_justify="left")
    table.add_column("after \\ on", style="bold")
    for name in result.tasks:
        table.add_column(name, justify="right")
    table.add_column("general ppl", justify="right")
    for row in result.rows:
        cells = ["–" if v is None else f"{v:.2f}" for v in row.em]
        ppl = "–" if row.general_ppl is None else f"{row.general_ppl:.1f}"
        table.add_row(row.label, *cells, ppl)
    summary = result.summary("em")

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:+.3f}" if value < 0 else f"{value:.3f}"

    seconds = sum(t["train_seconds"] for t in result.timings)
    table.caption = (
        f"ACC {fmt(summary.get('acc'))}   BWT {fmt(summary.get('bwt'))}   FWT {fmt(summary.get('fwt'))}   "
        f"forgetting {fmt(summary.get('forgetting'))}   training {seconds:.0f} s"
    )
    return table


def _print_methods() -> None:
    console = Console()
    for name in sorted(METHODS):
        summary = (sys.modules[METHODS[name].__module__].__doc__ or "").strip().splitlines()[0]
        table = Table(title=f"[bold]{name}[/]: {summary}", title_justify="left")
        table.add_column("--method-arg")
        table.add_column("default")
        table.add_column("meaning")
        for option, default, help_text in method_options(name):
            table.add_row(option, repr(default), help_text)
        console.print(table if table.row_count else table.title)


if __name__ == "__main__":
    sys.exit(main())
