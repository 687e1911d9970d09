"""ARIA and its ablations against full_ft, EWC and replay on the sequential task suite, over several seeds.

Each seed generates its own task suite and trains every method on it with that seed, in one run.
Writes benchmarks/results/aria.json: per method, ACC and BWT for each seed with mean and spread,
step time against full_ft (measured back to back on the same batches before the quality runs, and
from the runs themselves), parameter overhead, gate statistics and adapter routing accuracy.

    python benchmarks/aria.py                       # 3 seeds, the embedded model
    python benchmarks/aria.py --seeds 0,1,2,3,4 --epochs 5
    python benchmarks/aria.py --methods full_ft,aria,aria_isolated,aria_isolated_r16 --speed-rounds 0 --output benchmarks/results/aria_isolated.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from common import ROOT, as_flags, chosen_methods, compare, condense, machine, retain, task_training, write

from retain import ContinualTrainer, ContinualTrainingArguments, build_method, load_model, load_stream

# Each ablation turns one mechanism off; everything else stays at ARIA's defaults.
VARIANTS = {
    "aria": [],
    "aria_no_spc": ["spc_lambda=0"],
    "aria_no_adapters": ["adapter_dim=0"],
    "aria_no_gate": ["gate=false"],
    "aria_no_conflict": ["conflict_isolation=0"],  # never isolates on its own
    # Not ablations: later tasks train only their own adapter, with the full-copy or a rank-16 fast pathway.
    "aria_isolated": ["shared_tasks=1"],
    "aria_isolated_r16": ["shared_tasks=1", "fast_rank=16"],
}
BASELINES = ["full_ft", "ewc", "replay"]


def spread(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "values": values}


def step_times(model_name: str, stream_dir: Path, training: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Seconds per optimizer step of full_ft and aria on the same task, alternating so load drifts hit both."""
    task = load_stream(stream_dir).tasks[0]
    seconds: dict[str, list[float]] = {"full_ft": [], "aria": []}
    parameters: dict[str, dict[str, int]] = {}
    for _ in range(rounds):
        for name in seconds:
            model, tokenizer = load_model(model_name, seed=training["seed"])
            base = sum(p.numel() for p in model.parameters())
            args = ContinualTrainingArguments(output_dir=str(ROOT / "runs" / "bench-aria" / "speed"),
                                              **(training | {"num_train_epochs": 1}))
            trainer = ContinualTrainer(model, args, method=build_method(name), processing_class=tokenizer)
            trainer.add_task(task)
            seconds[name].append(trainer.last_timing["seconds_per_step"])
            total = sum(p.numel() for p in trainer.model.parameters())
            parameters[name] = {"total": total, "added": total - base,
                                "trainable": int(trainer.last_timing["trainable_parameters"])}
    best = {name: min(values) for name, values in seconds.items()}
    return {"seconds_per_step": seconds, "best": best, "ratio_vs_full_ft": best["aria"] / best["full_ft"],
            "parameters": parameters, "parameter_overhead": parameters["aria"]["added"] / (parameters["full_ft"]["total"] or 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-examples", type=int, default=24)
    parser.add_argument("--probes", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--speed-rounds", type=int, default=2, help="back-to-back step timings (0: none)")
    parser.add_argument("--methods", default=",".join([*BASELINES, *VARIANTS]), help="a subset of the baselines and variants")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-aria")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "aria.json")
    args = parser.parse_args()
    chosen = chosen_methods(parser, args.methods, [*BASELINES, *VARIANTS])
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()

    def training(seed: int) -> dict[str, Any]:
        return task_training(seed, args.learning_rate, args.epochs)

    streams = {}
    for seed in seeds:
        streams[seed] = args.runs / f"seed-{seed}" / "stream"
        if retain(["generate", "task-suite", "--seed", str(seed), "--train-examples", str(args.train_examples),
                   "--probes", str(args.probes), "--output", str(streams[seed])]):
            raise SystemExit("could not generate the task suite")
    speed = step_times(args.model, streams[seeds[0]], training(seeds[0]), args.speed_rounds) if args.speed_rounds else None
    if speed:
        print(f"step time aria / full_ft: {speed['ratio_vs_full_ft']:.2f}", flush=True)

    methods = [m for m in BASELINES if m in chosen] + [f"{name}=aria" for name in VARIANTS if name in chosen]
    variant_args = [f"{name}.{arg}" for name, extra in VARIANTS.items() if name in chosen for arg in extra]
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        compare(streams[seed], args.runs / f"seed-{seed}", methods, [*as_flags(training(seed)), "--model", args.model, "--overwrite"],
                variant_args)
        per_seed[seed] = condense(args.runs / f"seed-{seed}")

    names = list(per_seed[seeds[0]])
    summary = {}
    for name in names:
        runs = [per_seed[seed][name] for seed in seeds]
        timings = [t for run in runs for t in run["timings"]]
        summary[name] = {
            "acc": spread([run["summary"]["acc"] for run in runs]),
            "bwt": spread([run["summary"]["bwt"] for run in runs]),
            "forgetting": spread([run["summary"]["forgetting"] for run in runs]),
            "diagonal": spread([statistics.fmean(row[i] for i, row in enumerate(run["matrix"]["em"])) for run in runs]),
            "step_time_ratio_vs_full_ft": spread([run["speed"]["step_time_ratio_vs_full_ft"] for run in runs]),
            "routing_accuracy": [run["summary"].get("routing_accuracy") for run in runs],
            "gate_decided": statistics.fmean(t["gate_decided"] for t in timings) if "gate_decided" in timings[0] else None,
            "gate_mean": statistics.fmean(t["gate_mean"] for t in timings) if "gate_mean" in timings[0] else None,
            "trainable_parameters": runs[0]["speed"]["trainable_parameters"],
            "optimizer_state_bytes": runs[0]["speed"]["optimizer_state_bytes"],
        }
    write(args.output, {
        "benchmark": "aria", "model": args.model, "seeds": seeds, "epochs": args.epochs,
        "train_examples": args.train_examples, "probes": args.probes, "learning_rate": args.learning_rate,
        "variants": VARIANTS, "machine": machine(), "wall_seconds": time.time() - started,
        "speed": speed, "summary": summary, "per_seed": {str(seed): per_seed[seed] for seed in seeds},
    })
    print(f"{'method':18} {'ACC':>14} {'BWT':>15} {'step×':>6} routing")
    for name, row in summary.items():
        acc, bwt = row["acc"], row["bwt"]
        routing = [round(r, 2) if r is not None else None for r in row["routing_accuracy"]]
        print(f"{name:18} {acc['mean']:6.3f} ± {acc['std']:.3f} {bwt['mean']:7.3f} ± {bwt['std']:.3f} "
              f"{row['step_time_ratio_vs_full_ft']['mean']:6.2f} {routing}")


if __name__ == "__main__":
    main()
