"""ARIA through the TRL-style trainer: learn two tasks in turn, then ask about both. Runs offline.

    python examples/aria_sft.py                 # the embedded SmolLM2-135M (about a minute on a CPU)
    python examples/aria_sft.py --model tiny    # a tiny random model, in seconds (for smoke tests)

This is retain's own API; code written for aria-trl runs through `retain.compat.aria_trl` instead
(examples/aria_trl_three_tasks.py, docs/migrating-from-aria-trl.md).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from datasets import Dataset  # noqa: E402

from retain import ARIAConfig, ContinualSFTConfig, ContinualSFTTrainer, load_model  # noqa: E402

TASKS = {
    "verdict": ("Review: the {} was here.\nVerdict:", [("zobi", "positive"), ("kemu", "negative"), ("dafo", "positive"),
                                                      ("lupe", "negative")]),
    "place": ("Record: owner {}; place Varo; item lamp\nPlace:", [("Tara", "Varo"), ("Olen", "Varo")]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--output", default="runs/aria-sft")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, seed=0)
    trainer = ContinualSFTTrainer(
        model,
        args=ContinualSFTConfig(output_dir=args.output, learning_rate=2e-4, num_train_epochs=4, per_device_train_batch_size=4,
                                lr_scheduler_type="constant", report_to="none", seed=0),
        aria_config=ARIAConfig(plasticity_lambda=1.0, spc_lambda=1e6, adapter_dim=64, slow_lr_ratio=0.1, warmup_steps=2),
        processing_class=tokenizer,
    )
    for name, (template, pairs) in TASKS.items():
        rows = [{"prompt": template.format(key), "completion": f" {value}"} for key, value in pairs] * 4
        probes = [{"prompt": template.format(key), "answer": value} for key, value in pairs]
        trainer.add_task(Dataset.from_list(rows), name=name, probes=probes)
        trainer.consolidate_task()
        row = trainer.evaluate_all_tasks(label=name)
        print(f"after {name}: exact match per task {dict(zip(TASKS, row.em))}, adapter routing {row.routing_accuracy:.2f}")

    saved = trainer.save_continual_state(f"{args.output}/state")
    print(f"Saved the model with its adapters, gates and SPC anchors to {saved}")
    prompts = [TASKS["verdict"][0].format("kemu"), TASKS["place"][0].format("Olen")]
    for prompt, answer in zip(prompts, trainer.evaluator.complete(trainer.model, prompts, max_new_tokens=4)):
        print(f"{prompt!r} → {answer.strip()!r}")


if __name__ == "__main__":
    main()
