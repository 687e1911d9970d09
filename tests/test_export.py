"""retain export: the exported folder, loaded with plain transformers (PEFT for an adapter), computes what the run's
model computes; what cannot leave exactly is refused by name; the model card's numbers are the run's."""

import json
import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from retain import recipes
from retain.cli import main
from retain.export import ExportError, export
from retain.models import load_model
from retain.stream import load_stream
from retain.text import first_statement

METHODS = ["full_ft", "ewc", "replay", "lora", "smf", "casm", "aria", "pk=smf"]
TRAINING = ["--model", "tiny", "--num_train_epochs", "2", "--learning_rate", "1e-2", "--per_device_train_batch_size", "4",
            "--max_new_tokens", "4", "--disable_tqdm", "true"]
OPTIONS = ["smf.k=8", "smf.top_t=64", "smf.lr=50", "casm.k=8", "casm.top_t=64", "casm.lr=50", "aria.adapter_dim=4",
           "aria.fisher_samples=2", "pk.memory=product_key", "pk.n_keys=4", "pk.k=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    assert main(["generate", "temporal-facts", "--preset", "small", "--facts", "4", "--periods", "2018,2020",
                 "--output", str(root / "stream")]) == 0
    assert main(["compare", "--methods", ",".join(METHODS), "--stream", str(root / "stream"), *TRAINING,
                 "--method-arg", *OPTIONS, "--output", str(root / "runs")]) == 0
    return root / "runs"


def prompts(run):
    stream = load_stream(json.loads((run / "config.json").read_text())["stream"])
    return [p.prompt for task in stream.tasks for p in task.probes][:12]


@torch.no_grad()
def logits(model, tokenizer, texts):
    return [model(**tokenizer(text, return_tensors="pt")).logits[0] for text in texts]


def answers(model, tokenizer, texts, **options):
    """Greedy answers as a user of transformers gets them: a left-padded batch through `model.generate`."""
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    output = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id, **options)
    assert torch.equal(output[:, : batch["input_ids"].shape[1]], batch["input_ids"]), "the prompt comes back as given"
    return [first_statement(t) for t in tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)]


def assert_same(exported, tokenizer, loaded, texts):
    run_logits = logits(loaded.model, loaded.tokenizer, texts)
    out_logits = logits(exported, tokenizer, texts)
    assert max((a - b).abs().max().item() for a, b in zip(run_logits, out_logits)) <= 1e-5
    assert answers(exported, tokenizer, texts) == loaded.ask(texts, max_new_tokens=6)


@pytest.mark.parametrize("method, format", [("full_ft", "merged"), ("ewc", "merged"), ("replay", "merged"),
                                            ("lora", "adapter"), ("lora", "merged"), ("smf", "retain"), ("casm", "retain"),
                                            ("aria", "retain")])
def test_the_export_computes_what_the_run_computes(runs, tmp_path, method, format):
    run = runs / method
    folder = export(run, tmp_path / "out", format)
    loaded, texts = recipes.load_run(run), prompts(run)
    seed = json.loads((run / "config.json").read_text())["seed"]
    if format == "adapter":
        assert (folder / "adapter_config.json").is_file() and not (folder / "config.json").exists()
        exported = PeftModel.from_pretrained(load_model("tiny", seed=seed)[0], folder)
    else:
        exported = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=format == "retain")
    exported.eval()
    loaded.model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert_same(exported, tokenizer, loaded, texts)
    # The run learned something the export carries: its answers are not the untouched model's.
    initial = load_model("tiny", seed=seed)[0].eval()
    assert logits(exported, tokenizer, texts[:1])[0].sub(logits(initial, tokenizer, texts[:1])[0]).abs().max() > 1e-3
    if method == "aria":  # each input's adapter is chosen in the export, as in the run: another choice computes otherwise
        before = logits(exported, tokenizer, texts)
        exported.retain_aria_prototypes.copy_(exported.retain_aria_prototypes.flip(0))
        assert max((a - b).abs().max().item() for a, b in zip(before, logits(exported, tokenizer, texts))) > 1e-4


@pytest.mark.parametrize("period", ["2018", "2020"])
def test_casm_exports_the_version_of_a_period(runs, tmp_path, period):
    run = runs / "casm"
    folder = export(run, tmp_path / "out", as_of=period)
    exported = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    loaded, texts = recipes.load_run(run), prompts(run)
    loaded.model.eval()
    version = loaded.method.periods.index(period)
    expected = []
    for text in texts:  # retain's model reading that version as its own routing does, one prompt at a time
        loaded.method.table.read([version])
        expected += logits(loaded.model, loaded.tokenizer, [text])
    assert max((a - b).abs().max().item() for a, b in zip(expected, logits(exported, tokenizer, texts))) <= 1e-5
    assert json.loads((folder / "retain-export.json").read_text())["period"] == period
    assert f"| memory version | {period} " in (folder / "README.md").read_text()


