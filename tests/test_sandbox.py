"""A run directory is a sandbox: retain follows no symbolic link in it, reads only its own checkpoint names and files,
deletes only what it wrote, lets one process write at a time, and reports a full disk in one line."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from retain.cli import main
from retain.runstate import LOCK

# The training options `finished_run` (conftest.py) ran with, without its method: a resume must give the same.
FAST = ["--model", "tiny", "--num_train_epochs", "1", "--max_new_tokens", "4", "--disable_tqdm", "true",
        "--learning_rate", "0.01"]


@pytest.fixture
def made(finished_run):
    return finished_run


@pytest.fixture
def run(made, tmp_path):
    shutil.copytree(made / "run", tmp_path / "run")
    return tmp_path / "run"


def argv(made, run, *extra):
    return ["run", "--stream", str(made / "stream"), *FAST, "--output", str(run), *extra]


def fails(capsys, arguments, pattern, before_anything=True):
    """Exit 2 with one error line matching `pattern`, no traceback; `before_anything`: nothing else on stderr either
    (no model was loaded, no task trained)."""
    capsys.readouterr()
    assert main(arguments) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err and (len(err.splitlines()) == 1 or not before_anything), err
    assert re.search(pattern, errors[0]), err
    return errors[0]


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_symbolic_link_in_a_run_is_refused_and_nothing_outside_is_touched(made, run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(mine)
    for extra in (["--resume"], ["--overwrite"]):
        fails(capsys, argv(made, run, *extra), r"checkpoints: a symbolic link in a run directory; retain follows none")
    fails(capsys, ["ask", "--run", str(run), "The mayor of"], r"a symbolic link in a run directory")
    assert files(mine) == {"thesis.tex": b"mine"}
    link = tmp_path / "link"
    link.symlink_to(run)
    fails(capsys, argv(made, link, "--overwrite"), rf"{link}: a symbolic link in a run directory")
    assert run.is_dir()


@pytest.mark.parametrize("case", ["lone config", "config and result", "file in checkpoints", "folder in a checkpoint"])
def test_overwrite_deletes_only_what_retain_wrote(made, run, tmp_path, capsys, case):
    if case in ("lone config", "config and result"):
        run = tmp_path / "model"
        run.mkdir()
        (run / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
        if case == "config and result":
            (run / "result.json").write_text('{"accuracy": 1}')
        where = r"config.json \(not a retain run's\)"
    elif case == "file in checkpoints":
        (run / "checkpoints" / "notes.txt").write_text("mine")
        where = r"checkpoints/notes.txt"
    else:
        (run / "checkpoints" / "task-003" / "extra").mkdir()
        where = r"checkpoints/task-003/extra"
    before, entries = files(run), sorted(run.rglob("*"))
    fails(capsys, argv(made, run, "--overwrite"), rf"holds files retain did not write \({where}\); retain never deletes")
    assert files(run) == before and sorted(run.rglob("*")) == entries  # nothing deleted, nothing made (no trainer/)


def test_overwrite_replaces_a_run_retain_wrote(made, run, capsys):
    assert main(argv(made, run, "--overwrite", "--seed", "1")) == 0
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "task-002", "task-003"]


@pytest.mark.parametrize("entry", ["../../outside/secret.txt", "/etc/hostname"])
def test_a_manifest_naming_a_path_is_damaged_and_the_previous_checkpoint_is_used(made, run, tmp_path, caplog, entry):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    manifest = run / "checkpoints" / "task-003" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"][entry] = {"size": 6, "sha256": "0" * 64}
    manifest.write_text(json.dumps(data))
    assert main(argv(made, run, "--resume")) == 0
    assert re.search(rf"manifest.json: damaged \(lists '{re.escape(entry)}', not a file of the checkpoint\); resuming "
                     r"from task-002 instead", caplog.text)


@pytest.mark.parametrize("name", ["../../other/checkpoints/task-003", "/tmp/task-003", "task-003/../../x"])
def test_latest_naming_a_path_is_refused_by_name(made, run, tmp_path, caplog, capsys, name):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (run / "checkpoints" / "LATEST").write_text(name)
    assert main(argv(made, run, "--resume")) == 0  # this run's own newest checkpoint, not the other run's
    assert re.search(rf"LATEST: names '{re.escape(name)}', not a checkpoint of this run \(task-NNN\); resuming from "
                     r"task-003 instead", caplog.text)
    assert json.loads((run / "result.json").read_text())["method"] == "ewc"


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(made, run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from retain.runstate import RunLock; RunLock(Path(sys.argv[1])); print('held', flush=True); "
                               "time.sleep(60)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = files(run)
        for extra in (["--resume"], ["--overwrite"]):
            fails(capsys, argv(made, run, *extra), rf"another retain process is writing to it \(pid {holder.pid}, "
                                                   r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
        assert files(run) == before
        assert main(["ask", "--run", str(run), "The mayor of"]) == 0  # a reader does not wait for the writer
    finally:
        holder.kill()
        holder.wait()
    assert main(argv(made, run, "--overwrite")) == 0  # the dead holder's lock is released by the system
    assert f"pid {os.getpid()}" in (run / LOCK).read_text()


def test_a_full_disk_is_one_line_naming_the_intact_checkpoint(made, tmp_path, capsys, monkeypatch):
    calls = []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # the second task's checkpoint
            raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')
        from safetensors.torch import save_file as real
        real(tensors, filename, metadata)

    monkeypatch.setattr("retain.runstate.save_file", save_file)
    out = tmp_path / "run"
    fails(capsys, argv(made, out), r"checkpoints: could not write checkpoint task-002 \(No space left on device\); "
                                   r"the previous checkpoint task-001 is intact$", before_anything=False)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["LATEST", "task-001"]
    monkeypatch.undo()
    assert main(argv(made, out, "--resume")) == 0


def test_a_killed_runs_leftovers_are_cleared_when_it_resumes(made, run):
    checkpoints = run / "checkpoints"
    shutil.copytree(checkpoints / "task-002", checkpoints / "task-001")  # killed just after LATEST moved
    (checkpoints / ".task-004.k2j3").mkdir()  # killed while staging
    (checkpoints / ".LATEST.abc").write_text("task-004")
    (run / ".result.json.x1").write_text("{")
    assert main(argv(made, run, "--resume")) == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["LATEST", "task-002", "task-003"]
    assert not (run / ".result.json.x1").exists()


def rehash(checkpoint):
    """Rewrite a checkpoint's manifest for its files as they are now: a malformed file that its manifest vouches for."""
    files = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(checkpoint.iterdir()) if p.name != "manifest.json"}
    (checkpoint / "manifest.json").write_text(json.dumps({"format": 1, "files": files}))


