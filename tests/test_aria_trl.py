"""The aria-trl layer: its Quick Start runs with only the import line changed, and its exported names keep their
signatures, backed by retain's code."""

import math

import pytest
import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2ForSequenceClassification

from retain.compat.aria_trl import (ARIAConfig, ContinualSFTTrainer, FisherConsolidator, PlasticityGatedMLP,
                                    TaskFastAdapter, compute_continual_metrics)
from retain.methods.aria import ARIA


def classification_sets(words, offset=0):
    rows = [{"text": f"the {w} was here", "label": (i + offset) % 2} for i, w in enumerate(words)]
    return Dataset.from_list(rows[:8]), Dataset.from_list(rows[8:])


@pytest.fixture
def quick_start_data():
    task1_train, task1_eval = classification_sets(["zobi", "kemu", "dafo", "lupe", "tiva", "rano", "selu", "mipo", "kaza", "belo"])
    task2_train, task2_eval = classification_sets(["fren", "gola", "hiku", "jave", "lomi", "nupa", "pevo", "rusi", "tace", "vimo"], 1)
    return task1_train, task1_eval, task2_train, task2_eval


def tiny_gpt2_classifier(tokenizer):
    torch.manual_seed(0)
    return GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                                    num_labels=2, pad_token_id=tokenizer.pad_token_id))


