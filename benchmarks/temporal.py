"""The temporal-facts stream: every baseline on the same facts, model and seed, in one run.

Generates the stream (`small` preset by default; `--preset full` for machines with time or a GPU),
runs `retain compare`, and writes benchmarks/results/temporal_<preset>.json with plasticity,
stability, historical accuracy and general-text perplexity change per method, and training speed
as a ratio to full_ft's from the same run.

    python benchmarks/temporal.py
    python benchmarks/temporal.py --preset full --epochs 3 --batch-size 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ROOT, compare, condense, machine, print_table, retain, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["small", "full"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="full_ft,lora,ewc,replay")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=None, help="default: runs/bench-temporal-<preset>")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/temporal_<preset>.json")
    args = parser.parse_args()
    runs = args.runs or ROOT / "runs" / f"bench-temporal-{args.preset}"
    stream = runs / "stream"
    if retain(["generate", "temporal-facts", "--preset", args.preset, "--seed", str(args.seed), "--output", str(stream)]):
        raise SystemExit("could not generate the stream")
    options = ["--model", args.model, "--seed", str(args.seed), "--num_train_epochs", str(args.epochs),
               "--learning_rate", "2e-4", "--per_device_train_batch_size", str(args.batch_size),
               "--per_device_eval_batch_size", "32", "--lr_scheduler_type", "constant", "--warmup_steps", "0",
               "--disable_tqdm", "true", "--overwrite"]
    seconds = compare(stream, runs, args.methods.split(","), options)
    methods = condense(runs)
    write(args.output or ROOT / "benchmarks" / "results" / f"temporal_{args.preset}.json",
          {"benchmark": "temporal", "preset": args.preset, "model": args.model, "seed": args.seed, "epochs": args.epochs,
           "machine": machine(), "wall_seconds": seconds, "report": str(runs / "report.html"), "methods": methods})
    print_table(methods, ["plasticity", "stability", "historical", "acc"])


if __name__ == "__main__":
    main()
