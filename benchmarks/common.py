"""Shared by the benchmark scripts: run `retain compare`, then condense its run directories into one JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from retain.cli import main as retain  # noqa: E402
from retain.fact_questions import DEFAULT_WORDINGS, WORDINGS  # noqa: E402
from retain.report import load_results, seconds_per_token  # noqa: E402
from retain.runstate import atomic_write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# Per-method settings shared by the benchmarks. LoRA's small update (and each of snapshot's LoRA adapters) needs a
# larger step to learn in the same number of epochs.
METHOD_LR = {"lora": "1e-3", "snapshot": "1e-3"}
METHOD_ARGS = {"ewc": ["fisher_samples=32"], "replay": ["buffer_size=64", "ratio=0.25"], "smf": []}


def compare(stream: Path, output: Path, methods: list[str], options: list[str], method_args: list[str] = (),
            method_lr: list[str] = ()) -> float:
    """Run `retain compare` with the shared per-method settings of `methods` (variants NAME=METHOD get METHOD's)
    plus `method_args` (NAME.key=value) and `method_lr` (NAME=lr, which win); return its wall-clock seconds."""
    named = [(m.split("=")[0], m.split("=")[-1]) for m in methods]
    given = {pair.split("=")[0] for pair in method_lr}
    lrs = [f"{n}={METHOD_LR[m]}" for n, m in named if m in METHOD_LR and n not in given] + list(method_lr)
    method_args = [f"{n}.{arg}" for n, m in named for arg in METHOD_ARGS.get(m, [])] + list(method_args)
    options = [*options, *(["--method-lr", *lrs] if lrs else []), *(["--method-arg", *method_args] if method_args else [])]
    started = time.time()
    if retain(["compare", "--methods", ",".join(methods), "--stream", str(stream), "--output", str(output), *options]) != 0:
        raise SystemExit(f"retain compare failed for {output}")
    return time.time() - started


def temporal_parser(description: str, name: str, methods: str) -> argparse.ArgumentParser:
    """Options shared by the benchmarks on the temporal-facts stream; `name` names their run and result paths."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["small", "medium", "full"])
    parser.add_argument("--facts", type=int, default=None, help="override the preset's number of facts")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default=methods)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fact-questions", type=int, default=DEFAULT_WORDINGS, choices=range(len(WORDINGS) + 1),
                        help="training wordings of each new or changed fact, for every method alike (retain's --fact_questions)")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--probe-templates", type=int, default=0,
                        help="probes in N templates of the dev/test family per fact and period (0: the fixed forms)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method-arg", nargs="+", default=[], metavar="METHOD.KEY=VALUE",
                        help="extra method options; with NAME=METHOD variants in --methods this sweeps a method")
    parser.add_argument("--runs", type=Path, default=None, help=f"default: runs/bench-{name}-<preset>")
    parser.add_argument("--output", type=Path, default=None, help=f"default: benchmarks/results/{name}_<preset>.json")
    parser.set_defaults(name=name)
    return parser


def compare_on_temporal_facts(args: argparse.Namespace, edit_stream: Callable[[Path], None] | None = None,
                              method_lr: list[str] = ()) -> tuple[Path, float]:
    """Generate the preset's stream (then `edit_stream(directory)`, if given) and run `retain compare` on it;
    return the run directory and seconds."""
    runs = args.runs or ROOT / "runs" / f"bench-{args.name}-{preset_name(args)}"
    stream = runs / "stream"
    facts = ["--facts", str(args.facts)] if args.facts else []
    facts += ["--probe-templates", str(args.probe_templates)] if getattr(args, "probe_templates", 0) else []
    if retain(["generate", "temporal-facts", "--preset", args.preset, *facts, "--seed", str(args.seed), "--output", str(stream)]):
        raise SystemExit("could not generate the stream")
    if edit_stream is not None:
        edit_stream(stream)
    options = [*training_options(args), "--per_device_eval_batch_size", str(args.eval_batch_size)]
    return runs, compare(stream, runs, args.methods.split(","), options, args.method_arg, method_lr)


