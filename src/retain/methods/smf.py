"""Sparse memory finetuning (Lin et al. 2025): only the memory slots a batch uses unusually often are written.

The memory is a table of value rows that each token reads a few of (`SlotMemory`), one of two kinds:

- `feed_forward` (default): the model's own feed-forward units as slots (Geva et al. 2021), each with
  a zero-initialised row added to its down-projection column for the tokens that read it. The keys
  are pretrained and the model already reads these values, so what is written reaches the answer
  from other wordings of the same fact.
- `product_key`: a product-key memory added beside the feed-forward block of one layer (Lample et al.
  2019; Berges et al. 2024), values zero so the model is unchanged. The paper's memory was pretrained
  with its model; retrofitted into one that never read it, its keys address surface context, so it
  learns what a passage said more than what a differently worded question asks.

Everything else is frozen. Background statistics count, for each slot, how many background batches
read it (document frequency). For each training batch, a slot's score is TF-IDF = (its reads in the
batch / all reads in the batch) × log((|B|+1) / (background batches that read it + 1)); only the
value rows of the top-t slots receive gradient, and plain SGD moves nothing else, so slots that
ordinary text reads, and slots this batch did not pick, keep their bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate.utils import reduce
from torch import nn

from retain.methods.base import Method, MethodConfig, MethodError, StreamData, TaskData, TrainingContext, layer_list, register
from retain.nn.feed_forward_memory import FeedForwardMemory
from retain.nn.product_key_memory import ProductKeyMemory, decoder_layers, insert_memory
from retain.nn.slot_memory import SlotMemory
from retain.stream import Stream, load_jsonl_texts

logger = logging.getLogger(__name__)


# Per memory kind, unless the user sets them: (learning rate, slots trained, what top_t counts, slots read per layer
# or head). feed_forward: 2048 slots per example at lr 5 learned 0.91 ± 0.04 of the temporal medium stream's changed
# facts at +5.2% general perplexity (3 seeds, held-out probe forms), where 8192 per batch at lr 10 learned 0.64 ± 0.39
# at +37.8% and diverged on one seed; per example, an epoch's one-example last batch does not retrain nearly every row
# it reads. k 64 learned facts that k 32 left out on the small stream.
MEMORY_DEFAULTS = {"feed_forward": (5.0, 2048, "example", 64), "product_key": (1e4, 1024, "batch", 32)}
_FF, _PK = MEMORY_DEFAULTS["feed_forward"], MEMORY_DEFAULTS["product_key"]


@dataclass
class SMFConfig(MethodConfig):
    memory: Literal["feed_forward", "product_key"] = field(default="feed_forward", metadata={
        "help": "'feed_forward' (the model's own units) or 'product_key' (a memory layer added)."})
    layers: str | None = field(default=None, metadata={"help": "Comma-separated decoder layers whose memory trains; None "
                                                                "= all (feed_forward) or the middle one (product_key)."})
    k: int | None = field(default=None, metadata={"help": "Slots a token reads per layer (feed_forward: its units of "
                                                          "largest |activation|) or per head (product_key); None = "
                                                          f"{_FF[3]} (feed_forward) or {_PK[3]} (product_key).", "min": 1})
    top_t: int | None = field(default=None, metadata={"help": "Slots whose values are trained per batch (or example: "
                                                              "`budget`), ranked by "
                                                              f"`selection`; None = {_FF[1]} (feed_forward) or {_PK[1]} "
                                                              "(product_key).", "min": 1})
    budget: Literal["batch", "example"] | None = field(default=None, metadata={
        "help": "What top_t counts: slots per 'batch' (as in the paper), or per 'example' of the batch, so an epoch's "
                f"short last batch trains as few slots as it has examples for; None = '{_FF[2]}' (feed_forward) or "
                f"'{_PK[2]}' (product_key)."})
    selection: Literal["tfidf", "kl"] = field(default="tfidf", metadata={
        "help": "How slots are ranked per batch: 'tfidf', or 'kl' (each slot's term of KL(batch reads ‖ background reads))."})
    optimizer: Literal["sgd", "adamw"] = field(default="sgd", metadata={"help": "'sgd' (untouched slots never move) or "
                                                                                "'adamw'."})
    # A retrofitted product-key memory's keys are random or drawn from data, so each token spreads its read over k
    # slots almost evenly and a trained slot reaches the output at ≈1/k strength: its values need a step ~1e4.
    lr: float | None = field(default=None, metadata={"help": "Learning rate of the memory values (replaces "
                                                             f"--learning_rate); None = {_FF[0]:g} (feed_forward) or "
                                                             f"{_PK[0]:g} (product_key).", "min": 0})
    background: str | None = field(default=None, metadata={"help": "JSONL of {\"text\"} for the background statistics; "
                                                                    "None = the stream's background text. Never the "
                                                                    "general text, which perplexity is measured on."})
    background_batch: int = field(default=1, metadata={"help": "Texts per background batch (the IDF's document).", "min": 1})
    n_keys: int = field(default=128, metadata={"help": "product_key: half-keys per head (n_keys² slots).", "min": 1})
    heads: int = field(default=4, metadata={"help": "product_key: read heads (their reads are summed).", "min": 1})
    key_dim: int = field(default=128, metadata={"help": "product_key: query/key width per head (split in two halves).",
                                                "min": 2})
    seed: int = field(default=0, metadata={"help": "product_key: seed of the keys and query projection."})
    # 'data' beat 'random' on the temporal small stream: period loss 2.04 vs 2.4, plasticity 0.17 vs 0.00.
    key_init: Literal["data", "random"] = field(default="data", metadata={
        "help": "product_key: 'data' draws half-keys from the queries of background tokens (they address real hidden "
                "states); or 'random'."})
    heal_steps: int = field(default=0, metadata={"help": "product_key: warm-up steps on the background text that fit "
                                                          "the keys and query to the model before they freeze (0 = off).",
                                                  "min": 0})
    heal_lr: float = field(default=1e-3, metadata={"help": "product_key: AdamW learning rate of the warm-up.", "min": 0})

    def __post_init__(self) -> None:
        super().__post_init__()
        layer_list(self, self.layers)
        if self.memory == "product_key":  # refused here, when the options are read, not once a model is loaded
            if self.key_dim % 2:
                self.fail("key_dim", f"must be even (two half-keys), got {self.key_dim}")
            if (k := self.resolved()[3]) > self.n_keys:
                self.fail("k", f"a product-key memory reads k ≤ n_keys slots per half-key; got k={k}, n_keys={self.n_keys}")

    def layer_indices(self) -> list[int] | None:
        return layer_list(self, self.layers)

    def resolved(self) -> tuple[float, int, str, int]:
        """(lr, top_t, budget, k): the options given, the memory kind's defaults for those left unset."""
        given = (self.lr, self.top_t, self.budget, self.k)
        return tuple(default if value is None else value for value, default in zip(given, MEMORY_DEFAULTS[self.memory]))


