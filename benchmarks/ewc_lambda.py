"""EWC's penalty strength λ on the demo stream with the embedded model: the plasticity/stability trade-off.

Writes benchmarks/results/ewc_lambda.json: per λ, the result matrix, ACC, BWT and general perplexity.

    python benchmarks/ewc_lambda.py --lambdas 1e4,1e6,1e8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT, machine, retain, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--stream", type=Path, default=ROOT / "examples" / "demo-stream")
    parser.add_argument("--lambdas", default="1e4,1e6,1e8")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-ewc-lambda")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "ewc_lambda.json")
    args = parser.parse_args()
    sweep = {}
    for value in args.lambdas.split(","):
        run = args.runs / f"lambda-{value}"
        code = retain(["run", "--method", "ewc", "--model", args.model, "--stream", str(args.stream), "--output", str(run),
                       "--config", str(ROOT / "examples" / "demo.yaml"), "--per_device_train_batch_size", "6",
                       "--num_train_epochs", "8",  # what ewc_lambda.json was measured with (the demo's setting then)
                       "--disable_tqdm", "true", "--overwrite", "--method-arg", f"ewc_lambda={value}", "fisher_samples=32"])
        if code:
            raise SystemExit(f"ewc run failed for λ={value}")
        result = json.loads((run / "result.json").read_text())
        sweep[value] = {"matrix": result["matrix"]["em"], "acc": result["summary"]["acc"], "bwt": result["summary"]["bwt"],
                        "general_ppl": result["summary"]["general_ppl"]}
        print(f"λ={value}: ACC {sweep[value]['acc']:.3f} BWT {sweep[value]['bwt']:+.3f}")
    write(args.output, {"benchmark": "ewc_lambda", "model": args.model, "stream": args.stream.name, "machine": machine(),
                        "sweep": sweep})


if __name__ == "__main__":
    main()
