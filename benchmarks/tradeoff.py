"""Trade-off curves: each method at several learning rates on one stream, learned against kept.

Runs one `retain compare` on the temporal-facts stream (`small` preset by default) with full_ft,
replay, smf and casm at three learning rates each (variants such as `full_ft_lr2e-4=full_ft`), all on
the same examples, and writes benchmarks/results/tradeoff_<preset>.json (per run: method, learning
rate, plasticity, stability, historical, general perplexity change, overall and per probe form) and
benchmarks/results/tradeoff_<preset>.png: plasticity against stability, historical and perplexity
change, one curve per method, as the SMF paper compares methods at matched learning. `retain report`
draws the same figure for any comparison with several runs per method.

    python benchmarks/tradeoff.py
    python benchmarks/tradeoff.py --methods full_ft,casm --model tiny --epochs 1     # check the script
"""

from __future__ import annotations

import shutil

from common import ROOT, compare_on_temporal_facts, condense, machine, preset_name, temporal_parser, write

# Learning rates per method: full_ft and replay through --learning_rate (AdamW), smf and casm through their own
# SGD step on memory values (`lr`), around each one's default.
SWEEP = {"full_ft": ["5e-5", "2e-4", "8e-4"], "replay": ["5e-5", "2e-4", "8e-4"], "smf": ["3", "10", "30"],
         "casm": ["2", "5", "10"]}
OWN_OPTIMIZER = {"smf", "casm"}


def main() -> None:
    parser = temporal_parser(__doc__, "tradeoff", ",".join(SWEEP))
    parser.add_argument("--keep-runs", action="store_true")
    args = parser.parse_args()
    methods = args.methods.split(",")
    variants, method_args, method_lr = [], list(args.method_arg), []
    for method in methods:
        for lr in SWEEP[method]:
            name = f"{method}_lr{lr}"
            variants.append(f"{name}={method}")
            if method in OWN_OPTIMIZER:
                method_args.append(f"{name}.lr={lr}")
            else:
                method_lr.append(f"{name}={lr}")
    args.methods, args.method_arg = ",".join(variants), method_args
    runs, seconds = compare_on_temporal_facts(args, method_lr=method_lr)
    condensed = condense(runs)
    points = [{"run": name, "method": variant.split("=")[1], "lr": name.rsplit("_lr", 1)[1],
               **{k: condensed[name]["summary"].get(k) for k in ("plasticity", "stability", "historical", "general_ppl_change")},
               "by_form": condensed[name]["summary"].get("by_form")}
              for variant in variants for name in [variant.split("=")[0]]]
    results = ROOT / "benchmarks" / "results"
    write(args.output or results / f"tradeoff_{preset_name(args)}.json",
          {"benchmark": "tradeoff", "preset": preset_name(args), "model": args.model, "seed": args.seed, "epochs": args.epochs,
           "machine": machine(), "wall_seconds": seconds, "points": points})
    shutil.copy(runs / "tradeoff.png", results / f"tradeoff_{preset_name(args)}.png")
    for p in points:
        print(f"{p['run']:18} plasticity {p['plasticity']:.3f} stability {p['stability']:.3f} "
              f"historical {p['historical']:.3f} ppl {100 * p['general_ppl_change']:+.1f}%")
    if not args.keep_runs:
        shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
