"""ARIA: gated pathways, gate regulariser, asymmetric learning rates, dampening, SPC, adapters and routing."""

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForSequenceClassification

from retain import ContinualTrainer, RunDirectory, Stream, Task
from retain.methods import ARIA, ARIAConfig, MethodError
from retain.methods.aria import CONFLICT_ANSWERS
from retain.methods.base import TaskData, TrainingContext
from retain.nn.gated_mlp import PlasticityGatedMLP, gate_feed_forwards
from retain.stream import Probe

from conftest import fact_task

IDS = torch.tensor([[5, 9, 200, 31, 7]])


def aria_trainer(make_model, tokenizer, training_args, **config):
    method = ARIA(ARIAConfig(**({"adapter_dim": 8, "fisher_samples": 4} | config)))
    return ContinualTrainer(make_model(), training_args(), method=method, processing_class=tokenizer), method


def separable_stream() -> Stream:
    """Two tasks whose prompts share no words, so their prompt embeddings tell them apart."""
    def task(name: str, template: str, pairs: list[tuple[str, str]]) -> Task:
        train = [{"prompt": template.format(a), "completion": f" {b}"} for a, b in pairs]
        return Task(name=name, train=train * 2, probes=[Probe(prompt=template.format(a), answer=b) for a, b in pairs])

    return Stream(name="separable", tasks=[
        task("review", "Review: the {} was lovely.\nVerdict:", [("zobi", "positive"), ("kemu", "negative")]),
        task("record", "Record: owner {}; place Danu; item cup\nPlace:", [("Tara", "Danu"), ("Olen", "Danu")]),
    ])


@pytest.mark.parametrize("fast_rank", [0, 4])
def test_surgery_keeps_the_logits(make_model, tokenizer, fast_rank):
    model = make_model().eval()
    with torch.no_grad():
        before = model(input_ids=IDS).logits
        ARIA(ARIAConfig(fast_rank=fast_rank)).prepare(model)
        torch.testing.assert_close(model(input_ids=IDS).logits, before)
    assert all(isinstance(layer.mlp.block, PlasticityGatedMLP) for layer in model.model.layers)


def test_surgery_on_a_sequence_classification_model(tokenizer):
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_labels=3, pad_token_id=tokenizer.pad_token_id)).eval()
    with torch.no_grad():
        before = model(input_ids=IDS).logits
        ARIA(ARIAConfig()).prepare(model)
        torch.testing.assert_close(model(input_ids=IDS).logits, before)


def test_unsupported_feed_forward_is_an_error_naming_it(make_model):
    model = make_model()
    model.model.layers[0].mlp = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ValueError, match="Sequential: unsupported feed-forward block"):
        gate_feed_forwards(model)
    with pytest.raises(MethodError, match="layers"):
        ARIAConfig(layers="one")


def test_gate_regulariser_pushes_every_gate_away_from_one_half(make_model):
    gated = gate_feed_forwards(make_model())[0]
    x = torch.randn(4, 6, 64)
    gated(x)
    start = gated.plasticity.detach()
    optimizer = torch.optim.SGD(gated.gate.parameters(), lr=50.0)
    for _ in range(5):
        gated(x)
        (gated.plasticity * (1 - gated.plasticity)).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    gated(x)
    end = gated.plasticity.detach()
    assert ((end - 0.5).abs() > (start - 0.5).abs()).all()
    assert (end * (1 - end)).mean() < (start * (1 - start)).mean() - 0.01


def test_gate_regulariser_waits_for_the_warm_up(make_model, tokenizer, training_args):
    trainer, method = aria_trainer(make_model, tokenizer, training_args, warmup_steps=2, spc_lambda=0)
    context = TrainingContext(task=fact_task("a", [("X is", "y")]))
    method.before_task(trainer.model, context)
    batch = trainer.collate(trainer.tokenize([{"text": "X is y."}]))
    trainer.model(**batch)
    assert method.after_forward(trainer.model, batch, context) is None
    context.step = context.run_step = 2  # two optimizer steps taken
    assert method.after_forward(trainer.model, batch, context).item() > 0


def test_slow_pathway_gets_the_slow_learning_rate(make_model, tokenizer, training_args):
    trainer, method = aria_trainer(make_model, tokenizer, training_args, slow_lr_ratio=0.25, adapter_lr_ratio=3.0,
                                   gate_lr_ratio=7.0)
    method.before_task(trainer.model, TrainingContext(task=fact_task("a", [("X is", "y")])))
    optimizer = trainer.create_optimizer()
    lr = trainer.args.learning_rate
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    slow = method.slow_parameters(trainer.model)
    assert slow and all(rate[id(p)] == pytest.approx(0.25 * lr) for p in slow.values())
    assert all(rate[id(p)] == pytest.approx(lr) for g in method.gated for p in g.fast.parameters())
    assert all(rate[id(p)] == pytest.approx(3 * lr) for b in method.adapter_blocks for p in b.adapters[-1].parameters())
    assert all(rate[id(p)] == pytest.approx(7 * lr) for g in method.gated for p in g.gate.parameters())
    attention = trainer.model.model.layers[0].self_attn.q_proj.weight
    assert not attention.requires_grad and id(attention) not in rate  # shared weights frozen by default


