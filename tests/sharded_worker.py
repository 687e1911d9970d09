"""Run under torchrun (2 processes, gloo on CPU): a model sharded by FSDP2, as accelerate shards it on GPUs, against
the same model unsharded. Prints one line per check that holds; any mismatch fails the process.

argv: a directory for the checkpoint.
- checkpoint: the sharded model is checkpointed whole, as one process would save it.
- ewc: EWC's Fisher, anchors, penalty and penalty gradient on the shards are those of the unsharded model, also
  after its state goes through a checkpoint's whole tensors.
- smf: the feed-forward memory's gradient on the shards is the unsharded model's, zero outside the selected slots,
  and an SGD step moves the same rows by the same amounts.
- casm: two periods learned on the shards keep the same versions as unsharded: each query reads its period's
  version, with the same logits, and a rollback restores the same rows.
- aria: two tasks, one step each, on the shards as data parallel unsharded: the same gradients (dampened slow
  pathway, gate regulariser, the task's adapter drawn afresh, SPC from the second task), the same SPC Fisher and
  anchors, task prototypes and routes, and the same routed logits; and isolated after the first task
  (`shared_tasks=1`), the second task's gradient is its adapter's alone, sharded as unsharded.
"""

import copy
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState
from torch.distributed.fsdp import fully_shard

from retain.encoding import TextEncoding
from retain.methods import build_method
from retain.methods.aria import ARIA, ARIAConfig
from retain.methods.base import MethodError, StreamData, TaskData, TrainingContext
from retain.methods.ewc import EWC, EWCConfig
from retain.models import load_model
from retain.runstate import model_weights, read_checkpoint, write_checkpoint
from retain.stream import Probe, Stream, Task



def shard(net: torch.nn.Module) -> torch.nn.Module:
    """`net` sharded as accelerate's FSDP2 shards a decoder: each layer, then the whole model."""
    for layer in net.model.layers:
        fully_shard(layer)
    fully_shard(net)
    return net


def unsharded_and_sharded(name: str) -> tuple[list, list[torch.nn.Module]]:
    """Method `name` twice (a small memory), each preparing its own tiny model: the first unsharded, the second sharded."""
    methods = [build_method(name, {"k": "8", "top_t": "6", "budget": "batch"}) for _ in range(2)]
    nets = [method.prepare(load_model("tiny")[0]) for method in methods]
    shard(nets[1])
    return methods, nets


PartialState(cpu=True)  # gloo, as the trainer's arguments set it up on CPUs (the sums across processes go through it)
torch.manual_seed(0)
reference, _ = load_model("tiny")
model = shard(copy.deepcopy(reference))
assert all(p.to_local().numel() < p.numel() for p in model.parameters() if p.dim() == 2), "not sharded"
main = dist.get_rank() == 0

# checkpoint
weights = model_weights(model)  # every process: the gather is collective
if main:
    path = write_checkpoint(Path(sys.argv[1]), weights, "full_ft", {}, {"result": {}})
    restored, _ = load_model("tiny")
    read_checkpoint(path, restored)
    expected, loaded = reference.state_dict(), restored.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[n], expected[n]) for n in expected)
    print("checkpoint: weights equal")

# ewc
generator = torch.Generator().manual_seed(1)
features = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 1000, (6, 1, 12), generator=generator)]
data = TaskData(task=Task(name="t", train=[{"text": "unused"}], probes=[Probe("unused", "unused")]), features=features, collate=lambda batch: batch[0])
methods = [EWC(EWCConfig(fisher_samples=6)) for _ in range(2)]
for method, net in zip(methods, (reference, model)):
    method.after_task(net, data, TrainingContext())
    with torch.no_grad():  # off the anchor, by the same step everywhere
        for p in net.parameters():
            (p.to_local() if hasattr(p, "to_local") else p).sub_(1e-3)

def whole(tensors: dict) -> dict:
    return {n: t.full_tensor() if hasattr(t, "full_tensor") else t for n, t in tensors.items()}

expected, got = methods[0].state_dict(), methods[1].state_dict()  # gathered: every process calls it
for kind in ("fisher", "anchor"):
    assert expected[kind].keys() == got[kind].keys()
    assert all(torch.allclose(got[kind][n], expected[kind][n], rtol=1e-5, atol=1e-12) for n in expected[kind]), kind
assert any(float(f.abs().max()) > 0 for f in expected["fisher"].values()), "an all-zero Fisher tests nothing"

def penalty_and_gradients(method: EWC, net: torch.nn.Module) -> tuple[float, dict]:
    net.zero_grad(set_to_none=True)
    penalty = method.after_forward(net, {}, TrainingContext())
    penalty.backward()
    total = penalty.detach().clone()
    if any(hasattr(p, "to_local") for p in net.parameters()):
        dist.all_reduce(total)  # each process holds its shard's part
    return float(total), whole({n: p.grad for n, p in net.named_parameters() if p.grad is not None})

