"""Continual metrics reach the tools users already watch, through the Trainer's own logging (`--report_to`)."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from retain import ContinualTrainer, build_method


def test_every_evaluation_row_is_logged_to_tensorboard(make_model, tokenizer, training_args, small_stream, tmp_path):
    args = training_args(report_to=["tensorboard"], output_dir=str(tmp_path / "out"), num_train_epochs=1)
    trainer = ContinualTrainer(make_model(), args, method=build_method("full_ft"), processing_class=tokenizer)
    result = trainer.fit(small_stream)
    [logs] = (tmp_path / "out" / "runs").iterdir()  # the Trainer's own place for them: one run, all rows in it
    events = EventAccumulator(str(logs))
    events.Reload()
    scalars = set(events.Tags()["scalars"])

    def series(tag: str) -> list[tuple[int, float]]:
        return [(event.step, event.value) for event in events.Scalars(tag)]

    # One point per evaluation row, at step = tasks learned (0: the untrained model), each equal to the result's.
    for index, name in enumerate(result.tasks):
        assert series(f"eval/em/{name}") == [(step, result.rows[step].em[index]) for step in range(len(result.rows))]
    ppl = series("eval/general_ppl")
    assert [step for step, _ in ppl] == [0, 1, 2, 3]
    assert all(abs(value - row.general_ppl) <= 1e-3 * row.general_ppl for (_, value), row in zip(ppl, result.rows))
    assert [value for _, value in series("eval/acc")][-1] == result.summary()["acc"]
    assert {"eval/bwt", "eval/forgetting", "eval/train_seconds", "eval/train_tokens"} <= scalars
    assert [int(value) for _, value in series("eval/train_tokens")] == [t["train_tokens"] for t in result.timings]
