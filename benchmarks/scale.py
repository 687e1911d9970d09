"""Throughput on one machine: tokens/s and time per task per method, and the speed-up of N processes over 1.

Each process count runs `retain compare` on the same generated stream and seed with the same global batch
(per-device batch = global / processes), one after the other on the same machine, so the ratios are measured
side by side. On a GPU machine every process gets a GPU; on CPUs each process gets cores / processes threads.

    python benchmarks/scale.py --model tiny --processes 1,2 --methods full_ft,smf        # CPU: the 2-process speed-up
    python benchmarks/scale.py --preset full --processes 1 --methods full_ft,lora,ewc,replay,aria,smf,casm,rag  # a GPU
    python benchmarks/scale.py --preset full --processes 1,8                              # 8 GPUs against 1

Writes benchmarks/results/scale_<preset>_<device>.json; run directories are deleted unless --keep-runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

from common import ROOT, machine, preset_name, temporal_parser, write

import torch  # noqa: E402

from retain.cli import main as retain  # noqa: E402
from retain.report import load_results  # noqa: E402


def main() -> None:
    parser = temporal_parser(__doc__, "scale", "full_ft,smf")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts, each run in turn")
    parser.add_argument("--keep-runs", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    if any(args.batch_size % n for n in counts):
        parser.error(f"--batch-size {args.batch_size} must divide by every process count {counts}")
    root = args.runs or ROOT / "runs" / f"bench-scale-{preset_name(args)}"
    stream = root / "stream"
    facts = ["--facts", str(args.facts)] if args.facts else []
    if retain(["generate", "temporal-facts", "--preset", args.preset, *facts, "--seed", str(args.seed), "--output", str(stream)]):
        raise SystemExit("could not generate the stream")
    runs = {n: measure(args, stream, root / f"processes-{n}", n) for n in counts}
    report = {"benchmark": "scale", "preset": preset_name(args), "model": args.model, "epochs": args.epochs,
              "global_batch": args.batch_size, "machine": machine(), "runs": runs, **speed_ups(runs)}
    device = "gpu" if torch.cuda.is_available() else "cpu"
    write(args.output or ROOT / "benchmarks" / "results" / f"scale_{preset_name(args)}_{device}.json", report)
    for n, ratios in report["throughput_ratio"].items():
        print(f"{n} process(es): " + ", ".join(f"{m} {r:.2f}× training tokens/s" for m, r in ratios.items())
              + f"; {report['wall_ratio'][n]:.2f}× wall clock")
    if not args.keep_runs:
        shutil.rmtree(root, ignore_errors=True)


def speed_ups(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Against the first process count: training tokens per second (an epoch may take an extra step on several
    processes, where accelerate completes a short last batch, so throughput compares, not total time), and wall clock."""
    base = next(iter(runs.values()))
    return {"throughput_ratio": {n: {m: r["methods"][m]["tokens_per_second"] / base["methods"][m]["tokens_per_second"]
                                     for m in r["methods"]} for n, r in runs.items()},
            "wall_ratio": {n: base["wall_seconds"] / r["wall_seconds"] for n, r in runs.items()}}


def measure(args: Any, stream: Any, output: Any, processes: int) -> dict[str, Any]:
    """One `retain compare` on `processes` processes; per method: training seconds and tokens, tokens/s, per task."""
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(cores // processes, 1)), "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*launcher, "-m", "retain.cli", "compare", "--methods", args.methods, "--stream", str(stream),
               "--output", str(output), "--model", args.model, "--seed", str(args.seed),
               "--num_train_epochs", str(args.epochs), "--per_device_train_batch_size", str(args.batch_size // processes),
               "--per_device_eval_batch_size", str(args.eval_batch_size), "--learning_rate", "2e-4",
               "--lr_scheduler_type", "constant", "--disable_tqdm", "true", "--overwrite",
               *(["--method-arg", *args.method_arg] if args.method_arg else [])]
    started = time.time()
    subprocess.run(command, env=env, check=True)
    wall = time.time() - started
    methods = {}
    for method, result in load_results(output).items():
        timings = result["timings"]
        seconds, tokens = sum(t["train_seconds"] for t in timings), sum(t["train_tokens"] for t in timings)
        methods[method] = {"train_seconds": seconds, "train_tokens": tokens, "tokens_per_second": tokens / seconds,
                           "eval_seconds": sum(result["eval_seconds"]),
                           "per_task": [{k: t[k] for k in ("task", "train_seconds", "train_tokens", "tokens_per_second",
                                                             "optimizer_steps")} for t in timings],
                           "summary": {k: result["summary"].get(k) for k in ("plasticity", "stability", "historical")}}
    return {"processes": processes, "threads_per_process": int(env["OMP_NUM_THREADS"]), "wall_seconds": wall,
            "methods": methods}


if __name__ == "__main__":
    main()
