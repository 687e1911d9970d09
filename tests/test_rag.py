"""RAG, the retrieval baseline: trains nothing and puts the facts valid at the query's time into its prompt."""

import pytest
import torch

from retain import ContinualTrainer, RunDirectory, build_method
from retain.methods import MethodError

from test_casm import HARBOUR, stream  # noqa: F401  (stream: the fixture, used by name)


def test_rag_trains_nothing_and_retrieves_the_facts_of_the_querys_time(make_model, tokenizer, training_args, stream, tmp_path):  # noqa: F811
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    method = build_method("rag")
    trainer = ContinualTrainer(model, training_args(), method=method, processing_class=tokenizer)
    result = trainer.fit(stream, run_dir=RunDirectory(tmp_path / "run", {"m": "rag"}))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert all(t["train_tokens"] == 0 and t["optimizer_steps"] == 0 and t["trainable_parameters"] == 0 for t in result.timings)
    assert result.complete and result.rows[-1].general_ppl == result.rows[0].general_ppl
    assert method.prompt_text(f"[2018] {HARBOUR}") == ("Facts as of 2018: The harbour master of Velmora is Ilse Brandvik.\n"
                                                       f"[2018] {HARBOUR}")
    assert "Mira Solberg" in method.prompt_text(HARBOUR) and "Ilse" not in method.prompt_text(HARBOUR)  # no time: latest
    assert "Ruben Haldane" in method.prompt_text(f"In 2021, {HARBOUR.lower()}")
    assert method.prompt_text("[2020] The capital of Atlantis is") == "[2020] The capital of Atlantis is"  # nothing known
    fresh = build_method("rag")
    RunDirectory(tmp_path / "run", {"m": "rag"}, resume=True).load_checkpoint(make_model(), fresh.load_state_dict)
    assert fresh.prompt_text(HARBOUR) == method.prompt_text(HARBOUR)


def test_rag_needs_timed_periods_before_anything_runs(make_model, tokenizer, training_args, small_stream):
    trainer = ContinualTrainer(make_model(), training_args(), method=build_method("rag"), processing_class=tokenizer)
    with pytest.raises(MethodError, match="rag: task 'one' needs a period that is a time"):
        trainer.fit(small_stream)
    assert trainer.tasks == []
