"""Continual metrics reach the tools users already watch, through the Trainer's own logging (`--report_to`), on one
step axis for the whole stream."""

import itertools

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from retain import ContinualTrainer, build_method


def scalars(directory):
    [logs] = directory.iterdir()  # the Trainer's own place for them: one run, all rows in it
    events = EventAccumulator(str(logs))
    events.Reload()
    # By step: the Trainer opens an event file per task's train(), and files written in the same second are read in
    # no fixed order.
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]}


def task_ends(result) -> list[int]:
    """The run's optimizer step at each evaluation row: 0, then where each task's training ended."""
    return [0, *itertools.accumulate(t["optimizer_steps"] for t in result.timings)]


def test_every_evaluation_row_is_logged_where_its_task_ended(make_model, tokenizer, training_args, small_stream, tmp_path):
    args = training_args(report_to=["tensorboard"], output_dir=str(tmp_path / "out"), num_train_epochs=1)
    trainer = ContinualTrainer(make_model(), args, method=build_method("full_ft"), processing_class=tokenizer)
    result = trainer.fit(small_stream)
    series, ends = scalars(tmp_path / "out" / "runs"), task_ends(result)
    assert ends == sorted(set(ends)) and ends[-1] > len(result.tasks)  # steps of the run, not tasks
    # One point per evaluation row, each equal to the result's.
    for index, name in enumerate(result.tasks):
        assert series[f"eval/em/{name}"] == [(ends[row], result.rows[row].em[index]) for row in range(len(result.rows))]
    assert series["eval/tasks_learned"] == [(step, row) for row, step in enumerate(ends)]
    ppl = series["eval/general_ppl"]
    assert [step for step, _ in ppl] == ends
    assert all(abs(value - row.general_ppl) <= 1e-3 * row.general_ppl for (_, value), row in zip(ppl, result.rows))
    assert [value for _, value in series["eval/acc"]][-1] == result.summary()["acc"]
    assert {"eval/bwt", "eval/forgetting", "eval/train_seconds", "eval/train_tokens"} <= set(series)
    assert [int(value) for _, value in series["eval/train_tokens"]] == [t["train_tokens"] for t in result.timings]


def test_training_curves_continue_from_task_to_task(make_model, tokenizer, training_args, small_stream, tmp_path):
    # --logging_steps given, the strategy is "steps", as in the Trainer: a point every step of the run.
    args = training_args(report_to=["tensorboard"], output_dir=str(tmp_path / "out"), num_train_epochs=1,
                         logging_strategy=None, logging_steps=1)
    assert args.logging_strategy == "steps"
    trainer = ContinualTrainer(make_model(), args, method=build_method("full_ft"), processing_class=tokenizer)
    result = trainer.fit(small_stream)
    series, ends = scalars(tmp_path / "out" / "runs"), task_ends(result)
    steps = [step for step, _ in series["train/loss"]]
    assert steps == list(range(1, ends[-1] + 1))  # one curve: no step repeated when a task starts
    assert [step for step, _ in series["train/learning_rate"]] == steps
    # `train/task` marks the boundaries: task i's points lie between the ends of tasks i-1 and i.
    # (The summary the Trainer logs as each task's training ends is marked too, at that task's last step.)
    assert sorted(set(series["train/task"])) == [(s, float(next(i for i, end in enumerate(ends) if s <= end)))
                                                 for s in steps]


def test_logging_every_n_steps_counts_the_run_not_each_task(make_model, tokenizer, training_args, small_stream, tmp_path):
    args = training_args(report_to=["tensorboard"], output_dir=str(tmp_path / "out"), num_train_epochs=1,
                         logging_strategy=None, logging_steps=4)
    trainer = ContinualTrainer(make_model(), args, method=build_method("full_ft"), processing_class=tokenizer)
    result = trainer.fit(small_stream)
    steps = [step for step, _ in scalars(tmp_path / "out" / "runs")["train/loss"]]
    assert steps == list(range(4, task_ends(result)[-1] + 1, 4))


def test_a_wandb_run_is_finished_with_the_stream(make_model, tokenizer, training_args, small_stream, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="wandb is a dev dependency; `make setup` installs it")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    finished = []
    real_finish = wandb.finish
    monkeypatch.setattr(wandb, "finish", lambda *a, **k: finished.append(dict(wandb.run.summary)) or real_finish(*a, **k))
    args = training_args(report_to=["wandb"], output_dir=str(tmp_path / "out"), num_train_epochs=1)
    trainer = ContinualTrainer(make_model(), args, method=build_method("full_ft"), processing_class=tokenizer)
    result = trainer.fit(small_stream)
    assert wandb.run is None, "the run is still open after the stream"
    [summary] = finished  # finished once, holding the last evaluation row
    assert summary["eval/acc"] == pytest.approx(result.summary()["acc"])
    assert summary["eval/tasks_learned"] == len(result.tasks)
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
