"""FSDP on GPUs: the methods that run sharded, through `accelerate launch` with examples/accelerate/fsdp.yaml,
against the same comparison unsharded on one process.

Both comparisons run on the same generated stream, seed and global batch. Per method, the JSON holds the result
matrix and summary of each, how many generated answers agree, and the largest difference of the final weights
(FSDP computes in bf16 from fp32 shards, one process in bf16 autocast: close, not bit-equal). It also records that a
method whose state does not follow the shards (SMF with a product-key memory) is refused before training. Needs GPUs (accelerate shards only
there); a CPU has its own check in tests/test_scale.py (torch's fully_shard on gloo).

    python benchmarks/fsdp.py                    # every GPU of the machine
    python benchmarks/fsdp.py --processes 8 --model HuggingFaceTB/SmolLM2-1.7B-Instruct --facts 12

Writes benchmarks/results/fsdp_<model>_<processes>gpu.json; run directories are deleted unless --keep-runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import ROOT, machine, write

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from retain.cli import main as retain  # noqa: E402

SHARDED = "full_ft,lora,replay,ewc,aria,smf,casm"  # every method whose state follows FSDP's shards (rag trains nothing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=torch.cuda.device_count())
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--methods", default=SHARDED)
    parser.add_argument("--facts", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-fsdp")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--keep-runs", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available() or args.processes < 1:
        raise SystemExit("benchmarks/fsdp.py needs GPUs: accelerate applies FSDP only there")
    stream = args.runs / "stream"
    if retain(["generate", "temporal-facts", "--preset", "small", "--facts", str(args.facts), "--output", str(stream)]):
        raise SystemExit("could not generate the stream")
    common = ["--stream", str(stream), "--model", args.model, "--num_train_epochs", str(args.epochs), "--seed", "0",
              "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--disable_tqdm", "true", "--overwrite"]
    compare = ["compare", "--methods", args.methods, *common, "--method-arg", "ewc.fisher_samples=8", "aria.fisher_samples=8",
               "smf.k=8", "casm.k=8"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "examples" / "accelerate" / "fsdp.yaml"), "--num_processes", str(args.processes), "-m", "retain.cli"]
    global_batch = 2 * args.processes
    jobs = {
        "unsharded": [sys.executable, "-m", "retain.cli", *compare, "--per_device_train_batch_size", str(global_batch),
                      "--output", str(args.runs / "unsharded")],
        "fsdp": [*launch, *compare, "--per_device_train_batch_size", "2", "--output", str(args.runs / "fsdp")],
        "refused": [*launch, "run", "--method", "smf", "--method_arg", "memory=product_key", *common,
                    "--output", str(args.runs / "refused")],
    }
    started = {name: (time.time(), subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
               for name, command in jobs.items()}
    done = {}
    for name, (start, job) in started.items():
        output, _ = job.communicate()
        done[name] = {"returncode": job.returncode, "seconds": time.time() - start, "output": output}
        print(f"{name}: exit {job.returncode} after {done[name]['seconds']:.0f} s")
    report = {"benchmark": "fsdp", "model": args.model, "processes": args.processes, "global_batch": global_batch,
              "machine": machine(),
              "jobs": {n: {"returncode": d["returncode"], "seconds": d["seconds"]}
                       | ({"output_tail": d["output"][-2000:]} if d["returncode"] else {}) for n, d in done.items()},
              "refused_before_training": done["refused"]["returncode"] != 0
              and "keeps state per whole parameter" in done["refused"]["output"]
              and not (args.runs / "refused" / "config.json").exists(),
              "methods": {m: compared(args.runs / "unsharded" / m, args.runs / "fsdp" / m) for m in args.methods.split(",")}
              if done["fsdp"]["returncode"] == 0 and done["unsharded"]["returncode"] == 0 else {}}
    write(args.output or ROOT / "benchmarks" / "results" / f"fsdp_{Path(args.model).name}_{args.processes}gpu.json", report)
    for method, r in report["methods"].items():
        print(f"{method}: answers agree {r['answers_agree']:.2f}, max |Δw| {r['max_weight_difference']:.2e}, "
              f"plasticity {r['unsharded']['plasticity']} vs {r['fsdp']['plasticity']}")
    if not args.keep_runs:
        shutil.rmtree(args.runs, ignore_errors=True)


def compared(unsharded: Path, fsdp: Path) -> dict[str, Any]:
    runs = {}
    for name, run in (("unsharded", unsharded), ("fsdp", fsdp)):
        result = json.loads((run / "result.json").read_text())
        answers = [json.loads(line)["prediction"] for line in (run / "predictions.jsonl").read_text().splitlines()]
        weights = load_file(run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip() / "model.safetensors")
        runs[name] = (result, answers, weights)
    (a, a_answers, a_weights), (b, b_answers, b_weights) = runs["unsharded"], runs["fsdp"]
    return {
        "unsharded": {k: a["summary"].get(k) for k in ("acc", "plasticity", "stability", "historical")} | {"em": a["matrix"]["em"]},
        "fsdp": {k: b["summary"].get(k) for k in ("acc", "plasticity", "stability", "historical")} | {"em": b["matrix"]["em"]},
        "answers_agree": sum(x == y for x, y in zip(a_answers, b_answers)) / max(len(a_answers), 1),
        # Tied weights are stored once, under either name.
        "max_weight_difference": max(float((a_weights[n].float() - b_weights[n].float()).abs().max())
                                     for n in a_weights.keys() & b_weights.keys()),
        "train_seconds": [sum(t["train_seconds"] for t in r["timings"]) for r in (a, b)],
    }


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
