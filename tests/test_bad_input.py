"""Every bad input gets one message naming the file and line or the option, exit code 2, before training where it can,
and loses nothing already saved. docs/bad-inputs.md lists these cases."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from retain import Evaluator
from retain.cli import main

FAST = ["--model", "tiny", "--num_train_epochs", "1", "--max_new_tokens", "4", "--disable_tqdm", "true",
        "--learning_rate", "0.01"]


@pytest.fixture
def stream(tmp_path):
    path = tmp_path / "stream"
    assert main(["generate", "temporal-facts", "--preset", "small", "--facts", "3", "--output", str(path)]) == 0
    return path


def fails(capsys, argv, pattern):
    """Run the CLI and check: exit 2, one line on stderr matching `pattern`, no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(pattern, errors[0]), err
    return errors[0]


def edit(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize("case", ["jsonl byte", "yaml byte", "train not a path", "output under a file",
                                  "lora rank 0", "unknown option", "fact questions", "casm untimed", "casm out of order"])
def test_bad_input_before_training(tmp_path, stream, capsys, case):
    out, argv = tmp_path / "run", ["run", "--stream", str(stream), *FAST]
    if case == "jsonl byte":
        with (stream / "2020" / "train.jsonl").open("ab") as handle:
            handle.write(b'{"text": "caf\xe9"}\n')
        lines = len((stream / "2020" / "train.jsonl").read_bytes().splitlines())
        fails(capsys, [*argv, "--output", str(out)], rf"2020/train.jsonl:{lines}: not UTF-8 text \(byte 13")
        assert not out.exists()
    elif case == "yaml byte":
        (stream / "stream.yaml").write_bytes((stream / "stream.yaml").read_bytes() + b"# \xff\n")
        fails(capsys, [*argv, "--output", str(out)], r"stream.yaml: not UTF-8 text")
    elif case == "train not a path":
        edit(stream / "stream.yaml", "train: 2018/train.jsonl", "train: 5")
        fails(capsys, [*argv, "--output", str(out)], r"stream.yaml: tasks\[0\]: 'train' must be a file path .* got 5")
    elif case == "output under a file":
        (tmp_path / "file").write_text("x")
        fails(capsys, [*argv, "--output", str(tmp_path / "file" / "run")], r"a file stands where a directory is needed")
        assert (tmp_path / "file").read_text() == "x"
    elif case == "lora rank 0":
        fails(capsys, [*argv, "--output", str(out), "--method", "lora", "--method-arg", "r=0"],
              r"--method-arg r: must be ≥ 1, got 0")
        assert not out.exists()  # so the corrected command runs
        assert main([*argv, "--output", str(out), "--method", "lora", "--method-arg", "r=2"]) == 0
    elif case == "unknown option":
        fails(capsys, [*argv, "--output", str(out), "--logging_dir", "logs"], r"unknown option\(s\): --logging_dir logs")
    elif case == "fact questions":
        fails(capsys, [*argv, "--output", str(out), "--fact_questions", "8"], r"--fact_questions 8: expected 0 to 7 training")
        assert not out.exists()
    elif case == "casm untimed":
        fails(capsys, ["run", "--stream", "examples/demo-stream", *FAST, "--output", str(out), "--method", "casm"],
              r"casm: task 'atlas' needs a period that is a time")
        assert not out.exists()  # found before anything was trained or written
    else:
        edit(stream / "stream.yaml", "period: '2022'", "period: '2019'")
        fails(capsys, [*argv, "--output", str(out), "--method", "casm"], r"period '2019' of task '2022' does not come after '2020'")
        assert not out.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished run (and its stream), made once for the module."""
    root = tmp_path_factory.mktemp("finished")
    assert main(["generate", "temporal-facts", "--preset", "small", "--facts", "3", "--output", str(root / "stream")]) == 0
    assert main(["run", "--stream", str(root / "stream"), *FAST, "--output", str(root / "run")]) == 0
    return root


@pytest.fixture
def finished(tmp_path, trained, stream):
    """A copy of the finished run, trained on `stream` (a copy of its stream at the same path as when it ran)."""
    shutil.rmtree(stream)
    shutil.copytree(trained / "stream", stream)
    out = tmp_path / "run"
    shutil.copytree(trained / "run", out)
    config = json.loads((out / "config.json").read_text())
    config["stream"] = str(stream.resolve())
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return out


def saved(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["learning rate", "stream grew", "stream edited", "damaged checkpoints",
                                  "truncated progress", "latest missing"])
def test_bad_resume_names_what_is_wrong_and_loses_nothing(tmp_path, stream, finished, capsys, caplog, case):
    argv = ["run", "--stream", str(stream), *FAST, "--output", str(finished), "--resume"]
    checkpoints = finished / "checkpoints"
    if case == "learning rate":
        before = saved(finished)
        err = fails(capsys, [*argv, "--learning_rate", "0.02"],
                    r"1 option\(s\) differ .*: training_args.learning_rate: saved 0.01, now 0.02$")
        assert len(err) < 400 and saved(finished) == before
    elif case == "stream grew":
        before = saved(finished)
        shutil.copytree(stream / "2022", stream / "2024")
        spec = yaml.safe_load((stream / "stream.yaml").read_text())
        spec["tasks"].append({k: v.replace("2022", "2024") for k, v in spec["tasks"][-1].items()})
        (stream / "stream.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        fails(capsys, argv, r"stream_files.2024/train.jsonl: saved None, now '[0-9a-f]{16}'")
        assert saved(finished) == before and json.loads((finished / "result.json").read_text())["complete"]
    elif case == "stream edited":
        edit(stream / "2020" / "probes.jsonl", '"answer": "', '"answer": "X')
        fails(capsys, argv, r"stream_files.2020/probes.jsonl: saved '[0-9a-f]{16}', now '[0-9a-f]{16}'")
    elif case == "damaged checkpoints":
        for checkpoint in checkpoints.glob("task-*"):
            data = (checkpoint / "model.safetensors").read_bytes()
            (checkpoint / "model.safetensors").write_bytes(data[: len(data) // 2])
        fails(capsys, argv, r"task-003/model.safetensors: damaged .*task-002/model.safetensors: damaged.*no intact checkpoint")
    elif case == "truncated progress":
        for checkpoint in checkpoints.glob("task-*"):
            (checkpoint / "progress.json").write_text('{"method": "full_ft", "res')
        fails(capsys, argv, r"task-003/progress.json: damaged")
    else:
        (checkpoints / "LATEST").write_text("task-009")
        assert main(argv) == 0  # falls back to task-003: the run is complete, and stays so
        assert re.search(r"task-009: missing; resuming from task-003 instead", caplog.text)
        for checkpoint in checkpoints.glob("task-*"):
            shutil.rmtree(checkpoint)
        fails(capsys, argv, r"task-009: missing: no intact checkpoint to resume from \(start over with --overwrite\)")


def test_a_diverged_models_perplexity_is_infinite_not_a_crash(make_model, tokenizer):
    model = make_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(1e6)  # logits of ±1e5: a loss far past what exp() can take
    ppl = Evaluator(tokenizer).perplexity(model, ["The water cycle moves water between the sea and the air."])
    assert ppl == math.inf


@pytest.mark.parametrize("flags, message", [
    (["--output_dir", "elsewhere"], r"--output_dir: not supported: the Trainer's files go to OUTPUT/trainer; use --output"),
    (["--push_to_hub"], r"--push_to_hub: not supported: retain does not push runs to the Hub"),
    (["--hub_model_id", "me/model"], r"--hub_model_id: not supported"),
    (["--save_strategy", "steps"], r"--save_strategy: not supported: retain checkpoints after every task"),
    (["--eval_strategy", "epoch"], r"--eval_strategy: not supported: retain scores every task's probes after each"),
    (["--resume_from_checkpoint", "x"], r"--resume_from_checkpoint: not supported: use --resume"),
    (["--do_predict"], r"--do_predict: not supported"),
    (["--report_to", "mlflow"], r"--report_to mlflow: mlflow is not installed \(pip install mlflow\)"),
    (["--report_to", "wandbb"], r"--report_to wandbb: unknown; expected some of .*wandb"),
    (["--resume", "--overwrite"], r"--resume and --overwrite contradict each other"),
], ids=["output_dir", "push_to_hub", "hub_model_id", "save_strategy", "eval_strategy", "resume_from_checkpoint",
        "do_predict", "tracker not installed", "unknown tracker", "resume and overwrite"])
def test_a_trainer_option_retain_does_not_honour_is_refused_before_anything(tmp_path, stream, capsys, monkeypatch, flags,
                                                                            message):
    monkeypatch.setattr("retain.recipes.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "run"
    fails(capsys, ["run", "--stream", str(stream), *FAST, "--output", str(out), *flags], message)
    assert not out.exists() and not (tmp_path / "elsewhere").exists()
    # compare refuses the same, the same way
    if "--resume" not in flags:  # compare resumes by itself
        fails(capsys, ["compare", "--methods", "full_ft", "--stream", str(stream), *FAST, "--output", str(out), *flags],
              message)
        assert not out.exists()


def test_a_missing_required_option_is_one_line_not_a_usage_dump(tmp_path, capsys):
    line = fails(capsys, ["run", "--output", str(tmp_path / "run")], r"--stream is required \(see `retain run --help`\)")
    assert len(capsys.readouterr().err) == 0 and len(line) < 120


def test_resume_needs_only_the_output_and_options_given_must_match(tmp_path, stream, finished, capsys):
    before = saved(finished)
    assert main(["run", "--output", str(finished), "--resume"]) == 0  # the run's method, stream, model, options
    assert json.loads((finished / "result.json").read_text())["matrix"] == json.loads(before[Path("result.json")])["matrix"]
    fails(capsys, ["run", "--output", str(finished), "--resume", "--method", "ewc"], r"1 option\(s\) differ .*method: saved 'full_ft', now 'ewc'")
    fails(capsys, ["run", "--output", str(tmp_path / "none"), "--resume"], r"--resume: .*config.json not found; nothing to resume")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"method": "full_ft"}')
    fails(capsys, ["run", "--output", str(tmp_path / "broken"), "--resume"], r"broken/config.json: damaged \(KeyError")


@pytest.mark.parametrize("flags, message", [
    (["--seed", "1180591620717411303424"], r"--seed 1180591620717411303424: must be below 2\*\*32"),
    (["--learning_rate", "-1"], r"--learning_rate -1.0: must be at least 0"),
    (["--learning_rate", "nan"], r"--learning_rate nan: must be a finite number"),
    (["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size 0: must be at least 1"),
    (["--max_length", "0"], r"--max_length 0: must be at least 1"),
    (["--max_new_tokens", "-1"], r"--max_new_tokens -1: must be at least 1"),
    (["--num_train_epochs", "-1"], r"--num_train_epochs -1.0: must be at least 0"),
    (["--num_train_epochs", "0"], r"--num_train_epochs 0: trains nothing"),
    (["--method", "ewc", "--method-arg", "ewc_lambda=nan"], r"--method-arg ewc_lambda: must be a finite number, got nan"),
    (["--method", "smf"], r"smf: background statistics need text"),
    (["--num_train_epochs", "abc"], r"argument --num_train_epochs/--num-train-epochs: invalid float value: 'abc' \(see"),
    (["--method", "smf", "--method-arg", "memory=product_key", "n_keys=4"], r"--method-arg k: a product-key memory reads k ≤ n_keys"),
], ids=["seed past 32 bits", "negative learning rate", "nan learning rate", "batch 0", "max_length 0",
        "max_new_tokens -1", "epochs -1", "epochs 0", "nan method option", "smf without background", "not a number",
        "product-key k"])
def test_an_impossible_value_is_refused_before_anything_is_loaded_or_written(tmp_path, stream, capsys, monkeypatch,
                                                                              flags, message):
    monkeypatch.setattr("retain.recipes.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    if "smf" in flags:
        edit(stream / "stream.yaml", "background: background.jsonl", "")
    out = tmp_path / "run"
    fails(capsys, ["run", "--stream", str(stream), *FAST, "--output", str(out), *flags], message)
    assert not out.exists()  # so the corrected command runs


@pytest.mark.parametrize("case", ["duplicate key", "control byte", "deep json", "config not utf-8", "config list",
                                  "config duplicate"])
def test_a_malformed_file_is_one_line_naming_it(tmp_path, stream, capsys, case):
    out, argv = tmp_path / "run", ["run", "--stream", str(stream), *FAST, "--output", str(tmp_path / "run")]
    config = tmp_path / "config.yaml"
    if case == "duplicate key":
        (stream / "stream.yaml").write_text((stream / "stream.yaml").read_text() + "name: again\n")
        fails(capsys, argv, r"stream.yaml:\d+: invalid YAML: the key 'name' is given twice")
    elif case == "control byte":
        (stream / "stream.yaml").write_text("name: x\x07\n" + (stream / "stream.yaml").read_text())
        fails(capsys, argv, r"stream.yaml:1: invalid YAML: character '\\x07' is not allowed")
    elif case == "deep json":
        with (stream / "2018" / "train.jsonl").open("a") as handle:
            handle.write('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
        fails(capsys, argv, r"2018/train.jsonl:\d+: nested too deeply")
    elif case == "config not utf-8":
        config.write_bytes(b"seed: 1 # \xff\n")
        fails(capsys, [*argv, "--config", str(config)], r"--config .*config.yaml: not UTF-8 text \(byte 10\)")
    elif case == "config list":
        config.write_text("seed: [1, 2]\n")
        fails(capsys, [*argv, "--config", str(config)], r"--config .*config.yaml: seed: expected one value, got \[1, 2\]")
    else:
        config.write_text("seed: 1\nseed: 2\n")
        fails(capsys, [*argv, "--config", str(config)], r"--config .*config.yaml:2: invalid YAML: the key 'seed' is given twice")
    assert not out.exists()


def test_generate_writes_only_a_new_empty_or_stream_folder(tmp_path, finished, capsys):
    (tmp_path / "afile").write_text("x")
    fails(capsys, ["generate", "temporal-facts", "--output", str(tmp_path / "afile" / "x")],
          r"--output .*afile/x: a file stands where a directory is needed")
    before = saved(finished)
    fails(capsys, ["generate", "temporal-facts", "--output", str(finished)], r"holds files that are not a stream's")
    assert saved(finished) == before


@pytest.mark.parametrize("command", ["ask", "upgrade-run", "export"])
def test_a_config_json_that_is_not_a_runs_is_one_line(tmp_path, finished, capsys, command):
    config = json.loads((finished / "config.json").read_text())
    del config["method"]
    (finished / "config.json").write_text(json.dumps(config))
    argv = {"ask": ["ask", "--run", str(finished), "The mayor of"], "upgrade-run": ["upgrade-run", str(finished)],
            "export": ["export", str(finished), "--output", str(tmp_path / "out")]}[command]
    fails(capsys, argv, r"config.json: damaged \(no 'method'\): not a retain run's")


def test_a_model_folder_with_pickled_weights_is_not_opened(tmp_path, stream, capsys, make_model, tokenizer, monkeypatch):
    folder = tmp_path / "model"
    make_model().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")  # a pickle: loading it could run code
    monkeypatch.setattr("torch.load", lambda *a, **k: pytest.fail("a pickle was opened"))
    fails(capsys, ["run", "--stream", str(stream), *FAST[2:], "--model", str(folder), "--output", str(tmp_path / "run")],
          r"Cannot load model '.*model'")
    assert not (tmp_path / "run").exists()


def test_an_output_that_cannot_be_written_is_refused_before_anything(tmp_path, stream, capsys, monkeypatch):
    # A read-only mount (root writes anywhere else, so the system's answer is stood in for).
    monkeypatch.setattr("os.access", lambda path, mode: not str(path).startswith(str(tmp_path / "ro")))
    monkeypatch.setattr("retain.recipes.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "ro").mkdir()
    fails(capsys, ["run", "--stream", str(stream), *FAST, "--output", str(tmp_path / "ro" / "run")],
          r"--output .*ro/run: cannot write there \(.*ro is read-only or not writable\)")


def test_generate_conflicting_rules_refuses_bad_sizes_before_writing(tmp_path, capsys):
    fails(capsys, ["generate", "conflicting-rules", "--tasks", "9", "--output", str(tmp_path / "s")],
          r"conflicting rules: tasks must be 2 to 8, got 9")
    assert not (tmp_path / "s").exists()