value, gradients = penalty_and_gradients(methods[0], reference)
resumed = EWC(EWCConfig(fisher_samples=6))
resumed.load_state_dict(got)  # whole tensors, as read back from a checkpoint
for method in (methods[1], resumed):
    sharded_value, sharded_gradients = penalty_and_gradients(method, model)
    assert value > 0 and abs(sharded_value - value) <= 1e-5 * value, (sharded_value, value)
    assert gradients.keys() == sharded_gradients.keys()
    assert all(torch.allclose(sharded_gradients[n], gradients[n], rtol=1e-5, atol=1e-9) for n in gradients)
if main:
    print("ewc: fisher, anchors, penalty and gradients equal")

# smf: two processes each run one example of the batch the unsharded model runs whole
smf, nets = unsharded_and_sharded("smf")
for method in smf:
    method.document_frequency = torch.zeros(method.memory.slots, dtype=torch.long)
    method.document_frequency[: method.memory.slots // 2] = 3  # half the slots are common in background text
    method.background_batches = 4
batch = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(2))
mine = batch[dist.get_rank() : dist.get_rank() + 1]
gradients, selected = [], []
for method, net, ids in zip(smf, nets, (batch, mine)):
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    loss = net(**inputs).loss
    method.after_forward(net, inputs, TrainingContext())  # selection from the reads of both examples
    loss.backward()
    selected.append(method.selected.sort().values)
    gradients.append(whole({f"{start}": values.grad for start, values in method.memory.value_blocks()}))
assert torch.equal(selected[0], selected[1]) and len(selected[0]) == 6, "not the same slots"
for (start, values), name in zip(smf[0].memory.value_blocks(), gradients[0]):
    assert torch.allclose(gradients[1][name], gradients[0][name], rtol=1e-4, atol=1e-7), name
    rows = selected[0][(selected[0] >= start) & (selected[0] < start + len(values))] - start
    unselected = torch.ones(len(values), dtype=torch.bool)
    unselected[rows] = False
    assert not gradients[1][name][unselected].any(), "an unselected row got gradient"
assert any(g.any() for g in gradients[1].values()), "no row got gradient: the check tests nothing"
for method, net in zip(smf, nets):
    method.optimizer(net, TrainingContext()).step()
after = [whole({f"{start}": values.detach() for start, values in m.memory.value_blocks()}) for m in smf]
assert all(torch.allclose(after[1][n], after[0][n], rtol=1e-4, atol=1e-7) for n in after[0])
if main:
    print("smf: selected slots, gradients and step equal")

# casm: two periods, each one step on its own batch; the second copies on write the rows the first wrote
casm, nets = unsharded_and_sharded("casm")
for method in casm:
    method.writer.document_frequency = torch.zeros(method.writer.memory.slots, dtype=torch.long)
    method.writer.background_batches = 4
for period, seed in (("2018", 3), ("2020", 4)):
    batch = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(seed))
    task = Task(name=period, train=[{"text": "unused"}], probes=[Probe("unused", "unused")], period=period)
    for method, net, ids in zip(casm, nets, (batch, batch[dist.get_rank() : dist.get_rank() + 1])):
        context = TrainingContext(task=task)
        method.before_task(net, context)
        optimizer = method.optimizer(net, context)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        loss = net(**inputs).loss
        method.after_forward(net, inputs, context)
        loss.backward()
        optimizer.step()
        method.after_task(net, TaskData(task=task, features=[], collate=lambda b: b), context)
assert casm[0].table.copied_rows() > 0, "the second period copied no row: the check tests nothing"
queries = torch.randint(0, 1000, (2, 6), generator=torch.Generator().manual_seed(5))
prompts = ["[2018] a query", "[2020] a query"]
logits = []
for method, net in zip(casm, nets):
    assert method.route(net, prompts, lambda texts: {}).names == ["2018", "2020"]
    net.eval()
    with torch.no_grad():
        logits.append(net(input_ids=queries).logits)
assert torch.allclose(logits[1], logits[0], rtol=1e-4, atol=1e-5), float((logits[1] - logits[0]).abs().max())
before = [m.table.memory.value_table() for m in casm]
for method in casm:
    method.rollback()
after = [m.table.memory.value_table() for m in casm]
assert not torch.equal(after[0], before[0]) and torch.allclose(after[1], after[0], rtol=1e-4, atol=1e-7)
if main:
    print("casm: versions, routed logits and rollback equal", flush=True)
# aria: the sharded model against the unsharded one run data parallel (each process its half of the batch, gradients
# averaged as DDP averages them), which the 2-process tests hold equal to one process
rank, processes = dist.get_rank(), dist.get_world_size()


