"""ARIA on tasks whose rules contradict each other on the same inputs, against full_ft and the joint upper bound.

Each seed generates its own conflicting-rules stream (`retain generate conflicting-rules`) and trains, in one
`retain compare`, full_ft, ARIA with its defaults (isolating from the first task that contradicts what it
learned), ARIA that never isolates on its own (`conflict_isolation=0`), and ARIA isolated after the first
task (`shared_tasks=1`: later tasks train only their own adapter), plus any --variants (--methods: a subset);
then one full fine-tune on every task's examples at once (the joint upper bound). Writes per seed and as mean ± sd: ACC, BWT, each task's accuracy
when learned and at the end, routing accuracy, training seconds, step time and optimizer state against full_ft,
and each method's parameters with every task's adapter.

    python benchmarks/conflicting.py                      # rule named in the prompt, seeds 0,1,2
    python benchmarks/conflicting.py --no-named           # only the items' content tells the task
    python benchmarks/conflicting.py --resume --variants aria_r16:shared_tasks=1,fast_rank=16   # one more variant
    python benchmarks/conflicting.py --joint-only --joint-epochs 9   # only the joint bound, trained longer
    python benchmarks/conflicting.py --methods full_ft,aria --output benchmarks/results/conflicting_named_default.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from common import (ROOT, as_flags, chosen_methods, compare, condense, joint_upper_bound, machine, mean_sd, retain,
                    task_training, write)

VARIANTS = {"aria": [], "aria_no_conflict": ["conflict_isolation=0"], "aria_isolated": ["shared_tasks=1"]}


def parameters(model_name: str, variants: dict[str, list[str]], tasks: int) -> dict[str, dict[str, int]]:
    """Each method's parameter count once it holds every task's adapter, and what it adds to the pretrained model."""
    from retain import build_method, load_model
    from retain.methods.aria import ARIA

    counts = {}
    for name, extra in {"full_ft": None, **variants}.items():
        model, _ = load_model(model_name)
        base = sum(p.numel() for p in model.parameters())
        if extra is not None:
            method = build_method("aria", dict(arg.split("=", 1) for arg in extra if arg))
            assert isinstance(method, ARIA)
            method.prepare(model)
            for block in method.adapter_blocks:
                for _ in range(tasks):
                    block.add_adapter()
        total = sum(p.numel() for p in model.parameters())
        counts[name] = {"total": total, "added": total - base}
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--named", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--train-examples", type=int, default=48)
    parser.add_argument("--probes", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--joint-epochs", type=int, default=None, help="epochs of the joint bound (default: --epochs)")
    parser.add_argument("--joint-only", action="store_true", help="train and score only the joint bound")
    parser.add_argument("--variants", nargs="*", default=[], metavar="NAME:KEY=VALUE,...",
                        help="more ARIA variants, e.g. aria_r16:fast_rank=16")
    parser.add_argument("--methods", default=None, help="a subset of full_ft and the variants (default: all)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the methods and joint bounds already finished in --runs (run with the same settings)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each run's model checkpoints (several GB a seed); results and predictions are kept")
    parser.add_argument("--runs", type=Path, default=None, help="default: runs/bench-conflicting-<named|unnamed>")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/conflicting_<named|unnamed>[_joint<E>].json")
    args = parser.parse_args()
    kind = "named" if args.named else "unnamed"
    runs = args.runs or ROOT / "runs" / f"bench-conflicting-{kind}"
    joint_epochs = args.joint_epochs or args.epochs
    output = args.output or ROOT / "benchmarks" / "results" / f"conflicting_{kind}{f'_joint{joint_epochs}' if args.joint_only else ''}.json"
    variants = VARIANTS | {name: extra.split(",") for name, extra in (v.split(":", 1) for v in args.variants)}
    if args.methods:
        chosen = chosen_methods(parser, args.methods, ["full_ft", *variants])
        variants = {name: extra for name, extra in variants.items() if name in chosen}
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()

    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        stream = runs / f"seed-{seed}" / "stream"
        if retain(["generate", "conflicting-rules", "--seed", str(seed), "--tasks", str(args.tasks), "--train-examples",
                   str(args.train_examples), "--probes", str(args.probes), "--named" if args.named else "--no-named",
                   "--output", str(stream)]):
            raise SystemExit("could not generate the stream")
        if args.joint_only:
            per_seed[seed] = {"joint": joint_upper_bound(stream, args.model, task_training(seed, args.learning_rate, joint_epochs),
                                                         runs / f"seed-{seed}" / "joint")}
            shutil.rmtree(runs / f"seed-{seed}" / "joint", ignore_errors=True)
            print(f"seed {seed}: joint ACC {per_seed[seed]['joint']['acc']:.3f}", flush=True)
            continue
        training = task_training(seed, args.learning_rate, args.epochs)
        compare(stream, runs / f"seed-{seed}" / "compare", ["full_ft", *(f"{name}=aria" for name in variants)],
                [*as_flags(training), "--model", args.model, *([] if args.resume else ["--overwrite"])],
                [f"{name}.{arg}" for name, extra in variants.items() for arg in extra if arg])
        joint = runs / f"seed-{seed}" / "joint.json"
        if not (args.resume and joint.is_file()):
            write(joint, joint_upper_bound(stream, args.model, task_training(seed, args.learning_rate, joint_epochs),
                                           runs / f"seed-{seed}" / "joint"))
        done = condense(runs / f"seed-{seed}" / "compare")  # a --resume's --runs may hold methods not chosen this time
        per_seed[seed] = {"methods": {name: done[name] for name in ["full_ft", *variants]}, "joint": json.loads(joint.read_text())}
        if not args.keep_checkpoints:  # the scores are in result.json; a --resume keeps a complete run without its models
            for name in per_seed[seed]["methods"]:
                shutil.rmtree(runs / f"seed-{seed}" / "compare" / name / "checkpoints", ignore_errors=True)
            shutil.rmtree(runs / f"seed-{seed}" / "joint", ignore_errors=True)
        print(f"seed {seed}: " + ", ".join(f"{name} ACC {m['summary']['acc']:.3f} BWT {m['summary']['bwt']:.3f}"
                                           for name, m in per_seed[seed]["methods"].items())
              + f", joint ACC {per_seed[seed]['joint']['acc']:.3f}", flush=True)

    settings = {"benchmark": "conflicting_rules", "named": args.named, "model": args.model, "seeds": seeds, "tasks": args.tasks,
                "train_examples": args.train_examples, "probes": args.probes, "epochs": args.epochs,
                "joint_epochs": joint_epochs, "learning_rate": args.learning_rate, "machine": machine()}
    joint_summary = {"acc": mean_sd([per_seed[seed]["joint"]["acc"] for seed in seeds]),
                     "train_seconds": mean_sd([per_seed[seed]["joint"]["seconds"] for seed in seeds])}
    if args.joint_only:
        write(output, settings | {"wall_seconds": time.time() - started, "summary": {"joint": joint_summary},
                                  "per_seed": {str(seed): per_seed[seed] for seed in seeds}})
        print(f"joint ACC {joint_summary['acc']['mean']:.3f} ± {joint_summary['acc']['sd']:.3f}")
        return
    names = list(per_seed[seeds[0]]["methods"])
    summary: dict[str, Any] = {}
    for name in names:
        rows = [per_seed[seed]["methods"][name] for seed in seeds]
        speed = [row["speed"] for row in rows]
        summary[name] = {
            "acc": mean_sd([row["summary"]["acc"] for row in rows]),
            "bwt": mean_sd([row["summary"]["bwt"] for row in rows]),
            "bwt_per_seed": [row["summary"]["bwt"] for row in rows],
            "acc_minus_joint": mean_sd([row["summary"]["acc"] - per_seed[seed]["joint"]["acc"] for row, seed in zip(rows, seeds)]),
            "learned": mean_sd([sum(row["matrix"]["em"][i][i] for i in range(len(row["tasks"]))) / len(row["tasks"]) for row in rows]),
            "routing_accuracy": [row["summary"].get("routing_accuracy") for row in rows],
            "train_seconds": mean_sd([s["train_seconds"] for s in speed]),
            "step_time_ratio_vs_full_ft": mean_sd([s.get("step_time_ratio_vs_full_ft") for s in speed]),
            "trainable_parameters": [s["trainable_parameters"] for s in speed],
            "optimizer_state_bytes": [s["optimizer_state_bytes"] for s in speed],
        }
    summary["joint"] = joint_summary
    write(output, settings | {
        "variants": variants, "wall_seconds": time.time() - started, "summary": summary,
        "parameters": parameters(args.model, variants, args.tasks),
        "per_seed": {str(seed): per_seed[seed] for seed in seeds},
    })
    print(f"{'method':16} {'ACC':>15} {'BWT':>16} {'step×':>6} routing")
    for name in names:
        row = summary[name]
        step = row["step_time_ratio_vs_full_ft"]
        print(f"{name:16} {row['acc']['mean']:6.3f} ± {row['acc']['sd']:.3f} {row['bwt']['mean']:7.3f} ± {row['bwt']['sd']:.3f} "
              f"{step['mean'] if step else float('nan'):6.2f} {row['routing_accuracy']}")
    print(f"{'joint':16} {summary['joint']['acc']['mean']:6.3f} ± {summary['joint']['acc']['sd']:.3f}")


if __name__ == "__main__":
    main()
