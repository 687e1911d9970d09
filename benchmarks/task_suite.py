"""The sequential task suite: methods learn four interfering instruction tasks in turn, against the
joint multi-task upper bound (one model trained on all four tasks' examples at once), in one run.

Writes benchmarks/results/task_suite.json with each method's result matrix and summary and the
joint model's score per task.

    python benchmarks/task_suite.py                         # full_ft and the joint bound
    python benchmarks/task_suite.py --methods full_ft,ewc,replay,lora
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ROOT, as_flags, compare, condense, joint_upper_bound, machine, print_table, retain, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="full_ft")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-task-suite")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "task_suite.json")
    args = parser.parse_args()
    stream_dir = args.runs / "stream"
    if retain(["generate", "task-suite", "--seed", str(args.seed), "--output", str(stream_dir)]):
        raise SystemExit("could not generate the task suite")
    training = dict(seed=args.seed, num_train_epochs=args.epochs, learning_rate=1e-4, per_device_train_batch_size=8,
                    per_device_eval_batch_size=32, lr_scheduler_type="constant", warmup_steps=0, disable_tqdm=True)
    seconds = compare(stream_dir, args.runs, args.methods.split(","), [*as_flags(training), "--model", args.model, "--overwrite"])
    methods = condense(args.runs)

    upper = joint_upper_bound(stream_dir, args.model, training, args.runs / "joint")

    write(args.output, {"benchmark": "task_suite", "model": args.model, "seed": args.seed, "epochs": args.epochs,
                        "machine": machine(), "wall_seconds": seconds, "joint_upper_bound": upper, "methods": methods})
    print_table(methods, ["acc", "bwt", "forgetting"])
    print(f"joint  ACC {upper['acc']:.3f}  per task {[round(v, 3) for v in upper['em']]}")


if __name__ == "__main__":
    main()
