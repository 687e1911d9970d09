import dataclasses

import pytest
import torch
from peft.tuners.lora import LoraLayer

from retain import ContinualTrainer, TaskData, build_method
from retain.methods import EWC, Composed, EWCConfig, MethodError, Replay, ReplayConfig, TrainingContext

CONTEXT = TrainingContext()

from conftest import fact_task


def test_build_method_from_strings():
    method = build_method("ewc", {"ewc_lambda": "5", "mode": "online", "gamma": "0.5"})
    assert isinstance(method, EWC)
    assert (method.config.ewc_lambda, method.config.mode, method.config.gamma) == (5.0, "online", 0.5)
    assert build_method("lora", {"per_task": "true"}).config.per_task is True


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("nope", {}, r"--method: unknown method 'nope'; available: .*full_ft"),
        ("ewc", {"lamda": "1"}, r"EWCConfig.lamda: ewc has no option 'lamda'"),
        ("ewc", {"ewc_lambda": "big"}, r"EWCConfig.ewc_lambda: 'big' is not a valid float"),
        ("ewc", {"mode": "both"}, r"EWCConfig.mode: expected one of 'separate', 'online', got 'both'"),
        ("replay", {"ratio": "1"}, r"ReplayConfig.ratio: must be below 1, got 1.0"),
        ("replay", {"ratio": "-0.1"}, r"ReplayConfig.ratio: must be ≥ 0, got -0.1"),
        ("lora", {"per_task": "maybe"}, r"LoRAConfig.per_task: 'maybe' is not a valid bool"),
        ("replay+nope", {}, r"--method: unknown method 'nope'"),
        ("replay+ewc", {"seed": "1"}, r"--method-arg seed: replay and ewc have it; name the part \(replay.seed\)"),
        ("replay+ewc", {"lora.r": "1"}, r"--method-arg lora.r: 'lora' is not a part of replay\+ewc"),
        ("replay+replay", {}, r"a composition names two or more different methods"),
    ],
)
def test_bad_method_options(name, args, message):
    with pytest.raises(MethodError, match=message):
        build_method(name, args)


def trainer_for(method, make_model, tokenizer, training_args, **overrides):
    return ContinualTrainer(model=make_model(), args=training_args(**overrides), method=method, processing_class=tokenizer)


def task_data(trainer, task):
    return TaskData(task=task, features=trainer.tokenize(task.train), collate=trainer.collate)


def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_away(make_model, tokenizer, training_args):
    method = EWC(EWCConfig(ewc_lambda=3.0, fisher_samples=4))
    trainer = trainer_for(method, make_model, tokenizer, training_args)
    model = trainer.model
    assert method.after_forward(model, {}, CONTEXT) is None
    method.after_task(model, task_data(trainer, fact_task("a", [("X is", "y"), ("Z is", "w")])), CONTEXT)
    assert method.after_forward(model, {}, CONTEXT).item() == 0.0
    name = "model.layers.0.mlp.up_proj.weight"
    param = dict(model.named_parameters())[name]
    fisher = method.anchor.fisher[name]
    assert fisher.sum() > 0
    with torch.no_grad():
        param += 0.1
    one = method.after_forward(model, {}, CONTEXT).item()
    assert one == pytest.approx(0.5 * 3.0 * (fisher * 0.01).sum().item(), rel=1e-4)
    with torch.no_grad():
        param += 0.1
    assert method.after_forward(model, {}, CONTEXT).item() == pytest.approx(4 * one, rel=1e-4)


def test_ewc_separate_merge_has_the_gradient_of_the_sum_of_task_penalties(make_model, tokenizer, training_args):
    method = EWC(EWCConfig(ewc_lambda=2.0, fisher_samples=4))
    trainer = trainer_for(method, make_model, tokenizer, training_args)
    model, params = trainer.model, dict(trainer.model.named_parameters())
    snapshots = []
    for i, facts in enumerate([[("X is", "y")], [("Q is", "r"), ("S is", "t")]]):
        with torch.no_grad():
            for p in params.values():
                p.add_(0.05 * torch.randn_like(p))
        method_copy = EWC(EWCConfig(ewc_lambda=2.0, fisher_samples=4))
        data = task_data(trainer, fact_task(f"t{i}", facts))
        method_copy.after_task(model, data, CONTEXT)
        snapshots.append(method_copy)
        method.after_task(model, data, CONTEXT)
    with torch.no_grad():
        for p in params.values():
            p.add_(0.05 * torch.randn_like(p))
    name = "model.layers.1.self_attn.q_proj.weight"

    def grad_of(penalty_fn):
        model.zero_grad()
        penalty_fn().backward()
        return params[name].grad.clone()

    merged = grad_of(lambda: method.after_forward(model, {}, CONTEXT))
    separate = grad_of(lambda: sum(m.after_forward(model, {}, CONTEXT) for m in snapshots))
    torch.testing.assert_close(merged, separate, rtol=1e-4, atol=1e-8)


