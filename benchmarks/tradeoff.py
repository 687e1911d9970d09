"""Trade-off curves: each method at several learning rates on one stream, learned against kept, over seeds.

For each seed (its own generated stream, `small` preset by default), runs one `retain compare` with
full_ft, replay, smf and casm at three learning rates each (variants `full_ft_lr1=full_ft` … `_lr3`,
low to high), all on the same examples, and writes benchmarks/results/tradeoff_<preset>.json (per
method and learning rate: the mean ± sd over seeds of plasticity, stability, historical and general
perplexity change, overall and per probe form, total training time and tokens, and each seed's
values) and benchmarks/results/tradeoff_<preset>.png: plasticity against stability, historical and
perplexity change, one curve per method with error bars over seeds, as the SMF paper compares methods
at matched learning. `retain report` draws the same figure for any comparison with several runs per method.

    python benchmarks/tradeoff.py                                   # seeds 0,1,2
    python benchmarks/tradeoff.py --jobs 4                          # one process per method and seed, 4 at once
    python benchmarks/tradeoff.py --methods full_ft,casm --model tiny --epochs 1 --seeds 0     # check the script
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, compare_on_temporal_facts, machine, mean_sd, preset_name, strip, temporal_parser, write

from retain.report import TRADEOFF_KEPT, load_results, tradeoff_figure

# Learning rates per method: full_ft and replay through --learning_rate (AdamW), smf and casm through their own
# SGD step on memory values (`lr`), around each one's default.
SWEEP = {"full_ft": ["5e-5", "2e-4", "8e-4"], "replay": ["5e-5", "2e-4", "8e-4"], "smf": ["2", "5", "10"],
         "casm": ["2", "5", "10"]}
OWN_OPTIMIZER = {"smf", "casm"}
KEYS = ("plasticity", *TRADEOFF_KEPT)


def main() -> None:
    parser = temporal_parser(__doc__, "tradeoff", ",".join(SWEEP))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, each its own generated stream")
    parser.add_argument("--jobs", type=int, default=1, help="(method, seed) sweeps run at once, each in its own process")
    parser.add_argument("--keep-runs", action="store_true")
    args = parser.parse_args()
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    root = args.runs or ROOT / "runs" / f"bench-tradeoff-{preset_name(args)}"
    output = args.output or ROOT / "benchmarks" / "results" / f"tradeoff_{preset_name(args)}.json"
    started = time.time()
    pairs = [(seed, method) for seed in seeds for method in methods]
    runs = {pair: root / f"seed{pair[0]}-{pair[1]}" for pair in pairs}
    if args.jobs > 1 and len(pairs) > 1:  # one process per (seed, method), at most --jobs at once
        argv = strip(sys.argv[1:], ("--methods", "--seeds", "--jobs", "--runs", "--output"))
        pending, running = list(pairs), []
        while pending or running:
            while pending and len(running) < args.jobs:
                seed, method = pending.pop(0)
                running.append(subprocess.Popen([sys.executable, __file__, *argv, "--seeds", str(seed), "--methods", method,
                                                 "--keep-runs", "--runs", str(runs[seed, method]),
                                                 "--output", str(runs[seed, method] / "tradeoff.json")]))
            if running[0].wait():
                raise SystemExit("a sweep failed")
            running.pop(0)
        runs = {pair: runs[pair] / f"seed{pair[0]}-{pair[1]}" for pair in pairs}
    else:
        for (seed, method), directory in runs.items():
            sweep(argparse.Namespace(**{**vars(args), "seed": seed}), method, directory)
    per_seed = {pair: load_results(directory) for pair, directory in runs.items()}
    points = [point(method, step, [per_seed[seed, method][f"{method}_lr{step}"] for seed in seeds])
              for method in methods for step in range(1, len(SWEEP[method]) + 1)]
    write(output, {"benchmark": "tradeoff", "preset": preset_name(args), "model": args.model, "seeds": seeds,
                   "epochs": args.epochs, "fact_questions": args.fact_questions, "machine": machine(),
                   "wall_seconds": time.time() - started, "points": points})
    tradeoff_figure({m: [p for p in points if p["method"] == m] for m in methods}, output.with_suffix(".png"))
    for p in points:
        print(f"{p['run']:12} lr {p['lr']:>5}  " + "  ".join(
            f"{k} {p[k]['mean']:.3f}±{p[k]['sd']:.3f}" for k in KEYS if p[k] is not None))
    if not args.keep_runs:
        shutil.rmtree(root, ignore_errors=True)


def point(method: str, step: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One learning rate of a method: mean ± sd over the seeds' `results` of each number, and each seed's."""
    summaries = [r["summary"] for r in results]
    forms = sorted({form for s in summaries for form in s.get("by_form", {})})
    totals = [{key: sum(t[key] for t in r["timings"]) for key in ("train_seconds", "train_tokens")} for r in results]
    return {"run": f"{method}_lr{step}", "method": method, "lr": SWEEP[method][step - 1],
            **{key: mean_sd([s.get(key) for s in summaries]) for key in KEYS},
            "by_form": {form: {key: mean_sd([s.get("by_form", {}).get(form, {}).get(key) for s in summaries])
                               for key in ("plasticity", "stability", "historical")} for form in forms},
            **{key: mean_sd([t[key] for t in totals]) for key in ("train_seconds", "train_tokens")},
            "per_seed": [{key: s.get(key) for key in KEYS} | t for s, t in zip(summaries, totals)]}


def sweep(args: argparse.Namespace, method: str, runs: Path) -> None:
    """One comparison of `method` at each of its learning rates (variants NAME_lrK=METHOD) on the seed's stream."""
    variants, method_args, method_lr = [], list(args.method_arg), []
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
