"""aria-trl's example, three sequential tasks (sentiment, toxicity, spam), on retain. Runs offline.

    python examples/aria_trl_three_tasks.py                 # the embedded SmolLM2-135M as a classifier (a few minutes on a CPU)
    python examples/aria_trl_three_tasks.py --model tiny    # a tiny random model, in seconds (CI runs this)

Code written for aria-trl changes only its import line (`from retain.compat.aria_trl import …`): the
trainer takes `tokenizer=`, trains `train_dataset` as the current task with `train()`, and
`evaluate_all_tasks(list of eval datasets)` returns the accuracy matrix and the continual metrics. The
data are invented sentences written for this example (no third-party text), one shared yes/no head:
is the text positive / toxic / spam? The labels conflict across tasks (an insult is negative *and*
toxic), so sequential training interferes. docs/migrating-from-aria-trl.md explains the differences.
"""

from __future__ import annotations

import argparse
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from datasets import Dataset  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from retain import load_model  # noqa: E402
from retain.compat.aria_trl import ARIAConfig, ContinualSFTTrainer  # noqa: E402

# (yes phrases, no phrases, frames): a text is a frame around a phrase; label 1 = yes.
TASKS = {
    "sentiment": (["a delight", "wonderful", "a joy to watch", "moving and warm", "brilliant", "a real treat"],
                  ["a bore", "dreadful", "a waste of time", "dull and cold", "a mess", "painful to sit through"],
                  ["The film was {}.", "Honestly, the show was {}.", "Our evening at the play was {}.",
                   "The new album is {}.", "That novel was {}.", "The concert last night was {}."]),
    "toxicity": (["an idiot", "worthless", "a pathetic loser", "a disgrace", "stupid and useless", "a joke of a person"],
                 ["kind", "a great help", "thoughtful", "a good friend", "clever and fair", "a pleasure to work with"],
                 ["You are {}.", "Everyone knows you are {}.", "Frankly, you are {}.", "Your brother is {}.",
                  "I think you are {}.", "The new manager is {}."]),
    "spam": (["win a free cruise", "claim your cash prize", "get cheap pills", "double your money fast",
              "unlock a secret bonus", "collect your reward"],
             ["review the draft", "move our meeting", "pick up the kids", "check the budget", "call the plumber",
              "water the plants"],
             ["Click here to {} today!", "Reply now to {}.", "Can you {} on Friday?", "Reminder: {} before noon.",
              "URGENT: act now and {}!", "Could we {} after lunch?"]),
}


def datasets(task: str, seed: int) -> tuple[Dataset, Dataset]:
    """A task's train and eval sets: every frame with every phrase, the last two frames held out for eval."""
    yes, no, frames = TASKS[task]
    rows = [{"text": frame.format(p), "label": label, "frame": i} for label, phrases in ((1, yes), (0, no))
            for p in phrases for i, frame in enumerate(frames)]
    random.Random(seed).shuffle(rows)
    train = [{"text": r["text"], "label": r["label"]} for r in rows if r["frame"] < 4]
    test = [{"text": r["text"], "label": r["label"]} for r in rows if r["frame"] >= 4]
    return Dataset.from_list(train), Dataset.from_list(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--output", default="runs/aria-trl")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, seed=args.seed, labels=["no", "yes"])
    aria_config = ARIAConfig(plasticity_lambda=0.01, spc_lambda=100.0, adapter_dim=32, slow_lr_ratio=0.5, warmup_steps=100)
    training_args = TrainingArguments(output_dir=args.output, learning_rate=1e-3, num_train_epochs=args.epochs,
                                      per_device_train_batch_size=8, per_device_eval_batch_size=16, save_strategy="no",
                                      report_to="none", seed=args.seed, disable_tqdm=True)
    splits = {task: datasets(task, args.seed) for task in TASKS}
    trainer = ContinualSFTTrainer(model=model, tokenizer=tokenizer, args=training_args, aria_config=aria_config,
                                  train_dataset=splits["sentiment"][0], eval_dataset=splits["sentiment"][1])
    for task_id, task in enumerate(TASKS):
        if task_id > 0:
            trainer.add_task(task_id=task_id)
            trainer.train_dataset, trainer.eval_dataset = splits[task]
        trainer.train()
        trainer.consolidate_task(task_id=task_id)
        print(f"after {task}: accuracy on the tasks so far {trainer.accuracies[task_id]}")

    metrics = trainer.evaluate_all_tasks([test for _, test in splits.values()])
    print("accuracy matrix (rows: after task, columns: task):")
    for after, row in metrics["accuracy_matrix"].items():
        print(f"  {list(TASKS)[after]:10s} " + " ".join(f"{row.get(j, float('nan')):.2f}" for j in range(len(TASKS))))
    print({k: metrics[k] for k in ("avg_accuracy", "forgetting", "bwt", "forward_transfer")})


if __name__ == "__main__":
    main()