def chosen_methods(parser: argparse.ArgumentParser, value: str, known: list[str]) -> list[str]:
    """--methods as a list: each one known, full_ft among them (the step-time ratios' baseline); else an option error."""
    chosen = value.split(",")
    if unknown := set(chosen) - set(known):
        parser.error(f"--methods: unknown {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    if "full_ft" not in chosen:
        parser.error("--methods: full_ft must be one of them (the step-time ratios' baseline)")
    return chosen


def training_options(args: argparse.Namespace) -> list[str]:
    """The `retain compare` options every benchmark on facts shares: constant lr 2e-4, the args' model, seed, epochs,
    batch size and fact questions."""
    return ["--model", args.model, "--seed", str(args.seed), "--num_train_epochs", str(args.epochs),
            "--learning_rate", "2e-4", "--per_device_train_batch_size", str(args.batch_size),
            "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--fact_questions", str(args.fact_questions),
            "--disable_tqdm", "true", "--overwrite",
            "--bf16", "false"]  # fp32 on every machine, so that CPU and GPU numbers compare (retain's GPU default is bf16)


def task_training(seed: int, learning_rate: float, epochs: int) -> dict[str, Any]:
    """The ContinualTrainingArguments the task benchmarks (aria.py, conflicting.py) share: constant lr, batch 8."""
    return dict(seed=seed, learning_rate=learning_rate, num_train_epochs=epochs, per_device_train_batch_size=8,
                per_device_eval_batch_size=32, lr_scheduler_type="constant", warmup_steps=0, disable_tqdm=True,
                report_to="none")


def as_flags(training: dict[str, Any]) -> list[str]:
    """ContinualTrainingArguments fields as `retain compare` options: {"seed": 0} → ["--seed", "0"]."""
    return [text for key, value in training.items() for text in (f"--{key}", str(value))]


def preset_name(args: argparse.Namespace) -> str:
    """The preset, with the number of facts when overridden and the probe templates when used: full-200facts,
    small-templates8."""
    name = f"{args.preset}-{args.facts}facts" if args.facts else args.preset
    return f"{name}-templates{args.probe_templates}" if getattr(args, "probe_templates", 0) else name


def result_path(args: argparse.Namespace) -> Path:
    return args.output or ROOT / "benchmarks" / "results" / f"{args.name}_{preset_name(args)}.json"


def condense(output: Path) -> dict[str, Any]:
    """Each method's matrices, summary and speed, with speed as ratios to full_ft from the same comparison."""
    results = load_results(output)

    def speed(result: dict[str, Any]) -> dict[str, float]:
        timings = result["timings"]
        seconds = sum(t["train_seconds"] for t in timings)
        steps = sum(t["optimizer_steps"] for t in timings)
        # A method that trains nothing (rag) has no steps: its per-step and per-token costs are None, not a division by 0.
        return {"train_seconds": seconds, "seconds_per_step": seconds / steps if steps else None,
                "seconds_per_token": seconds_per_token(result),
                "consolidate_seconds": sum(t.get("consolidate_seconds", 0.0) for t in timings),
                "optimizer_state_bytes": max(t.get("optimizer_state_bytes", 0) for t in timings),
                "trainable_parameters": max(t.get("trainable_parameters", 0) for t in timings)}

    base = speed(results["full_ft"]) if "full_ft" in results else None
    condensed = {}
    for method, result in results.items():
        own = speed(result)
        if base and own["seconds_per_step"] is not None:
            own["step_time_ratio_vs_full_ft"] = own["seconds_per_step"] / base["seconds_per_step"]
            own["token_time_ratio_vs_full_ft"] = own["seconds_per_token"] / base["seconds_per_token"]
        condensed[method] = {key: result[key] for key in ("tasks", "initial", "matrix", "by_kind", "summary", "timings")} | {
            "speed": own, "training_args": {k: result["config"]["training_args"][k] for k in
                                            ("learning_rate", "num_train_epochs", "per_device_train_batch_size")},
            "method_args": result["config"]["method_args"],
        }
    return condensed


def joint_upper_bound(stream_dir: Path, model_name: str, training: dict[str, Any], output: Path) -> dict[str, Any]:
    """The multi-task upper bound: full fine-tuning with `training` (ContinualTrainingArguments fields) on the union of
    every task's examples at once, scored on each task's probes."""
    from retain import ContinualTrainer, ContinualTrainingArguments, load_model, load_stream
    from retain.bench.task_suite import joint

    started = time.time()
    stream = load_stream(stream_dir)
    model, tokenizer = load_model(model_name, seed=training["seed"])
    trainer = ContinualTrainer(model, ContinualTrainingArguments(output_dir=str(output), **training), processing_class=tokenizer)
    trainer.add_task(joint(stream))
    trainer.consolidate_task()
    row = trainer.evaluate_all_tasks(stream.tasks, label="joint")
    return {"tasks": stream.task_names, "em": row.em, "acc": sum(row.em) / len(row.em), "seconds": time.time() - started}


def machine() -> dict[str, Any]:
    return {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__}


def mean_sd(values: list[float | None]) -> dict[str, float | int] | None:
    """Mean, sample sd and count of the values that are not None (None when all are)."""
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    return {"mean": statistics.fmean(kept), "sd": statistics.stdev(kept) if len(kept) > 1 else 0.0, "n": len(kept)}


def write(path: Path, report: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(report, indent=2))
    print(f"Wrote {path}")


def print_table(methods: dict[str, dict[str, Any]], keys: list[str]) -> None:
    print(f"{'method':8} " + " ".join(f"{k:>10}" for k in keys) + f" {'ppl 0→T':>15} {'step×':>6}")
    for method, r in methods.items():
        s, ppl = r["summary"], r["summary"].get("general_ppl") or [None]
        cells = " ".join(f"{s.get(k):10.3f}" if s.get(k) is not None else f"{'–':>10}" for k in keys)
        ppl_text = f"{ppl[0]:.1f}→{ppl[-1]:.1f}" if ppl[0] else "–"
        print(f"{method:8} {cells} {ppl_text:>15} {r['speed'].get('step_time_ratio_vs_full_ft', float('nan')):6.2f}")


def strip(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """`argv` without the given options and their values (to rerun a script with some options replaced)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not any(arg.startswith(f"{o}=") for o in options):
            kept.append(arg)
    return kept
