import json

import pytest
import torch

from retain import RunDirectory, RunDirectoryError
from retain.result import EvalRow, RunResult
from retain.runstate import atomic_write


def result_with_rows(n: int) -> RunResult:
    result = RunResult(method="m", model="tiny", seed=0, tasks=["a", "b"])
    for i in range(n):
        result.rows.append(EvalRow(label=str(i), em=[0.5, None], f1=[0.5, None], by_kind={}, general_ppl=None, eval_seconds=0.1))
    return result


def test_refuses_to_clobber_an_existing_run(tmp_path):
    RunDirectory(tmp_path / "run", {"a": 1})
    with pytest.raises(RunDirectoryError, match="already holds a run; pass --resume"):
        RunDirectory(tmp_path / "run", {"a": 1})
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"a": 1}
    RunDirectory(tmp_path / "run", {"a": 2}, overwrite=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"a": 2}


def test_resume_requires_the_same_config(tmp_path):
    with pytest.raises(RunDirectoryError, match="nothing to resume"):
        RunDirectory(tmp_path / "none", {"a": 1}, resume=True)
    RunDirectory(tmp_path / "run", {"a": 1, "b": 2})
    with pytest.raises(RunDirectoryError, match=r"b: saved 2, now 3"):
        RunDirectory(tmp_path / "run", {"a": 1, "b": 3}, resume=True)


def test_checkpoint_round_trip_and_latest_pointer(tmp_path, make_model):
    run = RunDirectory(tmp_path / "run", {})
    model = make_model(seed=1)
    assert run.load_checkpoint(model) is None
    run.save_checkpoint(model, {"buffer": [1, 2]}, result_with_rows(2))
    # a crash while writing the next checkpoint leaves only a staging directory behind
    (run.checkpoints / ".task-002.abc").mkdir()
    (run.checkpoints / ".task-002.abc" / "model.safetensors").write_bytes(b"half")
    other = make_model(seed=2)
    method_state, result = run.load_checkpoint(other)
    assert method_state == {"buffer": [1, 2]}
    assert result.completed_tasks == 1 and result.rows[1].em == [0.5, None]
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert (run.checkpoints / "LATEST").read_text() == "task-001"


def test_a_new_checkpoint_replaces_the_old_one(tmp_path, make_model):
    run = RunDirectory(tmp_path / "run", {})
    model = make_model()
    run.save_checkpoint(model, {}, result_with_rows(2))
    run.save_checkpoint(model, {}, result_with_rows(3))
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["LATEST", "task-002"]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    atomic_write(target, "old")

    def disk_full(fd):
        raise OSError("disk full")

    monkeypatch.setattr("retain.runstate.os.fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
