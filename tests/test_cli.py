import json
import shutil
from pathlib import Path

import pytest

from retain.cli import main

DEMO = Path(__file__).parent.parent / "examples" / "demo-stream"
FAST = ["--model", "tiny", "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
        "--max_new_tokens", "4", "--disable_tqdm", "true"]


def test_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--method", "replay", "--stream", str(DEMO), "--output", str(out), *FAST,
                 "--method-arg", "buffer_size=8", "ratio=0.5"])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "replay" and result["model"] == "tiny" and result["complete"]
    assert result["tasks"] == ["atlas", "ledger", "charter"]
    assert len(result["matrix"]["em"]) == 3 and set(result["by_kind"]) == {"recall", "paraphrase"}
    config = json.loads((out / "config.json").read_text())
    assert config["method_args"] == {"buffer_size": "8", "ratio": "0.5"}
    assert config["training_args"]["num_train_epochs"] == 1
    printed = capsys.readouterr().out
    assert "replay on tiny" in printed and "ACC" in printed and "charter" in printed


def test_resume_of_a_finished_run_keeps_its_results(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--stream", str(DEMO), "--output", str(out), *FAST]
    assert main(args) == 0
    before = (out / "result.json").read_text()
    assert main([*args, "--resume"]) == 0
    assert json.loads((out / "result.json").read_text())["matrix"] == json.loads(before)["matrix"]


def test_bad_stream_line_is_reported_with_file_and_line(tmp_path, capsys):
    stream = tmp_path / "stream"
    shutil.copytree(DEMO, stream)
    with (stream / "ledger" / "probes.jsonl").open("a") as handle:
        handle.write('{"prompt": "no answer here"}\n')
    code = main(["run", "--stream", str(stream), "--output", str(tmp_path / "run"), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().endswith("ledger/probes.jsonl:13: missing field 'answer'")
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists(), "no run directory for a run that never started"


def test_unknown_method_and_model(tmp_path, capsys):
    assert main(["run", "--method", "magic", "--stream", str(DEMO), "--output", str(tmp_path / "a"), *FAST]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err
    assert main(["run", "--stream", str(DEMO), "--output", str(tmp_path / "b"), "--model", str(tmp_path / "no-model")]) == 2
    assert "Cannot load model" in capsys.readouterr().err


def test_existing_output_is_not_touched(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "result.json").write_text("precious")
    for overwrite in ([], ["--overwrite"]):
        assert main(["run", "--stream", str(DEMO), "--output", str(out), *FAST, *overwrite]) == 2
        assert "holds files retain did not write" in capsys.readouterr().err
        assert (out / "result.json").read_text() == "precious"


def test_config_file_sets_options_and_flags_override_it(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.003\nnum_train_epochs: 2\nmethod: ewc\n")
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--stream", str(DEMO), "--output", str(out), *FAST,
                 "--method-arg", "fisher_samples=2"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["method"] == "ewc"
    assert saved["training_args"]["learning_rate"] == 0.003
    assert saved["training_args"]["num_train_epochs"] == 1  # the flag wins over the file
    config.write_text("learning_rat: 0.1\n")
    assert main(["run", "--config", str(config), "--stream", str(DEMO), "--output", str(tmp_path / "x")]) == 2
    assert "unknown option learning_rat" in capsys.readouterr().err


def test_help_lists_commands_and_methods(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "run" in capsys.readouterr().out
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    for text in ("ewc", "fisher_samples", "replay", "buffer_size", "lora", "per_task", "full_ft"):
        assert text in listing


def test_ask_answers_from_a_trained_run(tmp_path, capsys):
    from retain.recipes import ask

    out = tmp_path / "run"
    assert main(["run", "--stream", str(DEMO), "--output", str(out), *FAST, "--max_new_tokens", "12"]) == 0
    capsys.readouterr()
    recorded = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    last = next(p for p in reversed(recorded) if p["task"] == "atlas")
    [answer] = ask(out, [last["prompt"]], max_new_tokens=4)
    assert answer.strip() and last["prediction"].strip().startswith(answer.strip())  # the same model, restored
    assert main(["ask", "--run", str(out), "--max-new-tokens", "4", last["prompt"]]) == 0
    assert capsys.readouterr().out.strip() == f"{last['prompt']} → {answer}"
    assert main(["ask", "--run", str(tmp_path), "anything"]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "compare"])
def test_help_shows_retains_own_options_first(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    usage = text[: text.index("\n\n")]
    assert usage.count("\n") == 0 and "--stream DIR --output DIR" in usage  # one line, not every option
    own, trainer = text.index(f"retain {command}:\n"), text.index("transformers TrainingArguments")
    assert own < text.index("--stream STREAM") < trainer < text.index("--learning_rate")
    assert "--push_to_hub" in text[text.rindex("Options refused"):]  # and says which options it refuses
