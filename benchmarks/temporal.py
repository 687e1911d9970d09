"""The temporal-facts stream, several seeds: every method on the same examples, scored per probe form.

For each seed, a stream is generated from that seed (its own facts), and `retain compare` runs every
method on it with the same training examples (passages plus the trainer's fact questions) and the
same held-out probe wordings. Writes benchmarks/results/temporal_<preset>.json with each seed's
condensed results and, per method, the mean ± sd over seeds of plasticity, stability and historical
score overall and per probe form, the general-text perplexity change, and total training time and
tokens. Run directories are deleted once the JSON is written (--keep-runs keeps them).

    python benchmarks/temporal.py                                   # medium preset, seeds 0,1,2
    python benchmarks/temporal.py --preset full --facts 100 --methods full_ft,casm
    python benchmarks/temporal.py --fact-questions 6                # the first six training wordings of each fact (default: all seven)
    python benchmarks/temporal.py --jobs 12                         # every seed and method at once (a GPU has room)
    python benchmarks/temporal.py --person-wordings                 # also ask every fact as a person might
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import ROOT, compare_on_temporal_facts, condense, machine, mean_sd, preset_name, strip, temporal_parser, write
from relations import person_questions

from retain.stream import load_stream, save_stream

KEYS = ("plasticity", "stability", "historical")


def main() -> None:
    parser = temporal_parser(__doc__, "temporal", "full_ft,replay,smf,casm,rag")
    parser.set_defaults(preset="medium")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, each its own generated stream")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process")
    parser.add_argument("--keep-runs", action="store_true", help="keep the run directories (reports, checkpoints)")
    parser.add_argument("--person-wordings", action="store_true",
                        help="also probe every fact as a person might ask (relations.py's PERSON_WORDINGS, forms "
                             "person/as-of and person/now): wordings never trained on, and never used for a choice")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                        help="train nothing: one report from the JSON files of earlier runs of this script (one per "
                             "seed and method, as --jobs writes them), with the settings they record; with --methods, "
                             "only those (NAME=OLD renames OLD)")
    args = parser.parse_args()
    if args.merge:
        return merge(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    root = args.runs or ROOT / "runs" / f"bench-temporal-{preset_name(args)}"
    started = time.time()
    per_seed = run_seeds(args, seeds, root)
    report = {"benchmark": "temporal", "preset": preset_name(args), "model": args.model, "seeds": seeds,
              "epochs": args.epochs, "batch_size": args.batch_size, "fact_questions": args.fact_questions,
              "probe_templates": args.probe_templates, "person_wordings": args.person_wordings,
              "machine": machine(), "wall_seconds": time.time() - started,
              "same_data": "every method trains on the same passages and fact questions; no probe wording is trained on",
              "mean_sd": aggregate(per_seed), "per_seed": per_seed}
    write(ROOT / "benchmarks" / "results" / f"temporal_{preset_name(args)}.json" if args.output is None else args.output, report)
    print_summary(report["mean_sd"])
    if not args.keep_runs:
        shutil.rmtree(root, ignore_errors=True)


def run_seeds(args: argparse.Namespace, seeds: list[int], root: Path) -> dict[str, dict[str, Any]]:
    """Each seed's comparison, condensed. With --jobs > 1, every (seed, method) pair runs as its own process of this
    script (the same stream, generated from the seed), at most --jobs at once; one process runs them in turn."""
    methods = args.methods.split(",")
    if args.jobs == 1:
        per_seed = {}
        for seed in seeds:
            runs = root / f"seed{seed}"
            compare_on_temporal_facts(argparse.Namespace(**{**vars(args), "seed": seed, "runs": runs}),
                                      add_person_probes if args.person_wordings else None)
            per_seed[str(seed)] = condense(runs)
        return per_seed
    argv = strip(sys.argv[1:], ("--seeds", "--jobs", "--runs", "--output", "--methods"))
    pending = [(seed, method) for seed in seeds for method in methods]
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed, method = pending.pop(0)
            running.append(subprocess.Popen([
                sys.executable, __file__, *argv, "--seeds", str(seed), "--methods", method, "--jobs", "1", "--keep-runs",
                "--runs", str(root / f"seed{seed}-{method.split('=')[0]}"), "--output", str(root / f"seed{seed}-{method}.json")]))
        time.sleep(1)
        for child in [c for c in running if c.poll() is not None]:
            if child.returncode:
                raise SystemExit(f"a run failed: {' '.join(child.args)}")
            running.remove(child)
    return {str(seed): {name: condense(root / f"seed{seed}-{name}" / f"seed{seed}")[name]
                        for name in (m.split("=")[0] for m in methods)} for seed in seeds}


def add_person_probes(directory: Path) -> None:
    """Each fact a task probes, asked in its relation's `PERSON_WORDINGS` too (`relations.person_questions`): the
    dated ones at the task's period (form person/as-of), the others about now in the last task (person/now); the
    answer, other values and the period that taught it are its probes'."""
    stream = load_stream(directory)
    for task in stream.tasks:
        last = task is stream.tasks[-1]
        asked = {probe.key: probe for probe in reversed(task.probes)}  # one probe per fact: the first
        for key, probe in asked.items():
            subject, relation = key.split(" | ")[:2]
            for prompt, dated in person_questions(subject, relation, task.period, last):
                task.probes.append(replace(probe, prompt=prompt, form="person/as-of" if dated else "person/now"))
    save_stream(stream, directory)


