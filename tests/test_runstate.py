import json

import pytest
import torch

from retain import RunDirectory, RunDirectoryError
from retain.cli import main
from retain.result import EvalRow, RunResult
from retain.runstate import CONFIG_KEYS, atomic_write, config_changes


def config_of(**options) -> dict:
    """A run's config.json (the keys retain writes), with `options`."""
    return dict.fromkeys(CONFIG_KEYS, 0) | options


def result_with_rows(n: int) -> RunResult:
    result = RunResult(method="m", model="tiny", seed=0, tasks=["a", "b", "c"])
    for i in range(n):
        result.rows.append(EvalRow(label=str(i), em=[0.5, None, None], f1=[0.5, None, None], by_kind={},
                                   general_ppl=None, eval_seconds=0.1))
    return result


def test_refuses_to_clobber_an_existing_run(tmp_path):
    RunDirectory(tmp_path / "run", config_of(a=1))
    with pytest.raises(RunDirectoryError, match="already holds a run; pass --resume"):
        RunDirectory(tmp_path / "run", config_of(a=1))
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == config_of(a=1)
    RunDirectory(tmp_path / "run", config_of(a=2), overwrite=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == config_of(a=2)


def test_overwrite_never_deletes_a_directory_retain_did_not_write(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match=r"holds files retain did not write \(no config.json\); retain never"):
        RunDirectory(notes, config_of(a=1), overwrite=True)
    run = tmp_path / "run"
    RunDirectory(run, config_of(a=1))
    (run / "thesis.tex").write_text("also mine")  # a run directory someone put a file into
    with pytest.raises(RunDirectoryError, match=r"retain did not write \(thesis.tex\)"):
        RunDirectory(run, config_of(a=1), overwrite=True)
    assert (notes / "notes.txt").read_text() == "mine" and (run / "thesis.tex").is_file()
    assert main(["run", "--stream", "examples/demo-stream", "--output", str(notes), "--model", "tiny", "--overwrite"]) == 2
    assert "retain never deletes those" in capsys.readouterr().err and (notes / "notes.txt").read_text() == "mine"


def test_an_output_under_a_regular_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="a file stands where a directory is needed"):
        RunDirectory(tmp_path / "file" / "run", {})


def test_resume_requires_the_same_config_and_names_what_differs(tmp_path):
    with pytest.raises(RunDirectoryError, match="nothing to resume"):
        RunDirectory(tmp_path / "none", {"a": 1}, resume=True)
    big = {f"option_{i}": i for i in range(200)}
    RunDirectory(tmp_path / "run", {"a": 1, "training_args": {**big, "learning_rate": 2e-4}})
    with pytest.raises(RunDirectoryError) as error:
        RunDirectory(tmp_path / "run", {"a": 1, "training_args": {**big, "learning_rate": 1e-3}}, resume=True)
    assert str(error.value).endswith("1 option(s) differ from the run in " + str(tmp_path / "run")
                                     + ": training_args.learning_rate: saved 0.0002, now 0.001")
    assert config_changes({"s": {"x.jsonl": "ab"}}, {"s": {"x.jsonl": "cd", "y.jsonl": "ef"}}) == \
        ["s.x.jsonl: saved 'ab', now 'cd'", "s.y.jsonl: saved None, now 'ef'"]


def test_checkpoint_round_trip_keeps_the_newest_two(tmp_path, make_model):
    run = RunDirectory(tmp_path / "run", {})
    model = make_model(seed=1)
    assert run.load_checkpoint(model) is None
    state = {"buffer": [{"input_ids": [1, 2]}], "rng": (3, (1, 2), None), "fisher": {"w": torch.ones(2, 2)}}
    run.save_checkpoint(model, state, result_with_rows(2), "m")
    # a crash while writing the next checkpoint leaves only a staging directory behind
    (run.checkpoints / ".task-002.abc").mkdir()
    (run.checkpoints / ".task-002.abc" / "model.safetensors").write_bytes(b"half")
    other = make_model(seed=2)
    method_state, result = run.load_checkpoint(other)
    assert method_state["rng"] == (3, (1, 2), None) and torch.equal(method_state["fisher"]["w"], torch.ones(2, 2))
    assert method_state["buffer"] == [{"input_ids": [1, 2]}]
    assert result.completed_tasks == 1 and result.rows[1].em == [0.5, None, None]
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    run.save_checkpoint(model, {}, result_with_rows(3))
    run.save_checkpoint(model, {}, result_with_rows(4))
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["LATEST", "task-002", "task-003"]
    assert sorted(p.name for p in (run.checkpoints / "task-003").iterdir()) == \
        ["manifest.json", "method.json", "method.safetensors", "model.safetensors", "progress.json"]


def plant_old_checkpoint(run, target, malicious: bool):
    checkpoint = run / "checkpoints" / "task-001"
    checkpoint.mkdir(parents=True)
    if malicious:  # a protocol-0 pickle that calls exec(...) when loaded
        (checkpoint / "method.pt").write_bytes(b"cbuiltins\nexec\n(Vopen(" + repr(str(target)).encode()
                                               + b", 'w').write('ran')\ntR.")
    else:  # what older retain wrote: torch.save of plain containers and tensors
        torch.save({"buffer": [1, 2], "fisher": torch.ones(2)}, checkpoint / "method.pt")
    (run / "checkpoints" / "LATEST").write_text("task-001")
    return checkpoint


