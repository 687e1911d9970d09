"""Seeded fuzzing of what users hand retain: malformed streams, configs and run directories, through every command
that reads them. Each case ends in exit 0 or in exit 2 with one `error:` line and no traceback, and nothing outside
the command's output is written or deleted."""

import hashlib
import json
import random
import re
import shutil

import pytest

from retain.cli import main

FAST = ["--model", "tiny", "--num_train_epochs", "1", "--max_new_tokens", "4", "--disable_tqdm", "true"]
CASES = 30  # per kind; each is a fraction of a second (training is stopped where the model would load)
JUNK = ["", "\x00", "\x07", "\xff", "null", "[]", "{}", "-1", "nan", "1e999", "[" * 3000, '"' + "x" * 5000 + '"', "é", "\n\n"]


class Reached(Exception):
    """The command got past every check of its input (to the model's loading): the input was accepted."""


@pytest.fixture
def made(finished_run):
    return finished_run


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage: cut, a junk value spliced in, bytes flipped, a line doubled or dropped, a key renamed."""
    kind = rng.randrange(6)
    at = rng.randrange(len(data) + 1)
    if kind == 0:
        return data[:at]
    if kind == 1:
        return data[:at] + rng.choice(JUNK).encode("utf-8", "surrogateescape") + data[at:]
    if kind == 2:
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            if flipped:
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped)
    lines = data.splitlines(keepends=True) or [b""]
    index = rng.randrange(len(lines))
    if kind == 3:
        return b"".join(lines[: index + 1] + lines[index:])
    if kind == 4:
        return b"".join(lines[:index] + lines[index + 1 :])
    return re.sub(rb'"(\w+)":', lambda m: b'"' + m[1][::-1] + b'":', data, count=1)


def snapshot(root, skip):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(p.is_relative_to(s) for s in skip)}


def check(capsys, argv):
    capsys.readouterr()
    try:
        code = main(argv)
    except Reached:
        return
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if code != 0:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(errors) == 1, (argv, err)


@pytest.mark.parametrize("seed", range(CASES))
def test_a_damaged_stream_is_refused_in_one_line_before_the_model_loads(made, tmp_path, capsys, monkeypatch, seed):
    rng = random.Random(seed)
    stream = tmp_path / "stream"
    shutil.copytree(made / "stream", stream)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("keep")
    files = sorted(p for p in stream.rglob("*") if p.is_file())
    for target in rng.sample(files, rng.randint(1, 2)):
        target.write_bytes(mutate(target.read_bytes(), rng))
    before = snapshot(tmp_path, [tmp_path / "out"])

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr("retain.recipes.load_model", reached)
    method = rng.choice(["full_ft", "casm", "smf", "replay"])
    check(capsys, ["run", "--stream", str(stream), *FAST, "--method", method, "--output", str(tmp_path / "out")])
    assert snapshot(tmp_path, [tmp_path / "out"]) == before


@pytest.mark.parametrize("seed", range(CASES))
def test_a_damaged_config_is_refused_in_one_line(made, tmp_path, capsys, monkeypatch, seed):
    rng = random.Random(1000 + seed)
    config = tmp_path / "config.yaml"
    text = (b"learning_rate: 2.0e-4\nnum_train_epochs: 1\nper_device_train_batch_size: 8\nseed: 0\n"
            b"lr_scheduler_type: constant\nwarmup_steps: 0\n")
    config.write_bytes(mutate(mutate(text, rng), rng))

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr("retain.recipes.load_model", reached)
    check(capsys, ["run", "--stream", str(made / "stream"), *FAST, "--config", str(config), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", range(CASES))
def test_a_damaged_run_directory_is_reported_in_one_line_and_nothing_outside_it_is_touched(made, tmp_path, capsys, seed):
    rng = random.Random(2000 + seed)
    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("keep")
    files = sorted(p for p in run.rglob("*") if p.is_file() and p.name != ".retain.lock")
    for target in rng.sample(files, rng.randint(1, 3)):
        target.write_bytes(mutate(target.read_bytes(), rng))
    if rng.random() < 0.3:  # a manifest vouching for the damage: each file is then read, and must fail by name
        for checkpoint in (run / "checkpoints").glob("task-*"):
            try:
                manifest = json.loads((checkpoint / "manifest.json").read_text())
                manifest["files"] = {p.name: {"size": p.stat().st_size,
                                              "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                                     for p in checkpoint.iterdir() if p.name != "manifest.json"}
                (checkpoint / "manifest.json").write_text(json.dumps(manifest))
            except (ValueError, OSError):
                pass
    before = snapshot(tmp_path, [run, tmp_path / "out"])
    command = rng.choice([["ask", "--run", str(run), "The mayor of"], ["export", str(run), "--output", str(tmp_path / "out")],
                          ["upgrade-run", str(run)]])
    check(capsys, command)
    assert snapshot(tmp_path, [run, tmp_path / "out"]) == before
