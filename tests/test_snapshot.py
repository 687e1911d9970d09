import pytest
import torch

from retain import ContinualTrainer, RunDirectory, build_method
from retain.methods import MethodError
from test_casm import ENCODE, HARBOUR, stream  # noqa: F401  (the fixture)


def snapshot_trainer(make_model, tokenizer, training_args):
    method = build_method("snapshot", {"r": "4", "alpha": "8"})
    return ContinualTrainer(make_model(), training_args(learning_rate=1e-2), method=method, processing_class=tokenizer), method


def adapter(model, name):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{name}." in n}


def logits(model, tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_each_period_trains_its_own_adapter_and_earlier_ones_stay_frozen(make_model, tokenizer, training_args, stream):
    trainer, method = snapshot_trainer(make_model, tokenizer, training_args)
    trainer.start_stream(stream)
    kept, reports = [], []
    for task in stream.tasks:
        trainer.add_task(task)
        trainer.consolidate_task()
        kept.append(adapter(trainer.model, f"period_{len(kept)}"))
        reports.append(trainer.last_timing)
    assert method.periods == ["2018", "2020", "2022"]
    for index, weights in enumerate(kept):  # unchanged since its period closed
        assert weights and all(torch.equal(w, p) for w, p in zip(weights.values(), adapter(trainer.model, f"period_{index}").values()))
    # Each later period started from the one before and learned on: the snapshots differ.
    assert any(not torch.equal(a, b) for a, b in zip(kept[0].values(), kept[1].values()))
    assert reports[0]["stored_bytes"] == sum(w.numel() * 4 for w in kept[0].values())


def test_a_prompt_is_read_by_the_adapter_of_the_period_the_router_picks(make_model, tokenizer, training_args, stream):
    trainer, method = snapshot_trainer(make_model, tokenizer, training_args)
    general = "Plants turn light into sugar."
    trainer.fit(stream)
    model = trainer.model.eval()
    prompts = [f"[2020] {HARBOUR}", general, f"[2018] {HARBOUR}"]
    routing = method.route(model, prompts, ENCODE)
    assert routing.names == ["2020", "pretrained", "2018"]
    mixed = logits(model, tokenizer, routing.texts)
    method.routed = None
    for row, name in [(0, "period_1"), (2, "period_0")]:
        model.set_adapter(name)
        alone = logits(model, tokenizer, routing.texts)[row]
        torch.testing.assert_close(mixed[row], alone)
    with model.disable_adapter():
        torch.testing.assert_close(mixed[1], logits(model, tokenizer, routing.texts)[1])
    assert not torch.allclose(mixed[0], mixed[2])  # two periods' adapters answer differently
    # A follow-up reads the adapter of the fact the conversation is on, at the time it names.
    followed = method.follow_up(model, "And in 2018?", [f"[2020] {HARBOUR}"], ENCODE)
    assert method.route(model, [followed], ENCODE).names == ["2018"] and "And in 2018?" not in followed
    with pytest.raises(MethodError, match="does not export"):
        method.export(None)


def test_state_round_trips_through_a_checkpoint(make_model, tokenizer, training_args, stream, tmp_path):
    trainer, method = snapshot_trainer(make_model, tokenizer, training_args)
    trainer.fit(stream, run_dir=RunDirectory(tmp_path / "run", {"m": "snapshot"}))
    restored = build_method("snapshot", {"r": "4", "alpha": "8"})
    fresh = ContinualTrainer(make_model(), training_args(), method=restored, processing_class=tokenizer)
    RunDirectory(tmp_path / "run", {"m": "snapshot"}, resume=True).load_checkpoint(fresh.model, restored.load_state_dict)
    assert restored.periods == method.periods
    assert restored.registry.current("Quessary", "mayor").object == "Tam Dorrel"
    probes = [p for t in stream.tasks for p in t.probes]
    assert [s.prediction for s in fresh.evaluator.score(fresh.model, probes)] == \
        [s.prediction for s in trainer.evaluator.score(trainer.model, probes)]
    assert [s.route for s in fresh.evaluator.score(fresh.model, probes)] == ["2018", "2020", "2022"]


def test_the_matcher_asks_the_model_with_no_adapter(make_model, tokenizer, training_args, stream):
    trainer, method = snapshot_trainer(make_model, tokenizer, training_args)
    trainer.fit(stream)
    model = trainer.model.eval()
    method.route(model, [f"[2020] {HARBOUR}"], ENCODE)
    routed = method.routed
    with method._pretrained():
        asked = logits(model, tokenizer, [HARBOUR])
    with model.disable_adapter():
        torch.testing.assert_close(asked, logits(model, tokenizer, [HARBOUR]))
    assert method.routed == routed and not torch.allclose(asked, logits(model, tokenizer, [HARBOUR]))