def test_a_planted_pickle_never_runs_and_the_message_names_the_file(tmp_path, make_model, capsys):
    run, target = tmp_path / "run", tmp_path / "pwned"
    config = config_of(method="full_ft", method_args={}, model="tiny", seed=0)
    RunDirectory(run, config)
    checkpoint = plant_old_checkpoint(run, target, malicious=True)
    (checkpoint / "progress.json").write_text("{}")
    with pytest.raises(RunDirectoryError, match=rf"{checkpoint}: saved by an older retain as a pickle.*retain upgrade-run"):
        RunDirectory(run, config, resume=True).load_checkpoint(make_model())
    assert main(["ask", "--run", str(run), "x"]) == 2
    assert "pickle" in capsys.readouterr().err
    assert main(["upgrade-run", str(run)]) == 2  # the converter loads weights only: it refuses this one
    err = capsys.readouterr().err
    assert "cannot be converted safely" in err and len(err.strip().splitlines()) == 1 and "\x1b" not in err
    assert not target.exists()


def test_upgrade_run_converts_a_trusted_old_checkpoint(tmp_path, make_model):
    from safetensors.torch import save_model

    run = tmp_path / "run"
    RunDirectory(run, config_of(method="replay"))
    checkpoint = plant_old_checkpoint(run, None, malicious=False)
    model = make_model(seed=3)
    save_model(model, str(checkpoint / "model.safetensors"))
    (checkpoint / "progress.json").write_text(json.dumps(result_with_rows(2).state()))
    assert main(["upgrade-run", str(run)]) == 0
    other = make_model(seed=4)
    state, result = RunDirectory(run, config_of(method="replay"), resume=True).load_checkpoint(other)
    assert state["buffer"] == [1, 2] and torch.equal(state["fisher"], torch.ones(2))
    assert result.completed_tasks == 1 and not (checkpoint / "method.pt").exists()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))


@pytest.mark.parametrize("damage", ["truncate model", "corrupt model", "truncate progress", "missing checkpoint"])
def test_a_damaged_latest_checkpoint_is_named_and_resume_falls_back(tmp_path, make_model, caplog, damage):
    run = RunDirectory(tmp_path / "run", {})
    model = make_model(seed=1)
    run.save_checkpoint(model, {"step": 1}, result_with_rows(2))
    run.save_checkpoint(make_model(seed=5), {"step": 2}, result_with_rows(3))
    latest = run.checkpoints / "task-002"
    if damage == "truncate model":
        (latest / "model.safetensors").write_bytes((latest / "model.safetensors").read_bytes()[:1000])
    elif damage == "corrupt model":
        data = bytearray((latest / "model.safetensors").read_bytes())
        data[-10] ^= 0xFF
        (latest / "model.safetensors").write_bytes(bytes(data))
    elif damage == "truncate progress":
        (latest / "progress.json").write_text('{"method": "m", "res')
    else:
        import shutil
        shutil.rmtree(latest)
    other = make_model(seed=2)
    state, result = RunDirectory(tmp_path / "run", {}, resume=True).load_checkpoint(other)
    assert state == {"step": 1} and result.completed_tasks == 1
    assert "task-002" in caplog.text and "resuming from task-001 instead" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    (run.checkpoints / "task-001" / "method.json").write_text("{}")  # now neither is intact
    with pytest.raises(RunDirectoryError, match=r"task-001/method.json: damaged.*no intact checkpoint to resume from"):
        RunDirectory(tmp_path / "run", {}, resume=True).load_checkpoint(other)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, make_model, monkeypatch):
    import errno

    run = RunDirectory(tmp_path / "run", {})
    model = make_model(seed=1)
    run.save_checkpoint(model, {"step": 1}, result_with_rows(2))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("retain.runstate.save_file", disk_full)
    with pytest.raises(RunDirectoryError, match=r"could not write checkpoint task-002 \(No space left on device\); "
                                                r"the previous checkpoint task-001 is intact"):
        run.save_checkpoint(model, {"step": 2}, result_with_rows(3))
    monkeypatch.undo()
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["LATEST", "task-001"]
    state, result = RunDirectory(tmp_path / "run", {}, resume=True).load_checkpoint(make_model(seed=2))
    assert state == {"step": 1} and result.completed_tasks == 1


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


def test_weights_that_are_views_of_one_flat_buffer_are_checkpointed_alone(tmp_path, make_model):
    # DeepSpeed ZeRO-1/2 keeps every parameter as a view of a flat buffer, and tied weights are views of the same.
    model = make_model(seed=3)
    params = list(dict(model.named_parameters()).values())  # tied weights once
    flat = torch.cat([p.detach().flatten() for p in params])
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    run = RunDirectory(tmp_path / "run", {})
    run.save_checkpoint(model, {}, result_with_rows(2))
    restored = make_model(seed=4)
    RunDirectory(tmp_path / "run", {}, resume=True).load_checkpoint(restored)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    assert (tmp_path / "run" / "checkpoints" / "task-001" / "model.safetensors").stat().st_size < 1.1 * flat.nbytes
