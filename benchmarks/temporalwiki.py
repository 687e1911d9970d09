"""Real Wikipedia changes: every method on months of TemporalWiki, several seeds, the same examples for each.

For each seed, `retain import temporalwiki` takes its own seeded sample of --per-period changed facts a month
(the passages that state them, and as many unchanged facts as probes of stability), and `retain compare` runs
every method on that stream with the same training examples (the passages plus the trainer's fact questions)
and the same held-out probe wordings. Writes benchmarks/results/temporalwiki_<per-period>pp_<epochs>ep.json
with what the importer kept and dropped, each seed's condensed results and, per method, the mean ± sd over
seeds of plasticity (the month's changed facts), stability (the unchanged facts probed), each probe form's
scores, the general-text perplexity change and the total training time and tokens. Run directories are
deleted once the JSON is written (--keep-runs keeps them).

The data is the user's (the CASM repository's augmented/TWiki_Diffsets and twiki_probes): its path is passed,
nothing is copied.

    python benchmarks/temporalwiki.py --diffsets DATA/augmented/TWiki_Diffsets --probes DATA/twiki_probes
    python benchmarks/temporalwiki.py ... --per-period 500 --epochs 3 --batch-size 32 --jobs 6     # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from common import ROOT, compare, condense, machine, training_options, write
from temporal import aggregate, print_summary

from retain.fact_questions import DEFAULT_WORDINGS, WORDINGS
from retain.importers import write_imported
from retain.importers.temporalwiki import import_temporalwiki


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffsets", type=Path, required=True, help="the TWiki_Diffsets folder")
    parser.add_argument("--probes", type=Path, required=True, help="the twiki_probes folder")
    parser.add_argument("--per-period", type=int, default=8, help="changed facts sampled per month (the importer's)")
    parser.add_argument("--methods", default="full_ft,replay,smf,casm,rag")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; each seed samples its own facts and trains")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fact-questions", type=int, default=DEFAULT_WORDINGS, choices=range(len(WORDINGS) + 1))
    parser.add_argument("--runs", type=Path, default=None, help="default: runs/bench-temporalwiki")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--keep-runs", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    root = args.runs or ROOT / "runs" / "bench-temporalwiki"
    started = time.time()
    per_seed, imported = {}, {}
    for seed in seeds:
        runs, stream = root / f"seed{seed}", root / f"seed{seed}" / "stream"
        imported[str(seed)] = import_stream(args, seed, stream)
        compare(stream, runs, args.methods.split(","), training_options(argparse.Namespace(**{**vars(args), "seed": seed})))
        per_seed[str(seed)] = condense(runs)
    report = {"benchmark": "temporalwiki", "per_period": args.per_period, "model": args.model, "seeds": seeds,
              "epochs": args.epochs, "batch_size": args.batch_size, "fact_questions": args.fact_questions,
              "machine": machine(), "wall_seconds": time.time() - started,
              "same_data": "every method trains on the same passages and fact questions; no probe wording is trained on",
              "imported": imported, "mean_sd": aggregate(per_seed), "per_seed": per_seed}
    name = f"temporalwiki_{args.per_period}pp_{args.epochs}ep.json"
    write(args.output or ROOT / "benchmarks" / "results" / name, report)
    print_summary(report["mean_sd"])
    if not args.keep_runs:
        shutil.rmtree(root, ignore_errors=True)


def import_stream(args: argparse.Namespace, seed: int, stream: Path) -> dict[str, Any]:
    """Import the seed's sample; return the importer's account of it: per month what it kept, and every row it
    dropped with the reason."""
    shutil.rmtree(stream, ignore_errors=True)
    imported, report = import_temporalwiki(args.diffsets, args.probes, per_period=args.per_period, seed=seed)
    write_imported(imported, stream)
    print(report.text())
    return dataclasses.asdict(report)

if __name__ == "__main__":
    main()
