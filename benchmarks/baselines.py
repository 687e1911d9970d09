"""full_ft, lora, ewc and replay on the demo stream with the embedded model, side by side in one run.

Writes benchmarks/results/baselines.json: each method's result matrices and summary, and its speed
as a ratio to full_ft's measured in the same run (this machine is shared and noisy: compare ratios).

    python benchmarks/baselines.py
    python benchmarks/baselines.py --model tiny --epochs 1      # a quick check of the script itself
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ROOT, compare, condense, machine, print_table, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--stream", type=Path, default=ROOT / "examples" / "demo-stream")
    parser.add_argument("--methods", default="full_ft,lora,ewc,replay")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-baselines")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "baselines.json")
    args = parser.parse_args()
    options = ["--model", args.model, "--seed", str(args.seed), "--num_train_epochs", str(args.epochs),
               "--learning_rate", "2e-4", "--per_device_train_batch_size", "6", "--per_device_eval_batch_size", "16",
               "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--disable_tqdm", "true", "--overwrite"]
    seconds = compare(args.stream, args.runs, args.methods.split(","), options)
    methods = condense(args.runs)
    write(args.output, {"benchmark": "baselines", "model": args.model, "stream": args.stream.name, "seed": args.seed,
                        "epochs": args.epochs, "machine": machine(), "wall_seconds": seconds, "methods": methods})
    print_table(methods, ["acc", "bwt", "forgetting"])


if __name__ == "__main__":
    main()
