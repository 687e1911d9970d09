import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from retain import ContinualTrainer, Method, RunDirectory, Stream, Task, build_method

from conftest import fact_task


@dataclass
class _NoConfig:
    pass


class ConstantGradientPenalty(Method):
    """Adds an unused parameter p with penalty 3·Σp, so p's gradient per optimizer step must be exactly 3."""

    name = "constant_penalty"
    config_class = _NoConfig

    def prepare(self, model: nn.Module) -> nn.Module:
        model.register_parameter("probe_weight", nn.Parameter(torch.zeros(4)))
        self.grads: list[torch.Tensor] = []
        return model

    def after_forward(self, model, inputs, context):
        return 3.0 * model.probe_weight.sum()

    def after_backward(self, model, context):
        self.grads.append(model.probe_weight.grad.clone())


@pytest.mark.parametrize("accumulation", [1, 2, 3])
def test_penalty_counts_once_per_optimizer_step_under_accumulation(make_model, tokenizer, training_args, accumulation):
    method = ConstantGradientPenalty()
    trainer = ContinualTrainer(
        make_model(), training_args(gradient_accumulation_steps=accumulation, per_device_train_batch_size=1,
                                    num_train_epochs=1, learning_rate=0.0, max_grad_norm=0.0),
        method=method, processing_class=tokenizer,
    )
    trainer.add_task(fact_task("a", [("X is", "y"), ("Z is", "w"), ("Q is", "r")], repeats=2))  # 6 examples
    completed = method.grads[accumulation - 1 :: accumulation]
    assert len(completed) == 6 // accumulation
    for grad in completed:
        torch.testing.assert_close(grad, torch.full((4,), 3.0))


def test_lifecycle_order_is_enforced(make_model, tokenizer, training_args):
    trainer = ContinualTrainer(make_model(), training_args(num_train_epochs=1), processing_class=tokenizer)
    with pytest.raises(RuntimeError, match="no task was trained"):
        trainer.consolidate_task()
    trainer.add_task(fact_task("a", [("X is", "y")]))
    with pytest.raises(RuntimeError, match="consolidate_task\\(\\) for task 'a' first"):
        trainer.add_task(fact_task("b", [("Z is", "w")]))
    trainer.consolidate_task()
    row = trainer.evaluate_all_tasks()
    assert len(row.em) == 1 and trainer.last_timing["train_tokens"] > 0


def test_prompt_completion_examples_train_on_the_completion_only(make_model, tokenizer, training_args):
    trainer = ContinualTrainer(make_model(), training_args(), processing_class=tokenizer)
    [feature] = trainer.tokenize([{"prompt": "Q: who?", "completion": " Ilse"}])
    prompt_length = len(tokenizer("Q: who?").input_ids)
    assert feature["labels"][:prompt_length] == [-100] * prompt_length
    assert feature["labels"][prompt_length:] == feature["input_ids"][prompt_length:]
    assert feature["input_ids"][-1] == tokenizer.eos_token_id


def test_fit_learns_and_fills_the_matrix(make_model, tokenizer, training_args, small_stream, tmp_path):
    trainer = ContinualTrainer(make_model(), training_args(num_train_epochs=30, learning_rate=1e-2, lr_scheduler_type="constant"), processing_class=tokenizer)
    run_dir = RunDirectory(tmp_path / "run", {"test": 1})
    result = trainer.fit(small_stream, run_dir=run_dir, model_name="tiny")
    em = result.matrix("em")
    assert len(em) == 3 and all(len(row) == 3 for row in em)
    assert result.rows[0].label == "initial" and result.rows[0].em == [0.0, 0.0, 0.0]
    assert all(em[i][i] >= 0.5 for i in range(3)), "a tiny model memorises two facts in 30 epochs"
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["complete"] and saved["matrix"]["em"] == em and saved["initial"]["em"] == [0.0, 0.0, 0.0]
    assert set(saved["summary"]) >= {"acc", "bwt", "fwt", "forgetting", "general_ppl", "f1"}
    assert len(saved["summary"]["general_ppl"]) == 4
    assert set(saved["by_kind"]) == {"recall"}
    assert [t["task"] for t in saved["timings"]] == ["one", "two", "three"]
    assert all(t["tokens_per_second"] > 0 and t["optimizer_steps"] > 0 for t in saved["timings"])
    parameters = sum(p.numel() for p in trainer.model.parameters())
    # AdamW keeps two fp32 moments per trainable weight (plus a scalar step per tensor)
    assert all(8 * parameters <= t["optimizer_state_bytes"] <= 8 * parameters + 4096 for t in saved["timings"])
    assert all(t["trainable_parameters"] == parameters for t in saved["timings"])
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 6  # 6 probes, evaluated before training and after each of 3 tasks
    first = json.loads(lines[0])
    assert set(first) >= {"row", "task", "probe", "prediction", "correct"}


