import pytest

from retain import metrics

# R[i][j]: score on task j after training through task i (hand-made, 3 tasks).
R = [
    [0.9, 0.1, 0.0],
    [0.5, 0.8, 0.2],
    [0.3, 0.6, 0.7],
]
INITIAL = [0.0, 0.1, 0.1]


def test_acc_is_the_last_row_mean():
    assert metrics.acc(R) == pytest.approx((0.3 + 0.6 + 0.7) / 3)


def test_bwt_compares_last_row_with_the_diagonal():
    assert metrics.bwt(R) == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)


def test_fwt_compares_the_row_before_each_task_with_the_untrained_model():
    assert metrics.fwt(R, INITIAL) == pytest.approx(((0.1 - 0.1) + (0.2 - 0.1)) / 2)


def test_forgetting_uses_the_best_earlier_score():
    matrix = [[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.3, 0.6, 0.7]]
    # task 0 peaked at 0.9 after task 1, not at its own row: forgetting counts from the peak.
    assert metrics.forgetting(matrix) == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    assert metrics.bwt(matrix) == pytest.approx(((0.3 - 0.5) + (0.6 - 0.8)) / 2)


def test_acc_curve_averages_the_tasks_seen_so_far():
    assert metrics.acc_curve(R) == pytest.approx([0.9, 0.65, (0.3 + 0.6 + 0.7) / 3])


def test_single_task_has_no_transfer_metrics():
    summary = metrics.summarize([[0.4]], [0.1])
    assert summary["acc"] == pytest.approx(0.4)
    assert summary["bwt"] is None and summary["fwt"] is None and summary["forgetting"] is None


def test_missing_cells_are_left_out():
    matrix = [[None, 0.2], [None, 0.6]]
    assert metrics.acc(matrix) == pytest.approx(0.6)
    assert metrics.bwt(matrix) is None


def test_summarize_rejects_a_ragged_matrix():
    with pytest.raises(ValueError, match="square"):
        metrics.summarize([[0.1, 0.2]], [0.0, 0.0])


def test_plasticity_and_stability_read_the_diagonal_from_period_one():
    changed = [[None, 0.0, 0.0], [None, 0.8, 0.0], [None, 0.2, 0.6]]
    assert metrics.diagonal_mean(changed) == pytest.approx((0.8 + 0.6) / 2)


def test_historical_counts_only_questions_whose_answer_moved_on():
    last_row = [
        {"task": "2018", "key": "a", "answer": "x", "correct": True},   # a changed later: historical
        {"task": "2018", "key": "b", "answer": "y", "correct": False},  # b changed later: historical
        {"task": "2018", "key": "c", "answer": "z", "correct": False},  # c never changed: not historical
        {"task": "2020", "key": "a", "answer": "x2", "correct": True},
        {"task": "2020", "key": "b", "answer": "y2", "correct": True},
        {"task": "2020", "key": "c", "answer": "z", "correct": True},
    ]
    assert metrics.historical(last_row, "2020") == pytest.approx(0.5)
    assert metrics.historical(last_row[3:], "2020") is None


def test_run_summary_has_the_temporal_metrics():
    from retain.result import EvalRow, RunResult

    def row(label, changed, unchanged, predictions=()):
        return EvalRow(label=label, em=[0.0, 0.0], f1=[0.0, 0.0], general_ppl=10.0, eval_seconds=0.0,
                       by_kind={"changed": {"em": changed, "f1": changed}, "unchanged": {"em": unchanged, "f1": unchanged}},
                       predictions=list(predictions))

    last = [
        {"task": "2018", "key": "a", "answer": "old", "correct": True, "f1": 1.0},
        {"task": "2018", "key": "b", "answer": "same", "correct": False, "f1": 0.0},
        {"task": "2020", "key": "a", "answer": "new", "correct": True, "f1": 1.0},
        {"task": "2020", "key": "b", "answer": "same", "correct": True, "f1": 1.0},
    ]
    result = RunResult(method="m", model="x", seed=0, tasks=["2018", "2020"], rows=[
        row("initial", [None, 0.0], [None, 0.0]), row("2018", [None, 0.0], [None, 0.0]), row("2020", [None, 0.75], [None, 0.5], last)])
    summary = result.summary("em")
    assert summary["plasticity"] == pytest.approx(0.75)
    assert summary["stability"] == pytest.approx(0.5)
    assert summary["historical"] == pytest.approx(1.0)  # only key a moved on, and its 2018 answer is still known