@register
class SparseMemoryFinetuning(Method):
    name = "smf"
    config_class = SMFConfig
    # Under FSDP the feed-forward memory's gradient is masked in the forward's graph, on the rows FSDP gathered, before
    # it is scattered to the shards (SlotMemory.live); a retrofitted product-key memory is not run sharded.
    sharded_by = frozenset({"fsdp"})

    def __init__(self, config: SMFConfig | None = None) -> None:
        super().__init__(config)
        self.memory: SlotMemory | None = None
        self.document_frequency: torch.Tensor | None = None  # background batches that read each slot
        self.background_reads: torch.Tensor | None = None  # all background reads of each slot
        self.background_batches = 0
        self.lr, self.top_t, self.budget, self.k = self.config.resolved()
        if self.config.memory == "product_key":
            self.sharded_by = frozenset()
        self.written: list[torch.Tensor] = []  # per finished task: the slots it wrote
        self.selected: torch.Tensor | None = None  # the slots the current batch trains (chosen after its forward)
        self._task_written: torch.Tensor | None = None
        self._healing = False

    def prepare(self, model: nn.Module) -> nn.Module:
        config, layers = self.config, self.config.layer_indices()
        if config.memory == "feed_forward":
            self.memory = FeedForwardMemory(model, layers, k=self.k)
        else:
            if layers is not None and len(layers) != 1:
                config.fail("layers", f"a product_key memory goes into one layer, got {config.layers!r}")
            layer = layers[0] if layers else len(decoder_layers(model)) // 2
            with torch.random.fork_rng():
                torch.manual_seed(config.seed)
                self.memory = insert_memory(model, layer, n_keys=config.n_keys, heads=config.heads, k=self.k,
                                            key_dim=config.key_dim)
        model.requires_grad_(False)
        for _, values in self.memory.value_blocks():
            values.requires_grad_(True)
        self.memory.gradient_filter = self._mask_gradient
        return model

    @torch.no_grad()
    def check(self, stream: Stream) -> None:
        self._background(stream)

    def _background(self, stream: Stream) -> list[str]:
        """The background text the statistics are counted on, refused when there is none or it is evaluation text."""
        texts = load_jsonl_texts(Path(self.config.background)) if self.config.background else stream.background
        if not texts:
            raise MethodError(f"{self.name}: background statistics need text: give the stream a `background` file "
                              "(not its `general` text, which perplexity is measured on) or --method-arg "
                              "background=FILE.jsonl")
        if shared := set(texts) & set(stream.general):
            self.config.fail("background", f"{len(shared)} of the texts of {self.config.background} are the stream's "
                                           "general text, which perplexity is measured on; calibrate on other text")
        return texts

    def before_stream(self, model: nn.Module, data: StreamData) -> None:
        texts = self._background(data.stream)
        features = data.tokenize([{"text": t} for t in texts])
        size = self.config.background_batch
        batches = [data.collate(features[i : i + size]) for i in range(0, len(features), size)]
        if isinstance(self.memory, ProductKeyMemory):
            # The memory reads its layer's input, which lies upstream of the memory: the keys can be
            # drawn from it before any statistics are counted.
            if self.config.key_init == "data":
                self._keys_from_queries(torch.cat(self._memory_inputs(model, batches)))
            if self.config.heal_steps:
                with torch.enable_grad():
                    self._heal(model, [data.collate(features[i : i + 8]) for i in range(0, len(features), 8)])
        frequency = torch.zeros(self.memory.slots, dtype=torch.long)
        reads = torch.zeros(self.memory.slots, dtype=torch.long)
        for mask in _evaluate(model, batches):
            batch_reads = self.memory.last_indices[mask].flatten().cpu()
            frequency[batch_reads.unique()] += 1
            reads += torch.bincount(batch_reads, minlength=self.memory.slots)
        self.document_frequency, self.background_reads, self.background_batches = frequency, reads, len(batches)

    def _memory_inputs(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Per batch, the product-key memory's input at every real (unpadded) token."""
        captured: list[torch.Tensor] = []
        handle = self.memory.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            for mask in _evaluate(model, batches):
                captured[-1] = captured[-1][mask]
        finally:
            handle.remove()
        return captured

    def _keys_from_queries(self, inputs: torch.Tensor) -> None:
        """Set each head's half-keys to distinct query halves of background tokens (seeded sample)."""
        memory = self.memory
        queries = memory.query(inputs).view(-1, memory.heads, 2, memory.half)
        generator = torch.Generator().manual_seed(self.config.seed)
        for head in range(memory.heads):
            for half in range(2):
                candidates = queries[:, head, half].unique(dim=0)
                if len(candidates) < memory.n_keys:
                    raise MethodError(f"smf: key_init=data needs at least n_keys={memory.n_keys} distinct background "
                                      f"tokens, got {len(candidates)}; add background text or use key_init=random")
                chosen = torch.randperm(len(candidates), generator=generator)[: memory.n_keys]
                memory.keys.data[head, half] = candidates[chosen.to(candidates.device)]

    def _heal(self, model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> None:
        """Fit query, keys and values to the background text, then zero the values again: the memory now
        addresses the model's real hidden states, and the model still computes exactly what it did."""
        memory, device = self.memory, next(model.parameters()).device
        parameters = [memory.query.weight, memory.keys, memory.values.weight]
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(parameters, lr=self.config.heal_lr, weight_decay=0.0)
        self._healing = True
        try:
            for step in range(self.config.heal_steps):
                batch = {k: v.to(device) for k, v in batches[step % len(batches)].items()}
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        finally:
            self._healing = False
            memory.query.weight.requires_grad_(False)
            memory.keys.requires_grad_(False)
            with torch.no_grad():
                memory.values.weight.zero_()

    def before_task(self, model: nn.Module, context: TrainingContext) -> None:
        self._task_written = torch.zeros(self.memory.slots, dtype=torch.bool)

    def optimizer(self, model: nn.Module, context: TrainingContext) -> torch.optim.Optimizer:
        values = [values for _, values in self.memory.value_blocks()]
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(values, lr=self.lr)
        return torch.optim.AdamW(values, lr=self.lr, weight_decay=0.0)

    def _batch_counts(self, reads: torch.Tensor) -> torch.Tensor:
        return reduce(torch.bincount(reads.flatten(), minlength=self.memory.slots).float(), "sum")

    def tfidf(self, reads: torch.Tensor) -> torch.Tensor:
        """TF-IDF of every slot for a batch whose reads (slot indices, any shape) are given."""
        counts = self._batch_counts(reads)
        frequency = self.document_frequency.to(counts.device).float()
        idf = torch.log((self.background_batches + 1) / (frequency + 1))
        return counts / counts.sum().clamp_min(1) * idf

    def kl(self, reads: torch.Tensor) -> torch.Tensor:
        """Each slot's term p·log(p/q) of KL(p ‖ q): p the batch's read distribution, q the background's
        (add-one smoothed, so a slot background text never read is the most surprising)."""
        counts = self._batch_counts(reads)
        p = counts / counts.sum().clamp_min(1)
        background = self.background_reads.to(counts.device).float() + 1
        q = background / background.sum()
        return torch.where(p > 0, p * torch.log(p.clamp_min(1e-30) / q), torch.zeros_like(p))

    def after_forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], context: TrainingContext) -> None:
        # Before backward: choose this batch's slots, which the gradient hook on the values keeps.
        if self.document_frequency is None:
            raise RuntimeError("smf: no background statistics; use trainer.fit(stream) or call trainer.start_stream(stream)")
        mask = inputs.get("attention_mask")
        reads = self.memory.last_indices if mask is None else self.memory.last_indices[mask.bool()]
        scores = self.kl(reads) if self.config.selection == "kl" else self.tfidf(reads)
        # Per example, the examples of every process count, as their reads do, so every process picks the same slots.
        examples = inputs["input_ids"].new_tensor(len(inputs["input_ids"]))
        budget = self.top_t * (int(reduce(examples, "sum")) if self.budget == "example" else 1)
        top = scores.topk(min(budget, len(scores)))
        self.selected = top.indices[top.values > 0]
        if self._task_written is not None:
            self._task_written[self.selected.cpu()] = True

    def _mask_gradient(self, grad: torch.Tensor, start: int) -> torch.Tensor:
        if self._healing:
            return grad
        keep = torch.zeros(len(grad), 1, dtype=grad.dtype, device=grad.device)
        if self.selected is not None:
            mine = self.selected[(self.selected >= start) & (self.selected < start + len(grad))]
            keep[mine - start] = 1
        return grad * keep

    def after_task(self, model: nn.Module, data: TaskData, context: TrainingContext) -> dict[str, float]:
        self.written.append(self._task_written.nonzero().flatten())
        self.selected = None
        if not len(self.written[-1]):
            logger.warning("%s: task %r wrote no memory slot: every slot its text read is read by every background "
                           "text too, so none scored above zero (a smaller k or more varied background text helps)",
                           self.name, data.task.name)
        current = set(self.written[-1].tolist())
        earlier = set().union(*(set(t.tolist()) for t in self.written[:-1]))
        return {"slots_written": len(current), "slots_shared_with_earlier_tasks": len(current & earlier),
                "memory_slots": self.memory.slots}

    def state_dict(self) -> dict[str, Any]:
        return {"document_frequency": self.document_frequency, "background_reads": self.background_reads,
                "background_batches": self.background_batches, "written": self.written}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Runs saved before `selection=kl` existed hold no read counts; TF-IDF does not need them.
        self.document_frequency, self.background_reads = state["document_frequency"], state.get("background_reads")
        self.background_batches = int(state["background_batches"])
        self.written = list(state["written"])



@torch.no_grad()
def _evaluate(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> Iterator[torch.Tensor]:
    """Run the model in eval mode over `batches`, yielding after each forward its real-token mask."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    try:
        for batch in batches:
            mask = batch["attention_mask"].to(device)
            model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
            yield mask.bool()
    finally:
        model.train(was_training)
