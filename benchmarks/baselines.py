"""Run the baseline methods on one stream with one model and seed, side by side in one process.

Writes a JSON file with each method's result matrices and summary, and its training speed as a
ratio to full_ft's measured in the same run (this machine is shared and noisy: compare ratios).

    python benchmarks/baselines.py                       # demo stream, embedded SmolLM2-135M
    python benchmarks/baselines.py --model tiny --epochs 2   # a quick check of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from retain.cli import main as retain_main  # noqa: E402
from retain.runstate import atomic_write  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# LoRA's small update needs a larger step than full fine-tuning to learn in the same epochs.
DEFAULT_LEARNING_RATES = {"lora": 1e-3}
DEFAULT_METHOD_ARGS = {"ewc": ["fisher_samples=32"], "replay": ["buffer_size=64", "ratio=0.25"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--stream", default=str(ROOT / "examples" / "demo-stream"))
    parser.add_argument("--methods", default="full_ft,lora,ewc,replay")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "baselines"), help="Run directories, one per method.")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "baselines.json"))
    args = parser.parse_args()

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "full_ft" not in methods:
        parser.error("--methods must include full_ft: speed is reported as a ratio to it")
    results: dict[str, dict] = {}
    started = time.time()
    for method in methods:
        learning_rate = DEFAULT_LEARNING_RATES.get(method, args.learning_rate)
        argv = [
            "run", "--method", method, "--model", args.model, "--stream", args.stream,
            "--output", str(Path(args.runs) / method), "--overwrite", "--seed", str(args.seed),
            "--num_train_epochs", str(args.epochs), "--learning_rate", str(learning_rate),
            "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", "16",
            "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--disable_tqdm", "true",
        ]
        if DEFAULT_METHOD_ARGS.get(method):
            argv += ["--method-arg", *DEFAULT_METHOD_ARGS[method]]
        print(f"== {method} (lr {learning_rate})", flush=True)
        if retain_main(argv) != 0:
            return 1
        result = json.loads((Path(args.runs) / method / "result.json").read_text())
        result.pop("config", None)
        results[method] = result | {"learning_rate": learning_rate, "method_args": DEFAULT_METHOD_ARGS.get(method, [])}

    def speed(method: str) -> dict[str, float]:
        timings = results[method]["timings"]
        steps = sum(t["optimizer_steps"] for t in timings)
        seconds = sum(t["train_seconds"] for t in timings)
        tokens = sum(t["train_tokens"] for t in timings)
        return {"seconds_per_step": seconds / steps, "tokens_per_second": tokens / seconds,
                "consolidate_seconds": sum(t.get("consolidate_seconds", 0.0) for t in timings)}

    base = speed("full_ft")
    for method in methods:
        own = speed(method)
        results[method]["speed"] = own | {
            "step_time_ratio_vs_full_ft": own["seconds_per_step"] / base["seconds_per_step"],
            "tokens_per_second_ratio_vs_full_ft": own["tokens_per_second"] / base["tokens_per_second"],
        }
    report = {
        "benchmark": "baselines",
        "model": args.model,
        "stream": str(Path(args.stream).resolve().relative_to(ROOT)) if Path(args.stream).resolve().is_relative_to(ROOT) else args.stream,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__},
        "wall_seconds": time.time() - started,
        "methods": results,
    }
    atomic_write(Path(args.output), json.dumps(report, indent=2))
    print(f"\n{'method':8} {'ACC':>6} {'BWT':>7} {'forget':>7} {'ppl 0→T':>13} {'step×':>6}")
    for method, r in results.items():
        s, ppl = r["summary"], r["summary"]["general_ppl"]
        print(f"{method:8} {s['acc']:6.3f} {s['bwt']:+7.3f} {s['forgetting']:7.3f} {ppl[0]:6.1f}→{ppl[-1]:6.1f} "
              f"{r['speed']['step_time_ratio_vs_full_ft']:6.2f}")
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