def test_the_quick_start_runs_with_only_the_import_changed(tokenizer, quick_start_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task1_train, task1_eval, task2_train, task2_eval = quick_start_data
    all_tasks = [task1_eval, task2_eval]
    # aria-trl's Quick Start from here on, but for the model and tokenizer (distilgpt2 cannot be fetched offline).
    from transformers import TrainingArguments
    model = tiny_gpt2_classifier(tokenizer)
    aria_config = ARIAConfig(plasticity_lambda=0.01, spc_lambda=100.0, adapter_dim=64, slow_lr_ratio=0.5)
    args = TrainingArguments(output_dir="./checkpoints", learning_rate=2e-4, num_train_epochs=3,
                             per_device_train_batch_size=8)
    trainer = ContinualSFTTrainer(model=model, tokenizer=tokenizer, args=args, train_dataset=task1_train,
                                  eval_dataset=task1_eval, aria_config=aria_config)
    trainer.train()
    trainer.consolidate_task(task_id=0)
    trainer.add_task(task_id=1)
    trainer.train_dataset = task2_train
    trainer.eval_dataset = task2_eval
    trainer.train()
    trainer.consolidate_task(task_id=1)
    metrics = trainer.evaluate_all_tasks(all_tasks)
    # What it returned, and that ARIA really ran under it.
    assert set(metrics["task_accuracies"]) == {0, 1} and all(0 <= a <= 1 for a in metrics["task_accuracies"].values())
    assert set(metrics["accuracy_matrix"]) == {0, 1} and set(metrics["accuracy_matrix"][0]) == {0}
    assert metrics["avg_accuracy"] == pytest.approx(sum(metrics["task_accuracies"].values()) / 2)
    assert metrics == {**metrics, **compute_continual_metrics(metrics["accuracy_matrix"])}
    assert isinstance(trainer.method, ARIA) and [t.name for t in trainer.tasks] == ["task-0", "task-1"]
    assert all(len(block.adapters) == 2 for block in trainer.method.adapter_blocks)
    assert trainer.method.anchor.fisher  # SPC anchored the slow pathway after each task
    # warmup_steps counts over the run, as aria-trl's: one step an epoch, three epochs, two tasks
    assert trainer.method.config.warmup_scope == "run" and trainer.context.run_step == 6
    scores = trainer.evaluator.score(trainer.model, trainer._probes(task1_eval))
    assert sum(s.em for s in scores) / len(scores) == metrics["task_accuracies"][0]


def test_pre_tokenized_classification_rows_train_like_text_rows(tokenizer, quick_start_data, tmp_path):
    from transformers import TrainingArguments

    task1_train, task1_eval, _, _ = quick_start_data
    tokenized = task1_train.map(lambda row: tokenizer(row["text"], padding="max_length", max_length=12),
                                remove_columns=["text"]).rename_column("label", "labels")
    args = TrainingArguments(output_dir=str(tmp_path / "a"), learning_rate=1e-2, num_train_epochs=2,
                             per_device_train_batch_size=4, report_to="none", save_strategy="no", seed=0)
    runs = []
    for data in (task1_train, tokenized):
        trainer = ContinualSFTTrainer(model=tiny_gpt2_classifier(tokenizer), tokenizer=tokenizer, args=args,
                                      train_dataset=data, eval_dataset=task1_eval, aria_config=ARIAConfig(adapter_dim=8))
        assert trainer._examples(data) == trainer._examples(task1_train)  # decoded back to the same texts and labels
        trainer.train()
        runs.append([p.detach().clone() for p in trainer.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    with pytest.raises(ValueError, match="label 7 is not a class of the model"):
        trainer._examples(Dataset.from_list([{"text": "x", "label": 7}]))


def test_compute_continual_metrics_uses_retains_definitions():
    accuracies = {0: {0: 0.9, 1: 0.5, 2: 0.4}, 1: {0: 0.95, 1: 0.8, 2: 0.6}, 2: {0: 0.6, 1: 0.7, 2: 0.9}}
    result = compute_continual_metrics(accuracies, initial_accuracies={0: 0.5, 1: 0.5, 2: 0.5})
    assert result["avg_accuracy"] == pytest.approx((0.6 + 0.7 + 0.9) / 3)  # aria-trl: mean of the lower triangle, 0.808
    assert result["forgetting"] == pytest.approx(((0.95 - 0.6) + (0.8 - 0.7)) / 2)  # best earlier, not right-after
    assert result["bwt"] == pytest.approx(((0.6 - 0.9) + (0.7 - 0.8)) / 2)
    assert result["forward_transfer"] == pytest.approx(((0.5 - 0.5) + (0.6 - 0.5)) / 2)
    assert compute_continual_metrics(accuracies)["forward_transfer"] is None  # no untrained scores: no made-up chance


def test_fisher_consolidator_anchors_protected_weights_only(make_model, tokenizer):
    model = make_model()
    gated = PlasticityGatedMLP(64, 128)
    model.model.layers[0].mlp = gated
    batch = tokenizer(["the harbour is quiet", "ships come in at dawn"], return_tensors="pt", padding=True)
    loader = DataLoader([{"input_ids": batch.input_ids[i], "attention_mask": batch.attention_mask[i],
                          "label": batch.input_ids[i]} for i in range(2)], batch_size=2)
    consolidator = FisherConsolidator(model, "cpu")
    assert consolidator.compute_spc_loss(0).item() == 0.0
    consolidator.consolidate(0, loader)
    assert consolidator.compute_spc_loss(10).item() == 0.0  # at the anchor
    assert not any(id(p) in {id(q) for q in gated.fast.parameters()} for p in
                   (dict(model.named_parameters())[n] for n in consolidator.anchor.fisher))
    with torch.no_grad():
        gated.fast.c_fc.weight.add_(1.0)  # the fast pathway is free
    assert consolidator.compute_spc_loss(10).item() == 0.0
    with torch.no_grad():
        gated.slow.c_fc.weight.add_(1.0)  # the slow pathway is anchored
    assert consolidator.compute_spc_loss(10).item() > 0


def test_plasticity_gated_mlp_keeps_aria_trls_signature():
    torch.manual_seed(0)
    mlp = PlasticityGatedMLP(d_model=16, d_ff=32, plasticity_lambda=0.5, warmup_steps=1, dropout=0.0).eval()
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(mlp(x), mlp.slow(x))  # the fast pathway starts as the slow one's copy
    assert mlp.last_plasticity_loss.item() == 0.0  # warm-up: the first forward
    out = mlp(x)
    pi = mlp.plasticity
    assert mlp.last_plasticity_loss.item() == pytest.approx(0.5 * float((pi * (1 - pi)).mean()))
    assert mlp.slow_grad_multiplier() == pytest.approx(1 - float(pi.mean()))
    torch.testing.assert_close(mlp(x, force_slow=True), mlp.slow(x))
    assert {id(p) for p in mlp.slow_parameters()} == {id(p) for p in mlp.slow.parameters()}
    mlp.reset_step()
    assert mlp.step == 0 and out.shape == x.shape


def test_task_fast_adapter_is_identity_until_trained_and_freezes():
    adapter = TaskFastAdapter(d_model=16, adapter_dim=4)
    x = torch.randn(3, 16)
    torch.testing.assert_close(adapter(x), x)
    adapter.freeze()
    assert not any(p.requires_grad for p in adapter.parameters())
    adapter.unfreeze()
    assert all(p.requires_grad for p in adapter.parameters())
    assert isinstance(adapter.act, torch.nn.ReLU)


def test_aria_config_means_what_aria_trl_says():
    retain_config = ARIAConfig(warmup_steps=500, consolidation_steps_per_task=None).to_retain()
    assert (retain_config.warmup_steps, retain_config.warmup_scope, retain_config.fisher_samples) == (500, "run", 0)
    assert ARIAConfig(consolidation_steps_per_task=16).to_retain().fisher_samples == 16
    assert (ARIAConfig().plasticity_lambda, ARIAConfig().spc_lambda, ARIAConfig().slow_lr_ratio) == (0.01, 100.0, 0.5)


def test_the_three_task_example_runs_offline(tmp_path, monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "aria_trl_three_tasks.py"
    monkeypatch.setattr(sys, "argv", [str(example), "--model", "tiny", "--output", str(tmp_path / "out"), "--epochs", "1"])
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "after spam: accuracy on the tasks so far {0: " in out and "'avg_accuracy': " in out
    assert not math.isnan(float(out.split("'avg_accuracy': ")[1].split(",")[0]))
