"""Trade-off curves: each method at several learning rates on one stream, learned against kept.

Runs one `retain compare` on the temporal-facts stream (`small` preset by default) with full_ft,
replay, smf and casm at three learning rates each (variants `full_ft_lr1=full_ft` … `_lr3`, low to high), all on
the same examples, and writes benchmarks/results/tradeoff_<preset>.json (per run: method, learning
rate, plasticity, stability, historical, general perplexity change, overall and per probe form) and
benchmarks/results/tradeoff_<preset>.png: plasticity against stability, historical and perplexity
change, one curve per method, as the SMF paper compares methods at matched learning. `retain report`
draws the same figure for any comparison with several runs per method.

    python benchmarks/tradeoff.py
    python benchmarks/tradeoff.py --methods full_ft,casm --model tiny --epochs 1     # check the script
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, compare_on_temporal_facts, machine, preset_name, strip, temporal_parser, write

from retain.report import load_results, tradeoff_figure

# Learning rates per method: full_ft and replay through --learning_rate (AdamW), smf and casm through their own
# SGD step on memory values (`lr`), around each one's default.
SWEEP = {"full_ft": ["5e-5", "2e-4", "8e-4"], "replay": ["5e-5", "2e-4", "8e-4"], "smf": ["2", "5", "10"],
         "casm": ["2", "5", "10"]}
OWN_OPTIMIZER = {"smf", "casm"}


def main() -> None:
    parser = temporal_parser(__doc__, "tradeoff", ",".join(SWEEP))
    parser.add_argument("--jobs", type=int, default=1, help="methods swept at once, each in its own process")
    parser.add_argument("--keep-runs", action="store_true")
    args = parser.parse_args()
    methods = args.methods.split(",")
    root = args.runs or ROOT / "runs" / f"bench-tradeoff-{preset_name(args)}"
    output = args.output or ROOT / "benchmarks" / "results" / f"tradeoff_{preset_name(args)}.json"
    started = time.time()
    if args.jobs > 1 and len(methods) > 1:  # one process per method, then one figure over all of them
        argv = strip(sys.argv[1:], ("--methods", "--jobs", "--runs", "--output"))
        children = [subprocess.Popen([sys.executable, __file__, *argv, "--methods", m, "--keep-runs", "--runs", str(root / m),
                                      "--output", str(root / f"{m}.json")]) for m in methods]
        if any(child.wait() for child in children):
            raise SystemExit("a method's sweep failed")
        runs = {m: root / m for m in methods}
    else:
        runs = {m: root for m in methods}
        sweep(args, methods, root)
    results = {name: result for directory in dict.fromkeys(runs.values()) for name, result in load_results(directory).items()}
    groups = {m: [f"{m}_lr{step}" for step in range(1, len(SWEEP[m]) + 1)] for m in methods}
    points = [{"run": name, "method": m, "lr": SWEEP[m][step], **{k: results[name]["summary"].get(k) for k in
               ("plasticity", "stability", "historical", "general_ppl_change", "by_form")},
               "train_seconds": sum(t["train_seconds"] for t in results[name]["timings"]),
               "train_tokens": sum(t["train_tokens"] for t in results[name]["timings"])}
              for m in methods for step, name in enumerate(groups[m])]
    write(output, {"benchmark": "tradeoff", "preset": preset_name(args), "model": args.model, "seed": args.seed,
                   "epochs": args.epochs, "machine": machine(), "wall_seconds": time.time() - started, "points": points})
    tradeoff_figure(results, groups, output.with_suffix(".png"))
    for p in points:
        print(f"{p['run']:12} lr {p['lr']:>5}  plasticity {p['plasticity']:.3f} stability {p['stability']:.3f} "
              f"historical {p['historical']:.3f} ppl {100 * p['general_ppl_change']:+.1f}%")
    if not args.keep_runs:
        shutil.rmtree(root, ignore_errors=True)


def sweep(args: argparse.Namespace, methods: list[str], runs: Path) -> None:
    """One comparison of every method at each of its learning rates (variants NAME_lrK=METHOD)."""
    variants, method_args, method_lr = [], list(args.method_arg), []
    for method in methods:
        for step, lr in enumerate(SWEEP[method], start=1):
            name = f"{method}_lr{step}"  # low to high; option keys may not hold '-' or '.'
            variants.append(f"{name}={method}")
            if method in OWN_OPTIMIZER:
                method_args.append(f"{name}.lr={lr}")
            else:
                method_lr.append(f"{name}={lr}")
    sweep_args = argparse.Namespace(**{**vars(args), "methods": ",".join(variants), "method_arg": method_args, "runs": runs})
    compare_on_temporal_facts(sweep_args, method_lr=method_lr)


if __name__ == "__main__":
    main()
