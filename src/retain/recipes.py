"""Recipes: what `retain run`, `retain compare` and `retain ask` do, as functions that Python users call too.

    from retain import recipes
    from retain.arguments import ContinualTrainingArguments

    args = ContinualTrainingArguments(output_dir="runs/ewc/trainer", num_train_epochs=2)
    result = recipes.run("runs/stream", "runs/ewc", method="ewc", model="tiny", training_args=args)
    recipes.compare("runs/stream", "runs/cmp", ["full_ft", "replay+ewc"], model="tiny", training_args=args)
    recipes.ask("runs/ewc", ["[2018] The harbour master of Velmora Port is"])

A run directory holds config.json (what `--resume` must match), checkpoints/ (safetensors + JSON, see
`retain.runstate`), result.json and predictions.jsonl. A comparison is one run directory per method,
compare.json, and the report.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import PartialState
from torch import nn
from transformers import PreTrainedTokenizerBase

from retain.arguments import ContinualTrainingArguments
from retain.evaluation import Evaluator
from retain.methods import Method, MethodError, build_method
from retain.models import EMBEDDED_DEFAULT, load_model
from retain.report import write_report
from retain.result import RunResult
from retain.runstate import RunDirectory, RunDirectoryError, RunLock, atomic_write, check_output, read_run_config
from retain.stream import Stream, load_stream, stream_files
from retain.text import dated, first_statement, time_key
from retain.trainer import ContinualTrainer

logger = logging.getLogger(__name__)

# Options that may change between a run and its resume without changing what the run computes.
RESUMABLE_CHANGES = {"output_dir", "logging_dir", "disable_tqdm", "report_to", "run_name", "dataloader_num_workers",
                     "local_rank", "use_cpu"}


def run_config(method: str, method_args: dict[str, str], model: str, stream_path: str | Path,
               training_args: ContinualTrainingArguments) -> dict[str, Any]:
    """What a run directory's config.json records, and what a resume must match."""
    training = json.loads(training_args.to_json_string())
    processes = training_args.world_size  # a resume needs as many: it sets the global batch
    return {
        "method": method, "method_args": method_args, "model": model,
        "stream": str(Path(stream_path).resolve()), "stream_files": stream_files(stream_path),
        "seed": training_args.seed,
        "training_args": {k: v for k, v in training.items() if k not in RESUMABLE_CHANGES},
        **({"processes": processes} if processes > 1 else {}),
    }


def run(stream: str | Path, output: str | Path, method: str = "full_ft", method_args: dict[str, str] | None = None,
        model: str = EMBEDDED_DEFAULT, training_args: ContinualTrainingArguments | None = None, resume: bool = False,
        overwrite: bool = False, loaded_stream: Stream | None = None) -> RunResult:
    """Train `method` (a name, or several joined by "+") through the stream in `stream`, evaluating every task after
    each; results and checkpoints go to `output`. Everything that depends only on the options, the stream and the
    run directory is checked before the model is loaded. Under torchrun or accelerate launch, every process trains
    (data parallel, through the Trainer) and evaluates its share of the probes; only the main one writes."""
    method_args = dict(method_args or {})
    training_args = training_args or ContinualTrainingArguments(output_dir=str(Path(output) / "trainer"))
    if not resume and PartialState().is_main_process:  # refused here, before anything is loaded or written
        RunDirectory.check_new(Path(output), overwrite)
    try:
        return _run(stream, output, method, method_args, model, training_args, resume, overwrite, loaded_stream)
    finally:
        if lock := RunLock.held.get(str(Path(output).resolve())):
            lock.release()  # the run is over, or stopped: another process may write here


def _run(stream: str | Path, output: str | Path, method: str, method_args: dict[str, str], model: str,
         training_args: ContinualTrainingArguments, resume: bool, overwrite: bool, loaded_stream: Stream | None
         ) -> RunResult:
    data = loaded_stream or load_stream(stream)
    built = build_method(method, method_args)
    config = run_config(method, method_args, model, stream, training_args)
    built.check(data)
    run_dir = _open(output, config, resume=True) if resume else None
    logger.info("Loading model %s for %s", model, method)
    loaded, tokenizer = load_model(model, seed=training_args.seed)
    try:
        trainer = ContinualTrainer(model=loaded, args=training_args, method=built, processing_class=tokenizer)
    except MethodError:
        raise
    except ValueError as error:  # a method option the model's library refuses (e.g. PEFT's)
        raise MethodError(f"--method {method}: {error}") from None
    run_dir = run_dir or _open(output, config, overwrite=overwrite)
    return trainer.fit(data, run_dir=run_dir, model_name=model)


def _open(output: str | Path, config: dict[str, Any], resume: bool = False, overwrite: bool = False) -> RunDirectory:
    """The run directory, opened (created, checked) by the main process first; the others then only read it."""
    state = PartialState()
    with state.main_process_first():
        return RunDirectory(output, config, resume=resume, overwrite=overwrite, write=state.is_main_process)


