"""The temporal-facts stream: every baseline on the same facts, model and seed, in one run.

Generates the stream (`small` preset by default; `--preset full` for machines with time or a GPU),
runs `retain compare`, and writes benchmarks/results/temporal_<preset>.json with plasticity,
stability, historical accuracy and general-text perplexity change per method, and training speed
as a ratio to full_ft's from the same run.

    python benchmarks/temporal.py
    python benchmarks/temporal.py --preset full --epochs 3 --batch-size 32
"""

from __future__ import annotations

from common import compare_on_temporal_facts, condense, machine, print_table, result_path, temporal_parser, write


def main() -> None:
    args = temporal_parser(__doc__, "temporal", "full_ft,lora,ewc,replay").parse_args()
    runs, seconds = compare_on_temporal_facts(args)
    methods = condense(runs)
    write(result_path(args), {"benchmark": "temporal", "preset": args.preset, "model": args.model, "seed": args.seed,
                              "epochs": args.epochs, "machine": machine(), "wall_seconds": seconds,
                              "report": str(runs / "report.html"), "methods": methods})
    print_table(methods, ["plasticity", "stability", "historical", "acc"])


if __name__ == "__main__":
    main()