def collate(features: list[dict]) -> dict:
    ids = torch.tensor([f["input_ids"] for f in features])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def aria_matches(**config) -> None:
    arias, nets = [ARIA(ARIAConfig(adapter_dim=8, fisher_samples=2, warmup_steps=0, spc_lambda=50.0, **config))
                   for _ in range(2)], []
    # The second task's examples, of two answers, are what the conflict test (`conflict_isolation`) reads.
    rules = [{"prompt": f"Rule: the {word} is", "completion": answer}
             for word, answer in zip(("zobi", "kemu", "dara", "lufo"), (" yes", " no", " yes", " no"))]
    tasks = [Task(name=f"t{i}", train=[{"text": "unused"}] if i == 0 else rules, probes=[Probe("unused", "unused")])
             for i in range(2)]
    for method in arias:
        torch.manual_seed(6)  # the same gates
        net, tokenizer = load_model("tiny")
        nets.append(method.prepare(net))
        encoding = TextEncoding(tokenizer)
        method.before_stream(net, StreamData(stream=Stream(name="s", tasks=tasks), tokenize=encoding.tokenize,
                                             collate=encoding.collate))
    shard(nets[1])
    for index, task in enumerate(tasks):
        batch = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(8 + index))
        features = [{"input_ids": ids.tolist(), "labels": ids.tolist()} for ids in batch]
        gradients = []
        for method, net in zip(arias, nets):
            context = TrainingContext(task=task, task_index=index, learning_rate=0.1)
            torch.manual_seed(10 + index)  # the task's adapter is drawn as the trainer seeds each task
            method.before_task(net, context)
            if index:  # the conflict test (ARIA's default) reads the same on the shards as unsharded
                assert method._conflict is not None and math.isclose(method._conflict, arias[0]._conflict, abs_tol=1e-6)
                assert method.isolated_from == arias[0].isolated_from
            optimizer = torch.optim.SGD(method.optimizer(net, context))
            inputs = collate(features[rank : rank + 1])
            loss = net(**inputs).loss
            extra = method.after_forward(net, inputs, context)  # None when isolated: no gate or slow pathway trains
            (loss if extra is None else loss + extra).backward()
            method.after_backward(net, context)
            if method is arias[0]:
                for p in net.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= processes
            gradients.append(whole({n: p.grad for n, p in net.named_parameters() if p.grad is not None}))
            optimizer.step()
            net.zero_grad(set_to_none=True)
            method.after_task(net, TaskData(task=task, features=features, collate=collate), context)
        assert gradients[0].keys() == gradients[1].keys()
        isolated = arias[0]._isolated()
        assert any(f"adapters.{index}." in n for n in gradients[0])
        assert all(f"adapters.{index}." in n for n in gradients[0]) if isolated else any(".slow." in n for n in gradients[0])
        for name in gradients[0]:
            assert torch.allclose(gradients[1][name], gradients[0][name], rtol=1e-4, atol=1e-7), (index, name)
    states = [m.state_dict() for m in arias]  # gathered: every process calls it
    assert states[0]["anchor"]["fisher"] and all(torch.allclose(states[1]["anchor"][k][n], states[0]["anchor"][k][n], rtol=1e-4,
                                                                atol=1e-10) for k in ("fisher", "anchor") for n in states[0]["anchor"][k])
    assert torch.allclose(states[1]["prototypes"], states[0]["prototypes"], rtol=1e-5, atol=1e-6)
    queries = torch.tensor([features[0]["input_ids"], [7] * 10])
    logits = []
    for method, net in zip(arias, nets):
        names = method.route(net, ["a", "b"], lambda texts: {"input_ids": queries, "attention_mask": torch.ones_like(queries)}).names
        assert names[0] == "t1", names
        net.eval()
        with torch.no_grad():
            logits.append((names, net(input_ids=queries).logits))
    assert logits[1][0] == logits[0][0] and torch.allclose(logits[1][1], logits[0][1], rtol=1e-4, atol=1e-5)


aria_matches()
aria_matches(shared_tasks=1)  # isolated: the second task's gradient is its adapter's alone, on the shards as unsharded
unprepared = ARIA(ARIAConfig(adapter_dim=8))
net = shard(unprepared.prepare(load_model("tiny")[0]))
try:  # never shown the stream: its adapters would be added to a model already sharded
    unprepared.before_task(net, TrainingContext(task=Task(name="t", train=[{"text": "x"}], probes=[Probe("x", "x")])))
    raise AssertionError("aria added an adapter to a sharded model")
except MethodError as error:
    assert "start_stream" in str(error)
if main:
    print("aria: gradients, fisher, prototypes, routes and routed logits equal, isolated too; adapters not added after "
          "sharding", flush=True)
dist.barrier()  # every process done with its collectives before the group goes
dist.destroy_process_group()