def compare(stream: str | Path, output: str | Path, methods: Sequence[str], method_args: dict[str, dict[str, str]] | None = None,
            method_lr: dict[str, float] | None = None, model: str = EMBEDDED_DEFAULT,
            training_args: ContinualTrainingArguments | None = None, overwrite: bool = False,
            baseline: str | None = None) -> dict[str, Path]:
    """Run every method of `methods` on one stream, model and seed (a finished run is kept unless `overwrite`), then
    write the report, costs relative to `baseline`; returns the report's paths. A method may be NAME=METHOD, a
    variant under its own name."""
    variants = dict(_variant(m) for m in methods)
    names = list(variants)
    given, method_lr = dict(method_args or {}), dict(method_lr or {})
    if unknown := sorted((set(given) | set(method_lr)) - set(names)):
        raise MethodError(f"--method-arg/--method-lr {unknown[0]}: expected one of the methods {names}")
    method_args = {name: dict(given.get(name, {})) for name in names}
    if baseline is not None and baseline not in names:
        raise MethodError(f"--baseline {baseline}: not one of the methods {names}")
    for name in names:  # fail on a bad option before hours of training, not after
        build_method(variants[name], method_args[name])
    data = load_stream(stream)
    training_args = training_args or ContinualTrainingArguments(output_dir=str(Path(output) / "trainer"))
    output = Path(output)
    check_output(output)
    # The comparison's own files would replace a user's of the same name: only in a comparison retain wrote.
    if not (output / "compare.json").is_file() and (taken := sorted(
            p.name for p in (output.iterdir() if output.is_dir() else ()) if p.name in ("report.md", "report.html")
            or p.suffix == ".png")):
        raise RunDirectoryError(f"--output {output}: holds {taken[0]}, which retain did not write (no compare.json); "
                                "choose another --output")
    main = PartialState().is_main_process
    if main:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write(output / "compare.json", json.dumps({"methods": names, "variants": variants,
                                                           "method_args": method_args, "method_lr": method_lr,
                                                           "model": model, "baseline": baseline}, indent=2))
    for index, name in enumerate(names, start=1):
        run_dir = output / name
        finished = run_dir / "result.json"
        if not overwrite and finished.is_file() and json.loads(finished.read_text()).get("complete"):
            logger.info("[%d/%d] %s: already complete in %s, kept", index, len(names), name, run_dir)
            continue
        logger.info("[%d/%d] %s", index, len(names), name)
        args = dataclasses.replace(training_args, learning_rate=method_lr.get(name, training_args.learning_rate),
                                   output_dir=str(run_dir / "trainer"))
        resume = not overwrite and (run_dir / "config.json").is_file()
        run(stream, run_dir, variants[name], method_args[name], model, args, resume, overwrite, loaded_stream=data)
        gc.collect()
    if not main:
        return {"html": output / "report.html", "md": output / "report.md"}
    return write_report(output, baseline)


@dataclass
class LoadedRun:
    """A finished (or interrupted) run's model as its last checkpoint left it, with its method and tokenizer."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    method: Method
    result: RunResult

    def ask(self, prompts: Sequence[str], max_new_tokens: int = 24, as_of: str | None = None,
            conversation: bool = False) -> list[str]:
        """Greedy answers (first statements) to `prompts`, routed by the method; `as_of` dates prompts naming no time.
        With `conversation`, the prompts are the turns of one conversation: each is asked as the method's `follow_up`
        of the turns before it ("Who was the harbour master of Velmora Port in 2018?", "And now?")."""
        if as_of is not None:
            time_key(as_of)  # a bad time fails here, with the time in the message
            prompts = [dated(p, as_of) for p in prompts]
        evaluator = Evaluator(self.tokenizer, route=self.method.route)
        if conversation:
            encode = evaluator.encoder(next(self.model.parameters()).device)
            prompts = [self.method.follow_up(self.model, p, prompts[:i], encode) for i, p in enumerate(prompts)]
        return [first_statement(text) for text in evaluator.complete(self.model, list(prompts), max_new_tokens)]


def load_run(run_dir: str | Path) -> LoadedRun:
    """The model of `run_dir`'s last intact checkpoint, its method and its result so far."""
    config = read_run_config(Path(run_dir))
    method = build_method(config["method"], config["method_args"])
    model, tokenizer = load_model(config["model"], seed=config["seed"])
    model = method.prepare(model)
    # A reader: it takes no lock (a run being written can be asked) and writes nothing.
    restored = RunDirectory(run_dir, config, resume=True, write=False).load_checkpoint(model, method.load_state_dict)
    if restored is None:
        raise RunDirectoryError(f"--run {run_dir}: no checkpoint yet; the run has not finished a task")
    return LoadedRun(model, tokenizer, method, restored[1])


def ask(run_dir: str | Path, prompts: Sequence[str], max_new_tokens: int = 24, as_of: str | None = None,
        conversation: bool = False) -> list[str]:
    """Greedy answers by the model of `run_dir`'s last checkpoint (see `LoadedRun.ask`)."""
    if as_of is not None:
        time_key(as_of)  # before the model is loaded
    return load_run(run_dir).ask(prompts, max_new_tokens, as_of, conversation)


def export(run_dir: str | Path, output: str | Path, format: str | None = None, as_of: str | None = None,
           overwrite: bool = False) -> Path:
    """Write the model of `run_dir`'s last checkpoint to `output`, a folder transformers (and PEFT) load, with a model
    card: `retain.export.export`, which reads the run through `load_run`."""
    from retain.export import export as write  # here, not above: retain.export imports this module

    return write(run_dir, output, format, as_of, overwrite)


def _variant(text: str) -> tuple[str, str]:
    """"aria" → (aria, aria); "aria_no_spc=aria" → (aria_no_spc, aria)."""
    name, _, method = text.strip().partition("=")
    name, method = name.strip(), (method or name).strip()
    if not name or not method:
        raise MethodError(f"--methods {text!r}: expected METHOD or NAME=METHOD")
    return name, method
