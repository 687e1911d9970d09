import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from retain.cli import main

FAST = ["--model", "tiny", "--num_train_epochs", "1", "--per_device_train_batch_size", "4", "--max_new_tokens", "4",
        "--disable_tqdm", "true"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    assert main(["generate", "temporal-facts", "--preset", "small", "--facts", "6", "--output", str(root / "stream")]) == 0
    code = main(["compare", "--methods", "full_ft,replay,ewc,ewc_strong=ewc", "--stream", str(root / "stream"),
                 "--output", str(root / "out"), *FAST, "--method-arg", "ewc.fisher_samples=2", "replay.ratio=0.5",
                 "ewc_strong.fisher_samples=2", "ewc_strong.ewc_lambda=1e9", "--method-lr", "replay=1e-3"])
    assert code == 0
    return root / "out"


def test_compare_writes_one_complete_run_per_method(comparison):
    for method in ("full_ft", "replay", "ewc"):
        result = json.loads((comparison / method / "result.json").read_text())
        assert result["complete"] and result["method"] == method
        assert {"plasticity", "stability", "historical"} <= set(result["summary"])
    assert json.loads((comparison / "replay" / "config.json").read_text())["training_args"]["learning_rate"] == 1e-3
    assert json.loads((comparison / "ewc" / "config.json").read_text())["method_args"] == {"fisher_samples": "2"}
    variant = json.loads((comparison / "ewc_strong" / "config.json").read_text())  # NAME=METHOD: a variant in its own run
    assert variant["method"] == "ewc" and variant["method_args"] == {"fisher_samples": "2", "ewc_lambda": "1e9"}


def test_report_files_exist_and_images_decode(comparison):
    pngs = ["summary.png", "forgetting.png", "speed.png", "tradeoff.png", *(f"heatmap_{m}.png" for m in ("full_ft", "replay", "ewc"))]
    for name in pngs:
        with Image.open(comparison / name) as image:
            image.verify()
            assert image.format == "PNG"
    markdown = (comparison / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in markdown
    assert "| full_ft |" in markdown and "plast" in markdown


def test_the_cost_baseline_is_chosen_not_hard_coded(comparison, capsys):
    from retain.report import load_results, summary_rows

    results = load_results(comparison)
    headers, rows = summary_rows(results, "replay")
    ratios = {row[0]: row[-1] for row in rows}
    assert headers[-1] == "time× replay" and ratios["replay"] == "1.00" and ratios["full_ft"] != "1.00"
    try:
        assert main(["report", str(comparison), "--baseline", "replay"]) == 0
        assert "| time× replay |" in (comparison / "report.md").read_text()
        assert main(["report", str(comparison), "--baseline", "lora"]) == 2
        assert "--baseline lora: not one of the methods" in capsys.readouterr().err
    finally:
        assert main(["report", str(comparison)]) == 0
    assert "| time× full_ft |" in (comparison / "report.md").read_text()  # full_ft when it ran


def test_report_shows_scores_per_form_and_total_cost(comparison):
    markdown = (comparison / "report.md").read_text()
    result = json.loads((comparison / "replay" / "result.json").read_text())
    for form, scores in result["summary"]["by_form"].items():
        assert f"| replay | {form} | {scores['plasticity']:.3f} |" in markdown
    seconds = sum(t["train_seconds"] for t in result["timings"])
    tokens = sum(t["train_tokens"] for t in result["timings"])
    assert re.search(rf"\| replay \|.* \| {seconds:.0f} \| {tokens:,} \|", markdown)
    first = result["timings"][0]
    assert first["fact_questions"] > 0 and first["train_examples"] > first["fact_questions"]
    assert f"| replay | 2018 | {first['train_examples']} | {first['fact_questions']} | {first['train_tokens']:,} |" in markdown


def test_html_is_self_contained_and_embeds_every_figure(comparison):
    page = (comparison / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # a heatmap per method, then summary bars, forgetting curves, speed, and the trade-off (ewc ran twice)
    assert len(images) == 4 + 4
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_report_command_rebuilds_and_compare_resumes(comparison, capsys):
    (comparison / "report.html").unlink()
    before = (comparison / "full_ft" / "result.json").read_text()
    assert main(["report", str(comparison)]) == 0
    assert (comparison / "report.html").is_file()
    stream = comparison.parent / "stream"
    assert main(["compare", "--methods", "full_ft", "--stream", str(stream), "--output", str(comparison), *FAST]) == 0
    assert "already complete" in capsys.readouterr().err
    assert (comparison / "full_ft" / "result.json").read_text() == before


def test_report_of_an_empty_directory_fails_clearly(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no */result.json" in capsys.readouterr().err


def test_compare_rejects_a_bad_method_option_before_training(tmp_path, capsys):
    code = main(["compare", "--methods", "full_ft,ewc", "--stream", str(Path(__file__).parent.parent / "examples" / "demo-stream"), "--output", str(tmp_path / "o"),
                 *FAST, "--method-arg", "ewc.lamda=3"])
    assert code == 2
    assert "ewc has no option 'lamda'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "full_ft").exists()
