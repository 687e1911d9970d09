"""Sparse memory finetuning against full_ft and lora on the temporal-facts stream, in one run.

Writes benchmarks/results/smf_<preset>.json with plasticity, stability, historical accuracy, the
general-text perplexity change, step time and optimizer-state bytes of each method, and the
issue's targets as ratios to full_ft: plasticity within 0.05, perplexity rise ≤ 1/5 of full_ft's,
step time ≤ 0.8×, optimizer state ≤ 5%.

    python benchmarks/smf.py
    python benchmarks/smf.py --preset full --epochs 3 --batch-size 32      # on a GPU
"""

from __future__ import annotations

from common import compare_on_temporal_facts, condense, machine, print_table, result_path, temporal_parser, write


def main() -> None:
    args = temporal_parser(__doc__, "smf", "full_ft,lora,smf").parse_args()
    runs, seconds = compare_on_temporal_facts(args)
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
    write(result_path(args),
          {"benchmark": "smf", "preset": args.preset, "model": args.model, "seed": args.seed, "epochs": args.epochs,
           "machine": machine(), "wall_seconds": seconds, "targets_vs_full_ft": targets, "methods": methods})
    print_table(methods, ["plasticity", "stability", "historical"])
    print("targets vs full_ft:", {k: round(v, 4) for k, v in targets.items()})


if __name__ == "__main__":
    main()