def test_online_ewc_decays_old_fisher(make_model, tokenizer, training_args):
    method = EWC(EWCConfig(mode="online", gamma=0.5, fisher_samples=2))
    trainer = trainer_for(method, make_model, tokenizer, training_args)
    data = task_data(trainer, fact_task("a", [("X is", "y")]))
    method.after_task(trainer.model, data, CONTEXT)
    first = {k: v.clone() for k, v in method.anchor.fisher.items()}
    method.after_task(trainer.model, data, CONTEXT)  # same weights, same data: F = 0.5·F + F
    name = next(iter(first))
    torch.testing.assert_close(method.anchor.fisher[name], 1.5 * first[name])
    torch.testing.assert_close(method.anchor.anchor[name], dict(trainer.model.named_parameters())[name].detach())


def test_ewc_params_scope_limits_the_anchored_weights(make_model, tokenizer, training_args):
    method = EWC(EWCConfig(params=r"mlp\.", fisher_samples=2))
    trainer = trainer_for(method, make_model, tokenizer, training_args)
    method.after_task(trainer.model, task_data(trainer, fact_task("a", [("X is", "y")])), CONTEXT)
    assert method.anchor.fisher and all(".mlp." in name for name in method.anchor.fisher)


def test_replay_mixes_the_stated_ratio_from_the_buffer():
    method = Replay(ReplayConfig(buffer_size=5, ratio=0.25, seed=1))
    batch = [{"input_ids": [1], "labels": [1]}] * 6
    assert method.extend_batch(batch) == batch, "nothing to replay before the first task ends"
    old = [{"input_ids": [100 + i], "labels": [100 + i]} for i in range(20)]
    method.after_task(None, TaskData(task=None, features=old, collate=None), CONTEXT)
    assert len(method.buffer) == 5 and method.seen == 20
    mixed = method.extend_batch(batch)
    assert len(mixed) == 8  # 6 new + round(6·0.25/0.75) = 2 replayed → replay is 2/8 = 25%
    assert mixed[:6] == batch and all(example in method.buffer for example in mixed[6:])


def test_replay_reservoir_is_a_uniform_sample():
    counts = [0] * 100
    for seed in range(400):
        method = Replay(ReplayConfig(buffer_size=10, seed=seed))
        method.after_task(None, TaskData(task=None, features=[{"input_ids": [i]} for i in range(100)], collate=None), CONTEXT)
        for example in method.buffer:
            counts[example["input_ids"][0]] += 1
    # each example is kept with probability 10/100: 40 expected out of 400 runs
    early, late = sum(counts[:50]), sum(counts[50:])
    assert abs(early - late) < 0.15 * (early + late)


def test_replay_state_round_trip():
    method = Replay(ReplayConfig(buffer_size=3, seed=2))
    method.after_task(None, TaskData(task=None, features=[{"input_ids": [i]} for i in range(10)], collate=None), CONTEXT)
    clone = Replay(ReplayConfig(buffer_size=3, seed=99))
    clone.load_state_dict(method.state_dict())
    batch = [{"input_ids": [0]}] * 3
    assert clone.extend_batch(batch) == method.extend_batch(batch)


