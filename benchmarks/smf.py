"""Sparse memory finetuning against full_ft and lora on the temporal-facts stream, in one run.

Writes benchmarks/results/smf_<preset>.json with plasticity, stability, historical accuracy, the
general-text perplexity change, step time and optimizer-state bytes of each method, and the
issue's targets as ratios to full_ft: plasticity within 0.05, perplexity rise ≤ 1/5 of full_ft's,
step time ≤ 0.8×, optimizer state ≤ 5%.

    python benchmarks/smf.py
    python benchmarks/smf.py --preset full --epochs 3 --batch-size 32      # on a GPU
    python benchmarks/smf.py --methods full_ft,smf,smf_k8=smf --method-arg smf_k8.k=8   # a variant beside
"""

from __future__ import annotations

from common import (compare_on_temporal_facts, condense, machine, preset_name, print_table, result_path,
                    temporal_parser, write)


def main() -> None:
    args = temporal_parser(__doc__, "smf", "full_ft,lora,smf").parse_args()
    runs, seconds = compare_on_temporal_facts(args)
    methods = condense(runs)
    # The targets, as ratios to full_ft measured in the same run, for every other method or variant.
    targets = {}
    if "full_ft" in methods:
        base = methods["full_ft"]
        for name, method in methods.items():
            if name != "full_ft":
                targets[name] = {
                    "plasticity_gap": (method["summary"]["plasticity"] or 0) - (base["summary"]["plasticity"] or 0),
                    "ppl_rise_ratio": method["summary"]["general_ppl_change"] / base["summary"]["general_ppl_change"],
                    "step_time_ratio": method["speed"]["step_time_ratio_vs_full_ft"],
                    "optimizer_state_ratio": method["speed"]["optimizer_state_bytes"] / base["speed"]["optimizer_state_bytes"],
                }
    write(result_path(args),
          {"benchmark": "smf", "preset": preset_name(args), "model": args.model, "seed": args.seed, "epochs": args.epochs,
           "machine": machine(), "wall_seconds": seconds, "targets_vs_full_ft": targets, "methods": methods})
    print_table(methods, ["plasticity", "stability", "historical"])
    for name, ratios in targets.items():
        print(f"{name} vs full_ft:", {k: round(v, 4) for k, v in ratios.items()})


if __name__ == "__main__":
    main()