def test_dampening_scales_each_micro_batch_by_its_own_gate(make_model, tokenizer, training_args):
    trainer, method = aria_trainer(make_model, tokenizer, training_args, adapter_dim=0, spc_lambda=0)
    model = trainer.model
    context = TrainingContext(task=fact_task("a", [("X is", "y")]))
    method.before_task(model, context)
    with torch.no_grad():  # make the pathways differ, so the loss depends on π
        for g in method.gated:
            for p in g.fast.parameters():
                p.add_(0.05 * torch.randn_like(p))
    batches = [trainer.collate(trainer.tokenize([{"text": text}])) for text in ("X is y.", "A longer sentence is here.")]
    slow = method.gated[0].slow.down_proj.weight

    expected = torch.zeros_like(slow)
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()  # no after_forward: undampened
        expected += (1 - method.gated[0].plasticity.detach().mean()) * slow.grad
    model.zero_grad()
    for batch in batches:  # accumulated, as under gradient accumulation
        loss = model(**batch).loss
        method.after_forward(model, batch, context)
        loss.backward()
        method.after_backward(model, context)
    torch.testing.assert_close(slow.grad, expected, rtol=1e-4, atol=1e-7)


def test_spc_penalty_is_zero_at_the_anchor_and_grows_away(make_model, tokenizer, training_args):
    trainer, method = aria_trainer(make_model, tokenizer, training_args, plasticity_lambda=0, spc_lambda=5.0)
    task = fact_task("a", [("X is", "y"), ("Z is", "w")])
    context = TrainingContext(task=task)
    method.before_task(trainer.model, context)
    method.after_task(trainer.model, TaskData(task, trainer.tokenize(task.train), trainer.collate), context)
    assert set(method.anchor.fisher) == set(method.slow_parameters(trainer.model))
    assert method.after_forward(trainer.model, {}, context).item() == 0.0
    with torch.no_grad():
        next(iter(method.slow_parameters(trainer.model).values())).add_(0.1)
    assert method.after_forward(trainer.model, {}, context).item() > 0


def test_adapters_train_only_in_their_task_and_routing_finds_them(make_model, tokenizer, training_args):
    trainer, method = aria_trainer(make_model, tokenizer, training_args)
    stream = separable_stream()
    trainer.start_stream(stream)
    trainer.add_task(stream.tasks[0])
    trainer.consolidate_task()
    first = [b.adapters[0].up.weight.detach().clone() for b in method.adapter_blocks]
    assert all(w.abs().sum() > 0 for w in first), "the task's adapter did not train"
    trainer.add_task(stream.tasks[1])
    trainer.consolidate_task()
    assert all(len(b.adapters) == 2 for b in method.adapter_blocks)
    assert all(torch.equal(b.adapters[0].up.weight, w) for b, w in zip(method.adapter_blocks, first))
    row = trainer.evaluate_all_tasks()
    assert row.routing_accuracy == 1.0
    assert {p["route"] for p in row.predictions if p["task"] == "record"} == {"record"}
    trainer.model.eval()  # a plain forward routes itself: no route() call needed
    with torch.no_grad():
        trainer.model(**tokenizer(["Record: owner Tara; place Danu; item cup\nPlace:"], return_tensors="pt"))
    assert all(b.active.tolist() == [1] for b in method.adapter_blocks)
    review = "Review: the zobi was lovely.\nVerdict:"
    method.route(trainer.model, [review], lambda texts: tokenizer(texts, return_tensors="pt"))  # holds for the next forward
    with torch.no_grad():
        trainer.model(**tokenizer(["Record: owner Tara; place Danu; item cup\nPlace:"], return_tensors="pt"))
    assert all(b.active.tolist() == [0] for b in method.adapter_blocks)
    assert "gate_decided" in trainer.last_timing


def test_checkpoint_round_trip_restores_outputs(make_model, tokenizer, training_args, tmp_path):
    trainer, method = aria_trainer(make_model, tokenizer, training_args)
    stream = separable_stream()
    trainer.fit(stream, run_dir=RunDirectory(tmp_path / "run", {"m": "aria"}))
    restored = ARIA(ARIAConfig(adapter_dim=8, fisher_samples=4))
    fresh = ContinualTrainer(make_model(), training_args(), method=restored, processing_class=tokenizer)
    RunDirectory(tmp_path / "run", {"m": "aria"}, resume=True).load_checkpoint(fresh.model, restored.load_state_dict)
    assert restored.task_names == ["review", "record"] and torch.equal(restored.prototypes, method.prototypes)
    torch.testing.assert_close(restored.anchor.fisher, method.anchor.fisher)
    probes = [p for t in stream.tasks for p in t.probes]
    assert [s.prediction for s in fresh.evaluator.score(fresh.model, probes)] == \
           [s.prediction for s in trainer.evaluator.score(trainer.model, probes)]
    def encode(texts):
        return {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}

    with torch.no_grad():
        restored.route(fresh.model, ["x"] * len(IDS), encode), method.route(trainer.model, ["x"] * len(IDS), encode)
        torch.testing.assert_close(fresh.model(input_ids=IDS).logits, trainer.model(input_ids=IDS).logits)