@pytest.mark.parametrize("case, message", [
    ("bad header", r"task-003/model.safetensors: does not fit the model \("),
    ("wrong shape", r"task-003/model.safetensors: does not fit the model \("),
    ("method wrong keys", r"task-003/method.json: does not fit the method \("),
    ("method nested deep", r"task-003"),
    ("progress without result", r"task-003/progress.json: damaged \(no result\)"),
    ("manifest lists nothing", r"task-003/manifest.json: damaged \(does not list model.safetensors\)"),
])
def test_a_malformed_checkpoint_file_is_named_and_the_previous_checkpoint_used(made, run, caplog, case, message):
    checkpoint = run / "checkpoints" / "task-003"
    if case == "bad header":
        (checkpoint / "model.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    elif case == "wrong shape":
        weights = load_file(checkpoint / "model.safetensors")
        name = next(iter(weights))
        weights[name] = weights[name][:1].clone()
        save_file(weights, checkpoint / "model.safetensors")
    elif case == "method wrong keys":
        (checkpoint / "method.json").write_text(json.dumps({"unexpected": 1}))
    elif case == "method nested deep":
        (checkpoint / "method.json").write_text("[" * 100_000 + "]" * 100_000)
    elif case == "progress without result":
        (checkpoint / "progress.json").write_text(json.dumps({"method": "full_ft"}))
    if case == "manifest lists nothing":
        (checkpoint / "manifest.json").write_text(json.dumps({"format": 1, "files": {}}))
    else:
        rehash(checkpoint)
    assert main(argv(made, run, "--resume")) == 0
    assert re.search(message + r".*resuming from task-002 instead", caplog.text), caplog.text


def test_a_run_killed_while_it_holds_the_lock_resumes_to_what_an_uninterrupted_run_computes(made, tmp_path):
    """SIGKILL mid-stream: the dead writer's lock is taken over by the resume, which ends where one run would have."""
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "retain.cli", *argv(made, killed, "--method", "ewc", "--method-arg", "fisher_samples=4")]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "LATEST"
    while process.poll() is None and not (latest.is_file() and latest.read_text() == "task-001"):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert latest.read_text() == "task-001", "the run ended before it could be killed mid-stream"
    assert main(argv(made, killed, "--resume")) == 0
    mine, whole = (json.loads((run / "result.json").read_text()) for run in (killed, made / "run"))
    assert mine["matrix"] == whole["matrix"] and mine["complete"]
    assert load_file(killed / "checkpoints" / "task-003" / "model.safetensors").keys() == \
        load_file(made / "run" / "checkpoints" / "task-003" / "model.safetensors").keys()
    a, b = (load_file(run / "checkpoints" / "task-003" / "model.safetensors") for run in (killed, made / "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compare_writes_only_into_a_new_empty_or_comparison_folder(made, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my own report")
    fails(capsys, ["compare", "--methods", "full_ft", "--stream", str(made / "stream"), *FAST, "--output", str(mine),
                   "--overwrite"], r"--output .*mine: holds report.md, which retain did not write \(no compare.json\)")
    assert files(mine) == {"report.md": b"my own report"}