def merge(args: argparse.Namespace) -> None:
    """One report from several of this script's reports: each (seed, method) once, all on the same settings."""
    reports = [json.loads(path.read_text()) for path in args.merge]
    settings = {(r["preset"], r["model"], r["epochs"], r["batch_size"], wordings(r), r.get("probe_templates") or 0,
                 r.get("person_wordings", False)) for r in reports}
    if len(settings) > 1:
        raise SystemExit(f"--merge: the reports were made with different settings {sorted(settings)}")
    # --methods NAME or NAME=OLD: a method of the reports, by its name there (OLD, else NAME) → the name reported
    chosen = {parts[-1]: parts[0] for parts in (m.split("=") for m in args.methods.split(","))}
    per_seed: dict[str, dict[str, Any]] = {}
    for path, report in zip(args.merge, reports):
        for seed, methods in report["per_seed"].items():
            for old, run in methods.items():
                if old not in chosen:
                    continue
                method = chosen[old]
                if method in per_seed.setdefault(seed, {}):
                    raise SystemExit(f"--merge: seed {seed} of {method} is in two reports (the second: {path})")
                per_seed[seed][method] = run
    if not per_seed:
        found = sorted({m for r in reports for runs in r["per_seed"].values() for m in runs})
        raise SystemExit(f"--merge: --methods {args.methods} names none of the reports' methods ({', '.join(found)})")
    first = reports[0]
    report = {**{k: first.get(k) for k in ("benchmark", "preset", "model", "epochs", "batch_size", "same_data")},
              "probe_templates": first.get("probe_templates") or 0,
              "person_wordings": first.get("person_wordings", False),
              "fact_questions": wordings(first),
              "seeds": sorted(int(s) for s in per_seed),
              "merged_from": [source for p, r in zip(args.merge, reports) for source in sources(p, r, chosen)],
              "mean_sd": aggregate(per_seed), "per_seed": per_seed}
    write(args.output or ROOT / "benchmarks" / "results" / f"temporal_{report['preset']}.json", report)
    print_summary(report["mean_sd"])


def sources(path: Path, report: dict[str, Any], chosen: dict[str, str]) -> list[dict[str, Any]]:
    """Where a merged report's runs came from: the report itself, or, for a report merged before, its own sources
    (so merging into a merged report keeps every run's machine)."""
    if "merged_from" in report:
        return [s | {"methods": [chosen[m] for m in s["methods"] if m in chosen]} for s in report["merged_from"]
                if any(m in chosen for m in s["methods"])]
    methods = {m for runs in report["per_seed"].values() for m in runs}
    return [{"file": path.name, "machine": report.get("machine"), "methods": sorted(chosen[m] for m in methods if m in chosen)}]


def wordings(report: dict[str, Any]) -> int:
    """The fact-question wordings a report's runs trained on: reports from before they were recorded used four, the
    only ones there were."""
    return report.get("fact_questions", 4)


def aggregate(per_seed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per method: mean ± sd over seeds of every headline number, overall and per probe form."""
    methods = next(iter(per_seed.values())).keys()
    out = {}
    for method in methods:
        runs = [seeds[method] for seeds in per_seed.values() if method in seeds]
        forms = sorted({form for r in runs for form in r["summary"].get("by_form", {})})
        out[method] = {
            **{key: mean_sd([r["summary"].get(key) for r in runs])
               for key in (*KEYS, "acc", "bwt", "routing_accuracy", "router_precision", "router_recall", "locality")},
            # What each period adds to storage (a versioned method's copy, a snapshot's adapter), mean over periods.
            "stored_bytes_per_period": mean_sd([statistics.fmean([t["stored_bytes"] for t in r["timings"]]) for r in runs
                                                if all("stored_bytes" in t for t in r["timings"])]),
            "by_form": {form: {key: mean_sd([r["summary"]["by_form"].get(form, {}).get(key) for r in runs]) for key in KEYS}
                        for form in forms},
            "general_ppl_change": mean_sd([r["summary"]["general_ppl_change"] for r in runs]),
            "train_seconds": mean_sd([r["speed"]["train_seconds"] for r in runs]),
            "train_tokens": mean_sd([float(sum(t["train_tokens"] for t in r["timings"])) for r in runs]),
            "seconds_per_step": mean_sd([r["speed"]["seconds_per_step"] for r in runs]),
        }
    return out


def cell(stat: dict[str, float] | None, percent: bool = False) -> str:
    if stat is None:
        return "–"
    scale = 100 if percent else 1
    return f"{scale * stat['mean']:+.1f}±{scale * stat['sd']:.1f}%" if percent else f"{stat['mean']:.2f}±{stat['sd']:.2f}"


def print_summary(mean_sd_: dict[str, Any]) -> None:
    print(f"{'method':10} {'form':12} {'plasticity':>12} {'stability':>12} {'historical':>12}")
    for method, stats in mean_sd_.items():
        for form, scores in {"all": stats, **stats["by_form"]}.items():
            print(f"{method:10} {form:12} " + " ".join(f"{cell(scores.get(k)):>12}" for k in KEYS))
        print(f"{method:10} general ppl {cell(stats['general_ppl_change'], True)}, training "
              f"{cell(stats['train_seconds'])} s, {cell(stats['train_tokens'])} tokens")


if __name__ == "__main__":
    main()
