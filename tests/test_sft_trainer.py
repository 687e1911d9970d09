"""ContinualSFTTrainer: TRL's SFTTrainer with the task lifecycle, ARIA by default, and saved continual state."""

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from retain import ARIAConfig, ContinualSFTConfig, ContinualSFTTrainer, Task
from retain.methods import EWC, ARIA

REVIEW = "Review: the {} was lovely.\nVerdict:"
RECORD = "Record: owner {}; place Danu; item cup\nPlace:"


def dataset(template: str, pairs: list[tuple[str, str]]) -> tuple[Dataset, list[dict[str, str]]]:
    rows = [{"prompt": template.format(a), "completion": f" {b}"} for a, b in pairs] * 3
    return Dataset.from_list(rows), [{"prompt": template.format(a), "answer": b} for a, b in pairs]


def sft_trainer(make_model, tokenizer, tmp_path, args=None, **kwargs):
    args = args or ContinualSFTConfig(output_dir=str(tmp_path / "sft"), learning_rate=1e-2, num_train_epochs=3,
                                      per_device_train_batch_size=2, report_to="none", disable_tqdm=True, max_new_tokens=6)
    kwargs.setdefault("aria_config", ARIAConfig(adapter_dim=8, fisher_samples=4, warmup_steps=0))
    return ContinualSFTTrainer(make_model(), args, processing_class=tokenizer, **kwargs)


def learn_two_tasks(trainer):
    for name, template, pairs in (("review", REVIEW, [("zobi", "positive"), ("kemu", "negative")]),
                                  ("record", RECORD, [("Tara", "Danu"), ("Olen", "Danu")])):
        data, probes = dataset(template, pairs)
        trainer.add_task(data, name=name, probes=probes)
        trainer.consolidate_task()


def test_it_is_trl_sft_trainer_with_the_task_lifecycle(make_model, tokenizer, tmp_path):
    trainer = sft_trainer(make_model, tokenizer, tmp_path)
    assert isinstance(trainer, SFTTrainer) and isinstance(trainer.method, ARIA)
    learn_two_tasks(trainer)
    row = trainer.evaluate_all_tasks()
    assert [t.name for t in trainer.tasks] == ["review", "record"] and len(row.em) == 2
    assert row.routing_accuracy == 1.0
    assert all(len(block.adapters) == 2 for block in trainer.method.adapter_blocks)


def test_plain_trl_config_and_other_methods_work(make_model, tokenizer, tmp_path):
    args = SFTConfig(output_dir=str(tmp_path / "plain"), bf16=False, learning_rate=1e-2, num_train_epochs=1,
                     per_device_train_batch_size=2, report_to="none", disable_tqdm=True, save_strategy="no")
    trainer = sft_trainer(make_model, tokenizer, tmp_path, args=args, aria_config=None, method=EWC())
    learn_two_tasks(trainer)
    assert trainer.method.anchor.fisher
    with pytest.raises(ValueError, match="not both"):
        ContinualSFTTrainer(make_model(), args, aria_config=ARIAConfig(), method=EWC(), processing_class=tokenizer)


def test_continual_state_round_trip(make_model, tokenizer, tmp_path):
    trainer = sft_trainer(make_model, tokenizer, tmp_path)
    learn_two_tasks(trainer)
    trainer.save_continual_state(tmp_path / "state")
    trainer.save_continual_state(tmp_path / "state")  # replacing a saved state is safe
    fresh = sft_trainer(make_model, tokenizer, tmp_path)
    fresh.load_continual_state(tmp_path / "state")
    assert [t.name for t in fresh.tasks] == ["review", "record"]
    torch.testing.assert_close(fresh.method.anchor.fisher, trainer.method.anchor.fisher)
    assert fresh.evaluate_all_tasks().predictions == trainer.evaluate_all_tasks().predictions
    other = sft_trainer(make_model, tokenizer, tmp_path, aria_config=None, method=EWC())
    with pytest.raises(ValueError, match="saved by method 'aria'"):
        other.load_continual_state(tmp_path / "state")


def test_the_example_runs_offline(tmp_path, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "aria_sft.py"
    monkeypatch.setattr(sys, "argv", [str(example), "--model", "tiny", "--output", str(tmp_path / "out")])
    runpy.run_path(str(example), run_name="__main__")
    assert (tmp_path / "out" / "state" / "manifest.json").is_file() and not (tmp_path / "out" / "state" / "continual.pt").exists()


@pytest.mark.parametrize("method", ["full_ft", "aria"])
def test_sequence_classification_model_learns_labels(tokenizer, tmp_path, method):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from retain import ContinualTrainer, ContinualTrainingArguments, build_method

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, id2label={0: "positive", 1: "negative"},
        label2id={"positive": 0, "negative": 1}))
    options = dict(output_dir=str(tmp_path / "cls"), learning_rate=1e-2, num_train_epochs=8, per_device_train_batch_size=2,
                   report_to="none", disable_tqdm=True)
    if method == "aria":  # the TRL-style trainer, as the aria-trl Quick Start uses it with a classifier
        trainer = ContinualSFTTrainer(model, ContinualSFTConfig(**options), processing_class=tokenizer,
                                      aria_config=ARIAConfig(adapter_dim=8, fisher_samples=4, shared_lr_ratio=1))
    else:
        trainer = ContinualTrainer(model, ContinualTrainingArguments(**options), method=build_method(method),
                                   processing_class=tokenizer)
    data, probes = dataset(REVIEW, [("zobi", "positive"), ("kemu", "negative")])
    trainer.add_task(Task(name="review", train=data, probes=probes))
    trainer.consolidate_task()
    row = trainer.evaluate_all_tasks()
    assert row.em == [1.0] and {p["prediction"] for p in row.predictions} == {"positive", "negative"}
    if method == "aria":  # the new classification head trains with the fast weights
        trained = {id(p) for group in trainer.optimizer.param_groups if group["name"] == "fast" for p in group["params"]}
        assert id(model.score.weight) in trained and row.routing_accuracy == 1.0
    with pytest.raises(ValueError, match="'neutral' is not one of the model's labels"):
        trainer.tokenize([{"prompt": "x", "completion": " neutral"}])
