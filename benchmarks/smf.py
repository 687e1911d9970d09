"""Sparse memory finetuning against full_ft and lora on the temporal-facts stream, in one run.

Writes benchmarks/results/smf_<preset>.json with plasticity, stability, historical accuracy, the
general-text perplexity change, step time and optimizer-state bytes of each method, and the
issue's targets as ratios to full_ft: plasticity within 0.05, perplexity rise ≤ 1/5 of full_ft's,
step time ≤ 0.8×, optimizer state ≤ 5%.

    python benchmarks/smf.py
    python benchmarks/smf.py --preset full --epochs 3 --batch-size 32      # on a GPU
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ROOT, compare, condense, machine, print_table, retain, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["small", "full"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="full_ft,lora,smf")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=None, help="default: runs/bench-smf-<preset>")
    parser.add_argument("--output", type=Path, default=None, help="default: benchmarks/results/smf_<preset>.json")
    args = parser.parse_args()
    runs = args.runs or ROOT / "runs" / f"bench-smf-{args.preset}"
    stream = runs / "stream"
    if retain(["generate", "temporal-facts", "--preset", args.preset, "--seed", str(args.seed), "--output", str(stream)]):
        raise SystemExit("could not generate the stream")
    options = ["--model", args.model, "--seed", str(args.seed), "--num_train_epochs", str(args.epochs),
               "--learning_rate", "2e-4", "--per_device_train_batch_size", str(args.batch_size),
               "--per_device_eval_batch_size", "32", "--lr_scheduler_type", "constant", "--warmup_steps", "0",
               "--disable_tqdm", "true", "--overwrite"]
    seconds = compare(stream, runs, args.methods.split(","), options)
    methods = condense(runs)
    targets = {}
    if {"full_ft", "smf"} <= set(methods):
        base, smf = methods["full_ft"], methods["smf"]
        targets = {
            "plasticity_gap": (smf["summary"]["plasticity"] or 0) - (base["summary"]["plasticity"] or 0),
            "ppl_rise_ratio": smf["summary"]["general_ppl_change"] / base["summary"]["general_ppl_change"],
            "step_time_ratio": smf["speed"]["step_time_ratio_vs_full_ft"],
            "optimizer_state_ratio": smf["speed"]["optimizer_state_bytes"] / base["speed"]["optimizer_state_bytes"],
        }
    write(args.output or ROOT / "benchmarks" / "results" / f"smf_{args.preset}.json",
          {"benchmark": "smf", "preset": args.preset, "model": args.model, "seed": args.seed, "epochs": args.epochs,
           "machine": machine(), "wall_seconds": seconds, "targets_vs_full_ft": targets, "methods": methods})
    print_table(methods, ["plasticity", "stability", "historical"])
    print("targets vs full_ft:", {k: round(v, 4) for k, v in targets.items()})



if __name__ == "__main__":
    main()
