import math

import pytest
import torch

from retain import ContinualTrainer, RunDirectory, Stream, StreamError, build_method
from retain.methods import TrainingContext
from retain.nn.feed_forward_memory import FeedForwardMemory
from retain.nn.product_key_memory import ProductKeyMemory, insert_memory

from conftest import fact_task

SMALL = {"memory": "product_key", "n_keys": "8", "heads": "2", "k": "4", "key_dim": "8", "top_t": "6", "lr": "5.0"}
CONTEXT = TrainingContext()
FEED_FORWARD = {"memory": "feed_forward", "k": "8", "top_t": "6", "budget": "batch", "lr": "5.0"}
MEMORIES = pytest.mark.parametrize("memory", [SMALL, FEED_FORWARD, FEED_FORWARD | {"selection": "kl"}],
                                   ids=["product_key", "feed_forward", "feed_forward_kl"])


def test_memory_read_equals_a_dense_computation():
    torch.manual_seed(0)
    memory = ProductKeyMemory(dim=12, n_keys=6, heads=3, k=5, key_dim=8)
    torch.nn.init.normal_(memory.values.weight)
    x = torch.randn(2, 7, 12)
    q = memory.query(x.reshape(-1, 12)).view(-1, 3, 2, 4)
    expected = torch.zeros(14, 12)
    for h in range(3):
        # every one of the 36 slots: score = first half · key[i] + second half · key[j], slot = i·6 + j
        scores = (q[:, h, 0] @ memory.keys[h, 0].T)[:, :, None] + (q[:, h, 1] @ memory.keys[h, 1].T)[:, None, :]
        top, slots = scores.flatten(1).topk(5, dim=-1)
        expected += (torch.softmax(top, -1)[..., None] * memory.values.weight[slots]).sum(1)
    torch.testing.assert_close(memory(x), expected.view(2, 7, 12), rtol=1e-5, atol=1e-6)
    assert memory.last_indices.shape == (2, 7, 15)