class Crash(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if len(self.trainer.tasks) == 2 and state.global_step == 2:
            raise KeyboardInterrupt("simulated kill in the middle of the second task")


FEED_FORWARD = {"memory": "feed_forward", "k": "8", "top_t": "8", "lr": "10"}  # k=8: the tiny model's memory is written
RESUME_OPTIONS = {"full_ft": {}, "lora": {"r": "4"}, "replay": {"ratio": "0.5"}, "ewc": {"fisher_samples": "2"},
                  "aria": {"adapter_dim": "8", "fisher_samples": "2"}, "smf": FEED_FORWARD, "casm": FEED_FORWARD}


def timed(stream):
    """The stream with a period per task, as CASM needs."""
    tasks = [Task(name=t.name, period=year, train=t.train, probes=t.probes) for t, year in zip(stream.tasks, ("2018", "2020", "2022"))]
    return Stream(name=stream.name, tasks=tasks, general=stream.general, background=stream.background)


@pytest.mark.parametrize("method_name", sorted(RESUME_OPTIONS))
def test_resume_after_a_kill_equals_an_uninterrupted_run(make_model, tokenizer, training_args, small_stream, tmp_path, method_name):
    stream = timed(small_stream)

    def run(path, crash: bool):
        args = training_args(num_train_epochs=4, learning_rate=1e-2)
        method = build_method(method_name, RESUME_OPTIONS[method_name])
        trainer = ContinualTrainer(make_model(), args, method=method, processing_class=tokenizer)
        if crash:
            trainer.add_callback(Crash(trainer))
        return trainer, trainer.fit(stream, run_dir=RunDirectory(path, {"m": method_name}, resume=path.exists()))

    reference_trainer, reference = run(tmp_path / "whole", crash=False)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", crash=True)
    partial = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert partial["complete"] is False and len(partial["matrix"]["em"]) == 1
    resumed_trainer, resumed = run(tmp_path / "killed", crash=False)

    assert resumed.matrix("em") == reference.matrix("em")
    assert resumed.matrix("f1") == reference.matrix("f1")
    for (name, a), (_, b) in zip(reference_trainer.model.named_parameters(), resumed_trainer.model.named_parameters()):
        assert torch.equal(a, b), name
    assert (tmp_path / "killed" / "predictions.jsonl").read_text().count("\n") == 4 * 6
    # The run trained something: a method that changed nothing would make this test vacuous.
    untrained = build_method(method_name, RESUME_OPTIONS[method_name]).prepare(make_model())
    changed = [name for (name, a), (_, b) in zip(untrained.named_parameters(), resumed_trainer.model.named_parameters())
               if a.shape == b.shape and not torch.equal(a, b)]
    assert changed, f"{method_name} changed no weight"
    if method_name in ("smf", "casm"):
        assert all(t["slots_written"] > 0 for t in resumed.timings)
        writer = resumed_trainer.method.writer if method_name == "casm" else resumed_trainer.method  # CASM's SMF writer
        assert all(len(w) > 0 for w in writer.written)


def test_a_kill_while_a_checkpoint_is_written_resumes_from_the_one_before(
        make_model, tokenizer, training_args, small_stream, tmp_path, monkeypatch):
    import retain.runstate

    def run(path):
        trainer = ContinualTrainer(make_model(), training_args(num_train_epochs=2), processing_class=tokenizer)
        return trainer, trainer.fit(small_stream, run_dir=RunDirectory(path, {"m": "full_ft"}, resume=path.exists()))

    reference_trainer, reference = run(tmp_path / "whole")
    write, calls = retain.runstate.atomic_write, []

    def killed_before_latest(path, data):  # the second checkpoint is renamed into place, LATEST not yet updated
        if path.name == "LATEST":
            calls.append(data)
            if len(calls) == 2:
                raise KeyboardInterrupt("killed before LATEST was written")
        return write(path, data)

    monkeypatch.setattr(retain.runstate, "atomic_write", killed_before_latest)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed")
    monkeypatch.undo()
    assert (tmp_path / "killed" / "checkpoints" / "LATEST").read_text() == "task-001"
    resumed_trainer, resumed = run(tmp_path / "killed")
    assert resumed.matrix("em") == reference.matrix("em") and resumed.complete
    for a, b in zip(reference_trainer.model.parameters(), resumed_trainer.model.parameters()):
        assert torch.equal(a, b)