def test_consolidation_steps_move_only_the_slow_pathway(make_model, tokenizer, training_args):
    trainer, method = aria_trainer(make_model, tokenizer, training_args, slow_consolidation_steps=3, slow_lr_ratio=1.0)
    task = fact_task("a", [("X is", "y")])
    context = TrainingContext(task=task, learning_rate=1e-2)
    method.before_task(trainer.model, context)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    method.after_task(trainer.model, TaskData(task, trainer.tokenize(task.train), trainer.collate), context)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(method.slow_parameters(trainer.model))


def first_task_logits(trainer, tokenizer, stream: Stream) -> list[tuple[torch.Tensor, float]]:
    """After each task of `stream` in turn: the logits of the first task's probes, and its exact-match score."""
    trainer.start_stream(stream)
    batch = tokenizer([p.prompt for p in stream.tasks[0].probes], return_tensors="pt", padding=True)
    after = []
    for task in stream.tasks:
        trainer.add_task(task)
        trainer.consolidate_task()
        trainer.model.eval()
        with torch.no_grad():
            after.append((trainer.model(**batch).logits, trainer.evaluate_all_tasks(stream.tasks[:1]).em[0]))
    return after


@pytest.mark.parametrize("shared_tasks", [0, 1])
def test_isolation_keeps_a_routed_earlier_tasks_outputs(make_model, tokenizer, training_args, shared_tasks):
    trainer, method = aria_trainer(make_model, tokenizer, training_args, shared_tasks=shared_tasks)
    (before, _), (after, _) = first_task_logits(trainer, tokenizer, separable_stream())
    assert all(b.active.tolist() == [0, 0] for b in method.adapter_blocks)  # routed to the first task's adapter
    if shared_tasks:
        assert torch.equal(after, before)
        own = sum(p.numel() for b in method.adapter_blocks for p in b.adapters[1].parameters())
        assert trainer.last_timing["trainable_parameters"] == own  # the second task trained its adapter alone
    else:  # the control: without isolation the shared pathways move and the same inputs answer differently
        assert not torch.allclose(after, before)


def test_isolation_needs_adapters():
    with pytest.raises(MethodError, match="shared_tasks"):
        ARIAConfig(shared_tasks=1, adapter_dim=0)


def rule_stream(second: str) -> Stream:
    """A rule over four invented items, then `second`: the same items with every label flipped ("flipped", a
    contradiction), or asked for their colours ("colours", a task merely new)."""
    items, labels = ["zobi", "kemu", "dara", "lufo"], [" yes", " no", " yes", " no"]

    def task(name: str, prompt: str, answers: list[str]) -> Task:
        train = [{"prompt": prompt.format(item), "completion": answer} for item, answer in zip(items, answers)]
        return Task(name=name, train=train * 4,
                    probes=[Probe(prompt=e["prompt"], answer=e["completion"].strip()) for e in train])

    flipped = [" no" if label == " yes" else " yes" for label in labels]
    return Stream(name="rules", tasks=[
        task("rule", "Rule: the {} is", labels),
        task("flipped", "Rule: the {} is", flipped) if second == "flipped"
        else task("colours", "Colour: the {} is", [" red", " blue", " red", " blue"])])


@pytest.mark.parametrize("second", ["flipped", "colours"])
def test_a_contradicting_task_isolates_and_a_new_one_shares(make_model, tokenizer, training_args, second):
    trainer, method = aria_trainer(make_model, tokenizer, training_args)  # the default test, at 0.25
    trainer.args.num_train_epochs = 20
    (before, learned), (after, _) = first_task_logits(trainer, tokenizer, rule_stream(second))
    assert learned == 1.0  # the first rule is learned: there is something to contradict
    if second == "flipped":  # routed to the first rule's adapter, every item answered the other way than the task asks
        assert method._conflict == 0.5 and method.isolated_from == 1
        assert torch.equal(after, before)
        assert trainer.last_timing["isolated"] == 1.0
        resumed = ARIA(ARIAConfig())
        resumed.load_state_dict(method.state_dict())  # a resumed run keeps isolating
        assert resumed.isolated_from == 1
    else:  # red or blue: the first rule's adapter has no say on which, so the shared pathways train on
        assert method._conflict < 0.25 and method.isolated_from is None
        assert not torch.allclose(after, before)
    for count in (1, CONFLICT_ANSWERS + 1):  # one answer, or more than a classification has: never tested
        names = [{"prompt": f"Name {i}:", "completion": f" w{i % count}"} for i in range(CONFLICT_ANSWERS + 1)]
        task = Task(name="names", train=names, probes=[Probe(prompt="Name 0:", answer="w0")])
        assert method._contradiction(trainer.model, task) is None
