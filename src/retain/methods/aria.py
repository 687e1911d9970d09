"""ARIA: gated fast/slow feed-forward pathways, slow-pathway consolidation, and per-task adapters.

- Each chosen layer's feed-forward block becomes a PlasticityGatedMLP: the pretrained block is the
  slow pathway, a copy of it the fast one, mixed per token by π = sigmoid(gate(x)). After a warm-up
  of `warmup_steps` optimizer steps in each task, λ·mean π(1−π) pushes every π toward 0 or 1.
- Asymmetric learning rates: the slow pathway trains at `slow_lr_ratio`× the learning rate, the
  other pretrained weights (attention, norms, embeddings) at `shared_lr_ratio`× (0: frozen).
- Gradient dampening: each micro-batch's gradient of a layer's slow pathway is scaled by (1 − π̄),
  π̄ that layer's mean gate over the micro-batch's tokens; applied in the backward of that micro-batch,
  so it is exact under gradient accumulation.
- SPC: after each task, the diagonal Fisher of the slow pathway anchors it with λ·Σ F(θ−θ*)²,
  all tasks merged into one (F, θ*) pair.
- Isolation (`shared_tasks=k`): from task k+1 on, only the task's own adapter trains; everything an
  earlier task's answers depend on is frozen, so it forgets nothing its input is routed right for.
  With `conflict_isolation`, isolation starts at the first task that contradicts what was learned: one
  whose training examples the model, routed as at inference, answers (among the task's own answers)
  wrong that much more often than any one fixed answer would: it already knows other answers to these
  inputs. Training the shared pathways on such a task would pull earlier tasks' answers to the same
  inputs its way; a task merely new is no conflict, and shares them as before.
- Task adapters: a zero-initialised bottleneck adapter per task after each chosen feed-forward
  block, trained in its task and frozen after. Given the whole stream, the model holds every task's
  adapter before training starts (so FSDP shards them with the rest); each is drawn afresh when its
  task begins. At inference (the model in eval mode) each input goes to the adapter of the task
  whose prototype (mean input embedding of its training prompts) is nearest by cosine; the model
  routes itself on the first forward of a sequence, so plain `model(...)` and `model.generate(...)`
  use the right adapter too.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from accelerate import PartialState
from accelerate.utils import reduce
from torch import nn
from torch.distributed.tensor import DTensor

from retain.fisher import FisherAnchor, diagonal_fisher
from retain.methods.base import (
    IGNORE_INDEX, Encode, Exported, Method, MethodConfig, MethodError, Routing, StreamData, TaskData, TrainingContext, layer_list,
    register,
)
from retain.nn.adapters import TaskAdapters
from retain.nn.gated_mlp import PlasticityGatedMLP, feed_forward_layout, gate_feed_forwards
from retain.nn.product_key_memory import decoder_layers
from retain.nn.sharding import embed
from retain.stream import Task

# The conflict test (`conflict_isolation`) reads this many of a task's training examples, of a task with at most this
# many distinct answers.
CONFLICT_EXAMPLES, CONFLICT_ANSWERS = 32, 8


@dataclass
class ARIAConfig(MethodConfig):
    plasticity_lambda: float = field(default=1.0, metadata={"help": "Gate regulariser λ in λ·mean π(1−π) (0 = off).",
                                                            "min": 0})
    warmup_steps: int = field(default=2, metadata={"help": "Optimizer steps before the gate regulariser applies "
                                                         "(of each task, or of the run: warmup_scope).", "min": 0})
    warmup_scope: Literal["task", "run"] = field(default="task", metadata={"help": "'task': the warm-up restarts with each task; 'run': it "
                                                              "counts from the first step of the stream (aria-trl's)."})
    spc_lambda: float = field(default=1e6, metadata={"help": "SPC strength λ in λ·Σ F(θ−θ*)² on the slow pathway (0 = off).",
                                                     "min": 0})
    slow_lr_ratio: float = field(default=0.1, metadata={"help": "Learning rate of the slow pathway, × --learning_rate.",
                                                       "min": 0})
    shared_lr_ratio: float = field(default=0.0, metadata={"help": "Learning rate of the other pretrained weights "
                                                                  "(attention, norms, embeddings), × --learning_rate; 0 = frozen.",
                                                                  "min": 0})
    adapter_dim: int = field(default=64, metadata={"help": "Bottleneck width of the per-task adapters (0 = no adapters).",
                                                    "min": 0})
    adapter_lr_ratio: float = field(default=10.0, metadata={"help": "Learning rate of the task's adapter, × --learning_rate.",
                                                          "min": 0})
    # Gates must travel several logits within a short task: at 10× they stayed undecided (π≈0.5) over a
    # 9-step task of the task suite; at 100× (with λ=1) 72% of tokens had π<0.1 or >0.9, at 300× 92%.
    gate_lr_ratio: float = field(default=100.0, metadata={"help": "Learning rate of the gates, × --learning_rate.", "min": 0})
    slow_consolidation_steps: int = field(default=0, metadata={
        "help": "After each task, optimizer steps that train only the slow pathway on the task (gates pinned to "
                "the slow side) under SPC, moving what the task taught into the consolidated weights.", "min": 0})
    gate: bool = field(default=True, metadata={"help": "Split feed-forward blocks into gated fast/slow pathways."})
    dampening: bool = field(default=True, metadata={"help": "Scale slow-pathway gradients by (1 − mean π)."})
    shared_tasks: int = field(default=0, metadata={
        "help": "Tasks in which the shared pathways (fast, gates, slow, new heads) train; later tasks train only their "
                "own adapter, so an earlier task routed to its adapter answers as it did (0: every task trains them).",
        "min": 0})
    # 0.25: half way from a task the model knows nothing of (no worse than a fixed answer: 0) to one it answers
    # all the other way (0.5 for two balanced answers). On dev seed 10: a flipped rule 0.44, the task suite's
    # classification task after another -0.04.
    conflict_isolation: float = field(default=0.25, metadata={
        "help": "Isolate (as shared_tasks) from the first task that contradicts what was learned: whose training "
                "examples the routed model answers, among the task's own answers, wrong at least this much more often "
                "than any fixed answer would (0: never). Tasks of 2 to 8 distinct answers only; without adapters, "
                "never.",
        "min": 0, "below": 1})
    fast_rank: int = field(default=0, metadata={"help": "0: the fast pathway is a full copy; r>0: slow + a rank-r bottleneck.",
                                                 "min": 0})
    layers: str | None = field(default=None, metadata={"help": "Comma-separated decoder layers to modify; None = all."})
    spc_params: str | None = field(default=None, metadata={"help": "Regex of other trainable weights SPC anchors too "
                                                                   "(None: the slow pathway only)."})
    fisher_samples: int = field(default=32, metadata={"help": "Training examples per task for the SPC Fisher (0: all).",
                                                      "min": 0})
    seed: int = field(default=0, metadata={"help": "Seed of the Fisher and consolidation examples."})

    def __post_init__(self) -> None:
        super().__post_init__()
        layer_list(self, self.layers)
        if self.shared_tasks and not self.adapter_dim:
            self.fail("shared_tasks", "needs per-task adapters (adapter_dim > 0): later tasks would train nothing")

    def layer_indices(self) -> list[int] | None:
        return layer_list(self, self.layers)


@register
class ARIA(Method):
    name = "aria"
    config_class = ARIAConfig
    # Under FSDP: adapters exist before the model is wrapped, dampening acts on the gathered weights in the graph,
    # SPC's Fisher follows the shards (as EWC's), and prototypes look up sharded embedding rows.
    sharded_by = frozenset({"fsdp"})

    def __init__(self, config: ARIAConfig | None = None) -> None:
        super().__init__(config)
        self.gated: list[PlasticityGatedMLP] = []
        self.feed_forwards: list[nn.Module] = []  # the slow pathways (the pretrained blocks)
        self.adapter_blocks: list[TaskAdapters] = []
        self.embeddings: nn.Module | None = None
        self.heads: list[nn.Module] = []  # task heads new to the model (a classifier's score layer), trained like fast weights
        self.anchor = FisherAnchor()
        self.task_names: list[str] = []
        self.prototypes: torch.Tensor | None = None  # (tasks, hidden), unit rows
        self._dampening: list[torch.Tensor | None] = []
        self._current = 0  # the adapter of the task being trained: its index in the stream
        self._slow_layer: dict[str, int] = {}  # each slow-pathway parameter's name: the index of its gated block
        self._routing = True
        self._routed_explicitly = False  # route() was called for the next forward: keep its choice
        self._stream: StreamData | None = None
        self.isolated_from: int | None = None  # the first task `conflict_isolation` isolated
        self._conflict: float | None = None  # the task being trained's, for its report

    # -- surgery --------------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        config = self.config
        layers, stack = config.layer_indices(), decoder_layers(model)
        chosen = list(range(len(stack))) if layers is None else layers
        if config.gate:
            self.gated = gate_feed_forwards(model, chosen, config.fast_rank)
            self.feed_forwards = [g.slow for g in self.gated]
        else:
            for index in chosen:
                feed_forward_layout(stack[index].mlp)
            self.feed_forwards = [stack[index].mlp for index in chosen]
        if config.adapter_dim > 0:
            hidden = model.config.get_text_config().hidden_size
            for index in chosen:
                stack[index].mlp = TaskAdapters(stack[index].mlp, hidden, config.adapter_dim)
                self.adapter_blocks.append(stack[index].mlp)
        self.embeddings = model.get_input_embeddings()
        base, output = getattr(model, "base_model", None), model.get_output_embeddings()
        self.heads = [m for m in model.children() if m is not base and m is not output and any(True for _ in m.parameters())]
        if self.adapter_blocks:
            model.register_forward_pre_hook(self._route_on_first_forward, with_kwargs=True)
            model.register_forward_hook(self._end_forward)
        self._dampening = [None] * len(self.gated)
        if config.gate and config.dampening:
            for index, gated in enumerate(self.gated):
                gated.slow_gradient_scale = lambda index=index: self._dampening[index]
        slow = {id(p): index for index, gated in enumerate(self.gated) for p in gated.slow.parameters()}
        self._slow_layer = {name: slow[id(p)] for name, p in model.named_parameters() if id(p) in slow}
        return model

    def _ids(self, modules: list[nn.Module]) -> set[int]:
        return {id(p) for module in modules for p in module.parameters()}

    def _fast_ids(self) -> set[int]:
        return self._ids([m for g in self.gated for m in (g.fast, g.fast_delta, g.gate) if m is not None] + self.heads)

    def _current_ids(self) -> set[int]:
        return self._ids([block.adapters[self._current] for block in self.adapter_blocks])

    def slow_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        slow = self._ids(self.feed_forwards)
        return {name: p for name, p in model.named_parameters() if id(p) in slow}

    # -- training -------------------------------------------------------------------------------

    def before_stream(self, model: nn.Module, data: StreamData) -> None:
        self._stream = data
        for block in self.adapter_blocks:
            while len(block.adapters) < len(data.stream.tasks):
                block.add_adapter().requires_grad_(False)

    def before_task(self, model: nn.Module, context: TrainingContext) -> None:
        self._current = len(self.task_names)
        for block in self.adapter_blocks:
            if self._current < len(block.adapters):
                block.reset_adapter(self._current)
            elif any(isinstance(p, DTensor) for p in model.parameters()):
                raise MethodError("aria: under FSDP, the model must hold every task's adapter before it is sharded: "
                                  "give ContinualTrainer the whole stream first (fit, or start_stream)")
            else:
                block.add_adapter()
            block.active = self._current
        tested = self.config.conflict_isolation and self.adapter_blocks
        self._conflict = self._contradiction(model, context.task) if tested else None
        if self.isolated_from is None and self._conflict is not None and self._conflict >= self.config.conflict_isolation:
            self.isolated_from = self._current
        fast = self._fast_ids()
        slow = self._ids(self.feed_forwards)
        current = self._current_ids()
        adapters = self._ids(self.adapter_blocks) - self._ids([b.block for b in self.adapter_blocks])
        shared = not self._isolated()
        for p in model.parameters():
            if id(p) in current:
                p.requires_grad_(True)
            elif id(p) in fast:
                p.requires_grad_(shared)
            elif id(p) in slow:
                p.requires_grad_(shared and self.config.slow_lr_ratio > 0)
            elif id(p) in adapters:
                p.requires_grad_(False)  # earlier tasks' adapters stay as their task left them
            else:
                p.requires_grad_(shared and self.config.shared_lr_ratio > 0)

    def _isolated(self) -> bool:
        """Whether the task being trained may change only its own adapter."""
        if 0 < self.config.shared_tasks <= self._current:
            return True
        return self.isolated_from is not None and self.isolated_from <= self._current

    @torch.no_grad()
    def _contradiction(self, model: nn.Module, task: Task) -> float | None:
        """How much more often than any one fixed answer would be, the model, routed as at inference, answers the
        task's training examples wrong, choosing by likelihood among the task's own answers (up to
        `CONFLICT_EXAMPLES`): the share of the task's rarest answer less the model's accuracy. A model that knows
        nothing of the task does no worse than a fixed answer; doing worse, it knows another answer for these
        inputs. None for a first task, without the stream (`before_stream`), for a task of fewer than 2 or more than
        `CONFLICT_ANSWERS` distinct answers (not a classification task) and for a classifier (no answer tokens)."""
        if self.prototypes is None or self._stream is None:
            return None
        pairs = [e for e in itertools.islice(task.train, CONFLICT_EXAMPLES) if "completion" in e]
        answers = sorted({e["completion"] for e in pairs})
        if not 2 <= len(answers) <= CONFLICT_ANSWERS:
            return None
        features = self._stream.tokenize([{"prompt": e["prompt"], "completion": a} for e in pairs for a in answers])
        if any(len(f["labels"]) != len(f["input_ids"]) for f in features):
            return None
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in self._stream.collate(features).items()}
        width = batch["input_ids"].shape[1]
        prompts = torch.tensor([_prompt_mask(f) + [0] * (width - len(f["input_ids"])) for f in features], device=device)
        right = torch.tensor([answers.index(e["completion"]) for e in pairs], device=device)
        was_training = model.training
        model.eval()
        try:
            self._select(batch["input_ids"], prompts)
            self._routed_explicitly = True
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        finally:
            for block in self.adapter_blocks:
                block.active = self._current
            self._routed_explicitly = False
            model.train(was_training)
        labels = batch["labels"][:, 1:]
        scored = logits[:, :-1].log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
        likelihood = (scored * (labels != IGNORE_INDEX)).sum(-1).view(len(pairs), len(answers))
        accuracy = (likelihood.argmax(-1) == right).float().mean()
        rarest = torch.bincount(right, minlength=len(answers)).min() / len(pairs)
        return float(reduce(rarest - accuracy, "mean"))

    def optimizer(self, model: nn.Module, context: TrainingContext) -> list[dict[str, Any]]:
        slow = self._ids(self.feed_forwards)
        current = self._current_ids()
        gates = self._ids([g.gate for g in self.gated])
        fast = self._fast_ids() - gates
        groups: dict[str, list[nn.Parameter]] = {"fast": [], "gate": [], "adapter": [], "slow": [], "pretrained": []}
        for p in model.parameters():
            if p.requires_grad:
                kind = ("fast" if id(p) in fast else "gate" if id(p) in gates else "adapter" if id(p) in current
                        else "slow" if id(p) in slow else "pretrained")
                groups[kind].append(p)
        ratios = {"fast": 1.0, "gate": self.config.gate_lr_ratio, "adapter": self.config.adapter_lr_ratio,
                  "slow": self.config.slow_lr_ratio, "pretrained": self.config.shared_lr_ratio}
        return [{"params": params, "lr": context.learning_rate * ratios[kind], "name": kind}
                for kind, params in groups.items() if params]

    def after_forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], context: TrainingContext) -> torch.Tensor | None:
        terms = []
        if self.gated:
            # Means over the real tokens of the global batch, all processes' together: a gradient dampened by its
            # own process's gate, or a regulariser averaged per process, would differ from one process's.
            weights, tokens = _token_weights(inputs.get("attention_mask"), self.gated[0].plasticity)
            if self.config.dampening:
                sums = reduce(torch.stack([(g.plasticity.detach() * weights).sum() for g in self.gated]), "sum")
                self._dampening = list(1.0 - sums / tokens)  # no host sync
            steps = context.step if self.config.warmup_scope == "task" else context.run_step
            # Frozen gates: the regulariser's only gradient would push the task's adapter to decide them.
            if self.config.plasticity_lambda > 0 and steps >= self.config.warmup_steps and not self._isolated():
                # × processes: the data-parallel wrapper averages gradients over processes; this term is a share of a sum.
                spread = torch.stack([(g.plasticity * (1 - g.plasticity) * weights).sum() / tokens for g in self.gated])
                terms.append(self.config.plasticity_lambda * spread.mean() * PartialState().num_processes)
        if self.config.spc_lambda > 0 and not self._isolated():  # isolated, the slow pathway is frozen
            # Dampening scales the whole gradient of a slow weight, its anchor's pull included.
            dampened = {name: self._dampening[index] for name, index in self._slow_layer.items()
                        if self._dampening[index] is not None}
            anchored = self.anchor.penalty(model, dampened)
            if anchored is not None:
                terms.append(self.config.spc_lambda * anchored)
        return sum(terms) if terms else None

    def after_backward(self, model: nn.Module, context: TrainingContext) -> None:
        self._dampening = [None] * len(self.gated)

    # -- end of task ----------------------------------------------------------------------------

    def after_task(self, model: nn.Module, data: TaskData, context: TrainingContext) -> dict[str, float]:
        rng = random.Random(f"{self.config.seed}:{data.task.name}")
        count = self.config.fisher_samples or len(data.features)
        sample = rng.sample(data.features, min(count, len(data.features)))
        self._routing = False  # the task's own data goes through the task's own adapter
        for block in self.adapter_blocks:
            block.active = self._current
        try:
            self._consolidate(model, data, rng, context.learning_rate * self.config.slow_lr_ratio)
            report = self._gate_statistics(model, data, sample)
            if self.config.spc_lambda > 0:
                params = self.slow_parameters(model)
                if self.config.spc_params:
                    pattern = re.compile(self.config.spc_params)
                    params |= {n: p for n, p in model.named_parameters() if p.requires_grad and pattern.search(n)}
                params = {n: p for n, p in params.items() if p.requires_grad}
                if params:
                    self.anchor.add(params, diagonal_fisher(model, (data.collate([f]) for f in sample), params))
        finally:
            self._routing = True
        for block in self.adapter_blocks:
            block.adapters[self._current].requires_grad_(False)
        self._add_prototype(data)
        if self._conflict is not None:
            report["conflict"] = self._conflict
        return report | {"isolated": float(self._isolated())}

    def _consolidate(self, model: nn.Module, data: TaskData, rng: random.Random, learning_rate: float) -> None:
        slow = [p for p in self.slow_parameters(model).values() if p.requires_grad]
        if not self.config.slow_consolidation_steps or not slow or not self.gated:
            return
        optimizer = torch.optim.AdamW(slow, lr=learning_rate, weight_decay=0.0)
        for gated in self.gated:
            gated.force_slow = True
        try:
            for _ in range(self.config.slow_consolidation_steps):
                batch = data.collate(rng.sample(data.features, min(8, len(data.features))))
                device = slow[0].device
                loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
                anchored = self.anchor.penalty(model) if self.config.spc_lambda > 0 else None
                if anchored is not None:
                    loss = loss + self.config.spc_lambda * anchored
                loss.backward()
                optimizer.step()
                model.zero_grad(set_to_none=True)
        finally:
            for gated in self.gated:
                gated.force_slow = False

    @torch.no_grad()
    def _gate_statistics(self, model: nn.Module, data: TaskData, sample: list) -> dict[str, float]:
        if not self.gated or not sample:
            return {}
        batch = data.collate(sample)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            model(**{k: v.to(device) for k, v in batch.items()})
        finally:
            model.train(was_training)
        mask = batch["attention_mask"].bool().to(device)
        pi = torch.cat([g.plasticity[mask] for g in self.gated])
        return {"gate_mean": float(pi.mean()), "gate_decided": float(((pi < 0.1) | (pi > 0.9)).float().mean())}

    @torch.no_grad()
    def _add_prototype(self, data: TaskData) -> None:
        if not self.adapter_blocks:
            return
        means = [self._embed([f["input_ids"]], [_prompt_mask(f)]) for f in data.features]
        prototype = nn.functional.normalize(torch.cat(means).mean(0, keepdim=True), dim=-1)
        self.prototypes = prototype if self.prototypes is None else torch.cat([self.prototypes, prototype])
        self.task_names.append(data.task.name)

    def _embed(self, ids: list[list[int]] | torch.Tensor, mask: list[list[int]] | torch.Tensor) -> torch.Tensor:
        weight = self.embeddings.weight
        ids = torch.as_tensor(ids, device=weight.device)
        mask = torch.as_tensor(mask, device=weight.device, dtype=weight.dtype)
        summed = (embed(weight.detach(), ids) * mask[..., None]).sum(1)
        return nn.functional.normalize(summed / mask.sum(1, keepdim=True).clamp_min(1), dim=-1).float()

    # -- inference ------------------------------------------------------------------------------

    def _route_on_first_forward(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if model.training or not self._routing or self.prototypes is None or self._routed_explicitly:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        if input_ids is None or (cache is not None and cache.get_seq_length() > 0):
            return  # later generation steps keep the sequence's route
        mask = kwargs.get("attention_mask")
        self._select(input_ids, mask if mask is not None else torch.ones_like(input_ids))

    def _end_forward(self, model: nn.Module, args: tuple, output: Any) -> None:
        self._routed_explicitly = False

    @torch.no_grad()
    def route(self, model: nn.Module, prompts: Sequence[str], encode: Encode) -> Routing | None:
        if self.prototypes is None:
            return None
        batch = encode(prompts)
        self._routed_explicitly = True  # the caller's inputs may be the prompts alone; the forward may add answers
        return Routing(texts=list(prompts), names=self._select(batch["input_ids"], batch["attention_mask"]))

    @torch.no_grad()
    def _select(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        chosen = (self._embed(input_ids, attention_mask) @ self.prototypes.to(input_ids.device).T).argmax(-1)
        for block in self.adapter_blocks:
            block.active = chosen
        return [self.task_names[i] for i in chosen.tolist()]

    def export(self, as_of: str | None) -> Exported:
        """The task prototypes that choose each input's adapter, as `_select` does."""
        super().export(as_of)
        if self.prototypes is None:
            return Exported()
        return Exported(routing={"aria": {"tasks": self.task_names}}, tensors={"aria_prototypes": self.prototypes})

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor.state_dict(), "prototypes": self.prototypes, "task_names": self.task_names,
                "adapters": len(self.adapter_blocks[0].adapters) if self.adapter_blocks else 0,
                "isolated_from": self.isolated_from}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor.load_state_dict(state["anchor"])
        self.prototypes, self.task_names = state["prototypes"], list(state["task_names"])
        self.isolated_from = state.get("isolated_from")  # absent from checkpoints made before conflict isolation
        for block in self.adapter_blocks:
            while len(block.adapters) < state["adapters"]:
                block.add_adapter().requires_grad_(False)
            block.active = None


def _token_weights(mask: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token of `like`, 1 for a real token and 0 for padding (all 1 without a matching mask), and the number of
    real tokens over all processes (at least 1)."""
    weights = mask.to(like.dtype) if mask is not None and mask.shape == like.shape else torch.ones_like(like)
    return weights, reduce(weights.sum().detach(), "sum").clamp_min(1)


def _prompt_mask(features: dict[str, list[int]]) -> list[int]:
    """The tokens an input shows before its answer: the prompt of a prompt/completion pair, or all of a text
    (or of a classifier's input, whose label is not a token)."""
    labels = features["labels"]
    prompt = [int(label == IGNORE_INDEX) for label in labels] if len(labels) == len(features["input_ids"]) else []
    return prompt if any(prompt) else [1] * len(features["input_ids"])