@pytest.mark.parametrize("period", ["2018", "2020"])
def test_the_routed_casm_export_answers_as_of_a_time_as_retain_ask_does(runs, tmp_path, period):
    run = runs / "casm"
    folder = export(run, tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    loaded, texts = recipes.load_run(run), prompts(run)
    undated = [re.sub(r"^\[\d{4}\] ", "", text) for text in texts]  # as_of dates the prompts that name no time
    expected = loaded.ask(texts + undated, max_new_tokens=6, as_of=period)
    assert answers(exported, AutoTokenizer.from_pretrained(folder), texts + undated, as_of=period) == expected
    assert json.loads((folder / "config.json").read_text())["retain"]["casm"]["periods"] == ["2018", "2020"]
    # A follow-up in a conversation: the turns before it travel as `context`, as `retain ask --conversation` has them.
    first, follow = re.sub(r"^\[\d{4}\] ", "", texts[0]), f"And in {period}?"
    assert answers(exported, AutoTokenizer.from_pretrained(folder), [follow], context=[first]) \
        == loaded.ask([first, follow], max_new_tokens=6, conversation=True)[1:]


def test_a_pipeline_routes_the_casm_export(runs, tmp_path):
    folder = export(runs / "casm", tmp_path / "out")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval(), AutoTokenizer.from_pretrained(folder)
    texts = prompts(runs / "casm")
    generate = pipeline("text-generation", model=model, tokenizer=tokenizer)
    for options in ({}, {"as_of": "2018"}):
        out = [first_statement(o[0]["generated_text"]) for o in generate(texts, max_new_tokens=6, do_sample=False,
                                                                        return_full_text=False, **options)]
        assert out == [answers(model, tokenizer, [text], **options)[0] for text in texts]


def test_the_two_versions_differ(runs, tmp_path):
    texts = prompts(runs / "casm")
    outs = [AutoModelForCausalLM.from_pretrained(export(runs / "casm", tmp_path / p, as_of=p), trust_remote_code=True).eval()
            for p in ("2018", "2020")]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "2018")
    a, b = (logits(m, tokenizer, texts) for m in outs)
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) > 1e-4, "the periods wrote nothing apart"


def test_the_model_card_reports_the_runs_numbers(runs, tmp_path):
    folder = recipes.export(runs / "full_ft", tmp_path / "out")  # the recipe is the export
    card, result = (folder / "README.md").read_text(), json.loads((runs / "full_ft" / "result.json").read_text())
    for key in ("acc", "bwt", "plasticity", "stability", "historical"):
        assert float(re.search(rf"^\| {key} \| ([0-9.-]+) \|$", card, re.M)[1]) == pytest.approx(result["summary"][key], abs=5e-5)
    for task, row in zip(result["tasks"], result["matrix"]["em"]):
        cells = re.search(rf"^\| {task} \| (.*) \|$", card, re.M)[1].split(" | ")
        assert [float(c) for c in cells] == pytest.approx(row, abs=5e-5)
    for form, scores in result["summary"]["by_form"].items():
        cells = re.search(rf"^\| {form} \| (.*) \|$", card, re.M)[1].split(" | ")
        assert cells[0] == f"{scores['acc']:.4f}"
    assert "library_name: transformers" in card and "base model | `tiny`" in card


@pytest.mark.parametrize("method, args, message", [
    ("pk", [], r"smf: its model holds a MemoryAugmentedMLP \(model\.layers\.\d+\.mlp\), which an export cannot carry yet"),
    ("smf", ["--format", "merged"], r"--format merged: not available for smf: .*read per token.*--format retain keeps"),
    ("aria", ["--format", "merged"], r"--format merged: not available for aria: .*a gate between pathways"),
    ("full_ft", ["--format", "adapter"], r"--format adapter: not available for full_ft"),
    ("full_ft", ["--as-of", "2018"], r"--as-of 2018: full_ft keeps one version of what it learned"),
    ("casm", ["--as-of", "soon"], r"cannot read a time from 'soon'"),
    ("full_ft", ["--push-to-hub", "me/model"], r"--push-to-hub me/model: the Hugging Face Hub is offline here"),
], ids=["product-key memory", "smf merged", "aria merged", "full_ft adapter", "as-of without versions", "bad time", "push offline"])
def test_what_cannot_be_exported_is_refused_in_one_line(runs, tmp_path, capsys, monkeypatch, method, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["export", str(runs / method), "--output", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_an_export_replaces_only_an_export(runs, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ExportError, match="holds files that an export did not write"):
        export(runs / "full_ft", mine)
    assert (mine / "notes.txt").read_text() == "keep"
    out = export(runs / "full_ft", tmp_path / "out")
    with pytest.raises(ExportError, match="already holds an export"):
        export(runs / "full_ft", out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"did not write \(notes.txt\)"):
        export(runs / "full_ft", out, overwrite=True)
    (out / "notes.txt").unlink()
    assert export(runs / "lora", out, "merged", overwrite=True) == out
    assert json.loads((out / "retain-export.json").read_text())["method"] == "lora"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]  # no staging folder left
