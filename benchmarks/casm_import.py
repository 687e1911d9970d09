"""The CASM repository's Synthetic TemporalWiki: every method on its first --facts facts, several seeds, the same
examples for each, asked in the dev/test probe-template family.

`retain import casm --probe-templates N` makes the stream once (the data is fixed: each fact's own cloze prompt
and N templates per period, N about now in the last); for each seed `retain compare` runs every method on it with
the same training examples (the passages plus the trainer's fact questions). Writes
benchmarks/results/casm-import_<facts>facts_<N>templates_<epochs>ep.json with what the importer kept and dropped,
each seed's condensed results and, per method, the mean ± sd over seeds of plasticity, stability and historical
score overall, per template and per half (`dev/*`, `test/*`), general-text perplexity change, stored bytes per
period and the total training time and tokens. Run directories are deleted once the JSON is written.

The data is the user's: its path is passed, nothing is copied.

    python benchmarks/casm_import.py DATA/casm-repo --facts 40 --methods full_ft,casm,snapshot,rag
    python benchmarks/casm_import.py DATA/casm-repo --probe-templates 2 --methods casm     # about an hour on 2 CPU cores
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

from common import ROOT, compare, condense, machine, training_options, write
from temporal import aggregate, print_summary

from retain.fact_questions import DEFAULT_WORDINGS, WORDINGS
from retain.importers import write_imported
from retain.importers.casm import import_casm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="the CASM repository's data/ folder")
    parser.add_argument("--facts", type=int, default=40)
    parser.add_argument("--probe-templates", type=int, default=4)
    parser.add_argument("--methods", default="full_ft,casm,snapshot,rag")
    parser.add_argument("--method-arg", nargs="+", default=[], metavar="METHOD.KEY=VALUE")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; the stream is the same, the training seed not")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=32, help="probes generated at once (a CPU gains from 32)")
    parser.add_argument("--fact-questions", type=int, default=DEFAULT_WORDINGS, choices=range(len(WORDINGS) + 1))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-casm-import")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()
    stream = args.runs / "stream"
    shutil.rmtree(stream, ignore_errors=True)
    imported, account = import_casm(args.directory, facts=args.facts, templates=args.probe_templates)
    write_imported(imported, stream)
    print(account.text())
    per_seed = {}
    for seed in seeds:
        runs = args.runs / f"seed{seed}"
        options = [*training_options(argparse.Namespace(**{**vars(args), "seed": seed})),
                   "--per_device_eval_batch_size", str(args.eval_batch_size)]
        compare(stream, runs, args.methods.split(","), options, args.method_arg)
        per_seed[str(seed)] = condense(runs)
    report = {"benchmark": "casm-import", "facts": args.facts, "probe_templates": args.probe_templates,
              "model": args.model, "seeds": seeds, "epochs": args.epochs, "batch_size": args.batch_size,
              "eval_batch_size": args.eval_batch_size,
              "fact_questions": args.fact_questions, "machine": machine(), "wall_seconds": time.time() - started,
              "same_data": "every method trains on the same passages and fact questions; no probe wording is trained on",
              "imported": dataclasses.asdict(account), "mean_sd": aggregate(per_seed), "per_seed": per_seed}
    name = f"casm-import_{args.facts}facts_{args.probe_templates}templates_{args.epochs}ep.json"
    write(args.output or ROOT / "benchmarks" / "results" / name, report)
    print_summary(report["mean_sd"])
    shutil.rmtree(args.runs, ignore_errors=True)


if __name__ == "__main__":
    main()