def test_retrofit_leaves_logits_unchanged(make_model):
    model = make_model()
    ids = torch.tensor([[5, 9, 200, 31, 7]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        insert_memory(model, layer=1, n_keys=8, heads=2, k=4, key_dim=8)
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    with pytest.raises(ValueError, match="out of range"):
        insert_memory(model, layer=5)


def stream_trainer(make_model, tokenizer, training_args, small_stream, memory=SMALL, **overrides):
    method = build_method("smf", memory | overrides)
    trainer = ContinualTrainer(make_model(), training_args(num_train_epochs=1, per_device_train_batch_size=2),
                               method=method, processing_class=tokenizer)
    trainer.start_stream(small_stream)
    return trainer, method


def test_tfidf_matches_a_hand_computation(make_model, tokenizer, training_args, small_stream):
    _, method = stream_trainer(make_model, tokenizer, training_args, small_stream)
    method.document_frequency = torch.zeros(method.memory.slots, dtype=torch.long)
    method.document_frequency[[1, 2]] = torch.tensor([3, 0])
    method.background_batches = 4
    reads = torch.tensor([[1, 1, 2], [2, 2, 5]])  # slot 1 read twice, slot 2 three times, slot 5 once: 6 reads
    scores = method.tfidf(reads)
    assert scores[1].item() == pytest.approx(2 / 6 * math.log(5 / 4))
    assert scores[2].item() == pytest.approx(3 / 6 * math.log(5 / 1))
    assert scores[5].item() == pytest.approx(1 / 6 * math.log(5 / 1))
    assert scores[0].item() == 0.0


def test_kl_selection_matches_a_hand_computation(make_model, tokenizer, training_args, small_stream):
    _, method = stream_trainer(make_model, tokenizer, training_args, small_stream, selection="kl")
    method.background_reads = torch.zeros(method.memory.slots, dtype=torch.long)
    method.background_reads[[1, 2]] = torch.tensor([9, 1])
    reads = torch.tensor([[1, 1, 2], [2, 2, 5]])
    scores = method.kl(reads)
    total = 10 + method.memory.slots  # add-one smoothing
    assert scores[1].item() == pytest.approx(2 / 6 * math.log((2 / 6) / (10 / total)))
    assert scores[2].item() == pytest.approx(3 / 6 * math.log((3 / 6) / (2 / total)))
    assert scores[5].item() == pytest.approx(1 / 6 * math.log((1 / 6) / (1 / total)))
    assert scores[0].item() == 0.0
    with pytest.raises(ValueError, match="SMFConfig.selection: expected one of"):
        build_method("smf", {"selection": "random"})


def test_background_statistics_count_batches_that_read_a_slot(make_model, tokenizer, training_args, small_stream):
    _, method = stream_trainer(make_model, tokenizer, training_args, small_stream)
    assert method.background_batches == len(small_stream.background) == 3
    assert method.document_frequency.max() <= 3 and method.document_frequency.sum() > 0
    assert (method.background_reads >= method.document_frequency).all()
    assert method.background_reads.sum() > method.document_frequency.sum()  # a text reads some slots more than once


@MEMORIES
def test_only_selected_slots_change(make_model, tokenizer, training_args, small_stream, memory):
    trainer, method = stream_trainer(make_model, tokenizer, training_args, small_stream, memory)
    value_ids = {id(values) for _, values in method.memory.value_blocks()}
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if id(p) not in value_ids}
    values_before = method.memory.value_table()
    selections = []
    original = method.after_forward

    def record(model, inputs, context):
        original(model, inputs, context)
        selections.append(method.selected.clone())

    method.after_forward = record
    trainer.add_task(small_stream.tasks[0])
    selected = torch.unique(torch.cat(selections))
    assert 0 < len(selected) <= 6 * len(selections)
    assert all(len(s) <= 6 for s in selections)
    values_after = method.memory.value_table()
    changed = (values_after != values_before).any(dim=1).nonzero().flatten()
    assert len(changed) > 0 and set(changed.tolist()) <= set(selected.tolist())
    untouched = torch.ones(method.memory.slots, dtype=torch.bool)
    untouched[selected] = False
    assert torch.equal(values_after[untouched], values_before[untouched])  # bit-identical
    for name, param in trainer.model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    assert trainer.last_timing["optimizer_state_bytes"] == 0


@MEMORIES
def test_gradient_of_unselected_slots_is_exactly_zero(make_model, tokenizer, training_args, small_stream, memory):
    trainer, method = stream_trainer(make_model, tokenizer, training_args, small_stream, memory)
    method.before_task(trainer.model, CONTEXT)
    batch = trainer.collate(trainer.tokenize(small_stream.tasks[0].train[:2]))
    outputs = trainer.model(**batch)
    method.after_forward(trainer.model, batch, CONTEXT)
    outputs.loss.backward()
    grad = torch.cat([values.grad for _, values in method.memory.value_blocks()])
    nonzero = grad.abs().sum(dim=1).nonzero().flatten()
    assert len(nonzero) > 0 and set(nonzero.tolist()) <= set(method.selected.tolist())


@pytest.mark.parametrize("budget, per_batch", [("batch", [3, 3]), ("example", [3, 9])])
def test_budget_counts_slots_per_batch_or_per_example(make_model, tokenizer, training_args, small_stream, budget, per_batch):
    trainer, method = stream_trainer(make_model, tokenizer, training_args, small_stream, FEED_FORWARD, top_t="3",
                                     budget=budget)
    method.before_task(trainer.model, CONTEXT)
    selected = []
    for size in (1, 3):  # each batch reads more distinct slots than any budget here
        batch = trainer.collate(trainer.tokenize(small_stream.tasks[0].train[:size]))
        trainer.model(**batch)
        method.after_forward(trainer.model, batch, CONTEXT)
        selected.append(len(method.selected))
    assert selected == per_batch
    with pytest.raises(ValueError, match="SMFConfig.budget: expected one of"):
        build_method("smf", {"budget": "token"})


@MEMORIES
def test_state_round_trips_through_a_checkpoint(make_model, tokenizer, training_args, small_stream, tmp_path, memory):
    trainer, method = stream_trainer(make_model, tokenizer, training_args, small_stream, memory)
    result = trainer.fit(small_stream, run_dir=RunDirectory(tmp_path / "run", {"m": "smf"}))
    assert [t["slots_written"] > 0 for t in result.timings] == [True] * 3
    assert all("slots_shared_with_earlier_tasks" in t for t in result.timings)
    restored = build_method("smf", memory)
    fresh = ContinualTrainer(make_model(), training_args(), method=restored, processing_class=tokenizer)
    state, _ = RunDirectory(tmp_path / "run", {"m": "smf"}, resume=True).load_checkpoint(fresh.model)
    restored.load_state_dict(state)
    assert torch.equal(restored.document_frequency, method.document_frequency)
    assert torch.equal(restored.background_reads, method.background_reads)
    assert [torch.equal(a, b) for a, b in zip(restored.written, method.written)] == [True] * 3
    assert torch.equal(restored.memory.value_table(), method.memory.value_table())
    ids = torch.tensor([[5, 9, 200, 31]])
    with torch.no_grad():
        assert torch.equal(fresh.model(input_ids=ids).logits, trainer.model(input_ids=ids).logits)


def test_smf_needs_background_text_that_is_not_general_text(make_model, tokenizer, training_args, small_stream, tmp_path):
    background = small_stream.background
    small_stream.background = []  # the general text is there, but perplexity is measured on it
    with pytest.raises(ValueError, match="background statistics need text: give the stream a `background` file"):
        stream_trainer(make_model, tokenizer, training_args, small_stream)
    file = tmp_path / "background.jsonl"
    file.write_text("".join(f'{{"text": "{t}"}}\n' for t in [*background, small_stream.general[0]]))
    with pytest.raises(ValueError, match="SMFConfig.background: 1 of the texts of .*background.jsonl are the stream's general text"):
        stream_trainer(make_model, tokenizer, training_args, small_stream, SMALL | {"background": str(file)})
    small_stream.background = background
    with pytest.raises(StreamError, match="both general or locality .evaluation. and background"):
        Stream(name="s", tasks=small_stream.tasks, general=small_stream.general, background=small_stream.general[:1])


def test_healing_fits_the_addressing_and_keeps_the_model_unchanged(make_model, tokenizer, training_args, small_stream):
    plain_trainer, plain = stream_trainer(make_model, tokenizer, training_args, small_stream)
    healed_trainer, healed = stream_trainer(make_model, tokenizer, training_args, small_stream, heal_steps="5", heal_lr="0.05")
    assert not torch.equal(plain.memory.keys, healed.memory.keys)
    assert not torch.equal(plain.memory.query.weight, healed.memory.query.weight)
    assert torch.count_nonzero(healed.memory.values.weight) == 0
    assert not healed.memory.keys.requires_grad and healed.memory.values.weight.requires_grad
    ids = torch.tensor([[5, 9, 200, 31]])
    with torch.no_grad():
        assert torch.equal(healed_trainer.model(input_ids=ids).logits, plain_trainer.model(input_ids=ids).logits)


def test_data_key_init_draws_keys_from_background_queries(make_model, tokenizer, training_args, small_stream):
    trainer, method = stream_trainer(make_model, tokenizer, training_args, small_stream, key_init="data")
    inputs = []
    handle = method.memory.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with torch.no_grad():
        for features in trainer.tokenize([{"text": t} for t in small_stream.background]):  # one text a batch, as SMF reads them
            trainer.model(input_ids=torch.tensor([features["input_ids"]]))
        handle.remove()
        queries = method.memory.query(torch.cat([i.flatten(0, 1) for i in inputs])).view(-1, 2, 2, 4)
        for head in range(2):
            for half in range(2):
                distances = torch.cdist(method.memory.keys[head, half], queries[:, head, half],
                                        compute_mode="donot_use_mm_for_euclid_dist")
                assert torch.all(distances.min(dim=1).values < 1e-5)  # every key is some token's query half


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_feed_forward_memory_is_the_model_and_reads_its_strongest_units(make_model, architecture):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = make_model() if architecture == "llama" else GPT2LMHeadModel(GPT2Config(
        vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    ids = torch.tensor([[5, 9, 200, 31, 7], [8, 1, 2, 3, 4]])
    activations = []
    with torch.no_grad():
        before = model(input_ids=ids).logits
        memory = FeedForwardMemory(model, layers=[1], k=3)
        handle = memory.projections[0].register_forward_pre_hook(lambda module, args: activations.append(args[0]))
        after = model(input_ids=ids).logits
        handle.remove()
    assert torch.equal(after, before)  # nothing written yet
    units = activations[0].shape[-1]
    assert memory.slots == units and memory.dim == model.config.hidden_size
    expected = activations[0].abs().topk(3, dim=-1).indices
    assert torch.equal(memory.last_indices, expected)
    both = FeedForwardMemory(make_model(), k=3) if architecture == "llama" else None
    if both is not None:  # two layers: one row space, the second layer's units after the first's
        assert [start for start, _ in both.value_blocks()] == [0, both.value_blocks()[0][1].shape[0]]
    with pytest.raises(ValueError, match="out of range"):
        FeedForwardMemory(make_model(), layers=[7])


def test_feed_forward_memory_reads_each_example_from_its_table(make_model):
    model = make_model()
    memory = FeedForwardMemory(model, k=4)
    ids = torch.tensor([[5, 9, 200, 31], [8, 1, 2, 3], [4, 4, 6, 7]])
    other = torch.randn(memory.slots, memory.dim)
    with torch.no_grad():
        live = model(input_ids=ids).logits
        memory.tables, memory.table_of = [other], torch.tensor([0, -1, 0])
        mixed = model(input_ids=ids).logits
        memory.tables, memory.table_of = [], None
        memory.write_rows(torch.arange(memory.slots), other)
        from_other = model(input_ids=ids).logits
    torch.testing.assert_close(mixed[1], live[1])
    torch.testing.assert_close(mixed[[0, 2]], from_other[[0, 2]])
    assert torch.equal(memory.read_rows(torch.tensor([3, memory.slots - 1])), other[[3, -1]])


def test_feed_forward_is_the_default_memory_and_options_are_checked():
    assert build_method("smf").config.memory == "feed_forward"
    with pytest.raises(ValueError, match="SMFConfig.memory: expected one of"):
        build_method("smf", {"memory": "dense"})
    with pytest.raises(ValueError, match="SMFConfig.layers: expected comma-separated integers"):
        build_method("smf", {"layers": "one"})


def test_a_written_unit_reaches_only_the_tokens_that_read_it(make_model):
    torch.manual_seed(0)
    memory = FeedForwardMemory(make_model(), layers=[0], k=2)
    projection = memory.projections[0]
    a = torch.randn(1, 6, projection.delta.shape[0])
    with torch.no_grad():
        before = projection(a)
        reads = memory.last_indices[0]  # (tokens, k)
        unit = reads[0, 0].item()
        memory.write_rows(torch.tensor([unit]), torch.ones(1, memory.dim))
        after = projection(a)
    changed = (after != before).any(dim=-1)[0]
    assert changed[0] and torch.equal(changed, (reads == unit).any(dim=-1))