def test_full_ft_trains_every_weight(make_model, tokenizer, training_args):
    trainer = trainer_for(build_method("full_ft"), make_model, tokenizer, training_args, num_train_epochs=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.add_task(fact_task("a", [("X is", "y"), ("Z is", "w")]))
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_lora_trains_only_adapter_weights(make_model, tokenizer, training_args):
    trainer = trainer_for(build_method("lora", {"r": "4"}), make_model, tokenizer, training_args, num_train_epochs=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.add_task(fact_task("a", [("X is", "y"), ("Z is", "w")]))
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)


def test_lora_per_task_merges_then_starts_fresh(make_model, tokenizer, training_args):
    trainer = trainer_for(build_method("lora", {"r": "4", "per_task": "true"}), make_model, tokenizer, training_args)
    model = trainer.model
    trainer.add_task(fact_task("a", [("X is", "y"), ("Z is", "w")]))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    base_before = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    trainer.consolidate_task()
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert not torch.equal(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, base_before)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            assert torch.count_nonzero(module.lora_B["default"].weight) == 0


def test_same_seed_gives_the_same_lora_initialisation(make_model, tokenizer, training_args):
    first = trainer_for(build_method("lora", {"r": "4"}), make_model, tokenizer, training_args)
    torch.manual_seed(12345)  # whatever the global RNG holds, the trainer's seed decides
    second = trainer_for(build_method("lora", {"r": "4"}), make_model, tokenizer, training_args)
    for (name, a), (_, b) in zip(first.model.named_parameters(), second.model.named_parameters()):
        assert torch.equal(a, b), name


def test_replay_and_ewc_compose_into_one_method(make_model, tokenizer, training_args, small_stream, tmp_path):
    options = {"buffer_size": "8", "ratio": "0.5", "fisher_samples": "2", "ewc.seed": "3", "replay.seed": "1"}
    method = build_method("replay+ewc", options)
    assert isinstance(method, Composed) and method.name == "replay+ewc"
    replay, ewc = method.parts
    assert (replay.config.buffer_size, ewc.config.fisher_samples, ewc.config.seed, replay.config.seed) == (8, 2, 3, 1)
    trainer = trainer_for(method, make_model, tokenizer, training_args, num_train_epochs=1, per_device_train_batch_size=2)
    sizes: list[tuple[int, int]] = []  # (task, examples in the batch)
    penalized: list[tuple[int, bool]] = []  # (task, whether the forward added a penalty)
    extend, penalize = replay.extend_batch, ewc.after_forward

    def record_batch(features):
        extended = extend(features)
        sizes.append((trainer.context.task_index, len(extended)))
        return extended

    def record_penalty(model, inputs, context):
        penalty = penalize(model, inputs, context)
        penalized.append((context.task_index, penalty is not None))
        return penalty

    replay.extend_batch, ewc.after_forward = record_batch, record_penalty
    assert trainer.fit(small_stream).complete
    assert {size for task, size in sizes if task == 0} == {2}, "nothing to replay before the first task ends"
    assert {size for task, size in sizes if task > 0} == {4}, "each later batch: 2 new examples and 2 replayed"
    assert {added for task, added in penalized if task == 0} == {False}, "no anchor before the first task ends"
    assert {added for task, added in penalized if task > 0} == {True}, "every later step pays the EWC penalty"
    trainer.save_continual_state(tmp_path / "state")
    fresh = build_method("replay+ewc", options)
    resumed = trainer_for(fresh, make_model, tokenizer, training_args)
    resumed.load_continual_state(tmp_path / "state")
    assert fresh.parts[0].buffer == replay.buffer and fresh.parts[0].seen == replay.seen
    assert all(torch.equal(fresh.parts[1].anchor.fisher[n], ewc.anchor.fisher[n]) for n in ewc.anchor.fisher)


SMALL_OPTIONS = {"smf": {"k": "8"}, "casm": {"k": "8"}, "aria": {"adapter_dim": "8"}, "ewc": {"fisher_samples": "4"}}


@pytest.mark.parametrize("name", ["full_ft", "lora", "ewc", "replay", "aria", "smf", "casm"])
def test_every_method_trains_under_bf16_mixed_precision(name, make_model, tokenizer, training_args, small_stream):
    # bf16 is the default on GPUs; the CPU's bf16 autocast runs the same mixed-precision code paths.
    method = build_method(name, SMALL_OPTIONS.get(name, {}))
    trainer = ContinualTrainer(make_model(), training_args(bf16=True, num_train_epochs=1), method=method,
                               processing_class=tokenizer)
    # Periods for CASM, which versions its memory by time.
    stream = dataclasses.replace(small_stream, tasks=[dataclasses.replace(t, period=str(2018 + 2 * i))
                                                      for i, t in enumerate(small_stream.tasks)])
    trainer.start_stream(stream)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.add_task(stream.tasks[0])
    trainer.consolidate_task()
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed and all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.evaluate_all_tasks().em is not None
