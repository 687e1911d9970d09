"""A causal LM with the layers retain's methods add, for `AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)` without retain installed. Written by `retain export`, with `knowledge.py` and `text.py`
(retain's own, unchanged) beside it.

config.json's "retain" entry says what wraps which module of the base architecture (outer modules first) and how
inputs are routed:
- "memory": the sparse feed-forward memory SMF and CASM write. A down projection computes
  down(a) + Σ_{i ∈ top-k |a|} a_i·Δ_i: the written row Δ_i of unit i reaches only the tokens whose k largest
  feed-forward activations include unit i, so the rows are kept apart from the dense weights, as retain keeps them.
- "gated", "adapters": ARIA's fast/slow feed-forward pathways mixed per token by a learned gate, and its per-task
  adapters. An input's adapter is the task whose prototype (mean input embedding of its training prompts) is
  nearest by cosine, chosen on the first forward of a sequence, as retain chooses it.
- "casm": every period's version of the memory and the fact registry. `generate` reads each prompt's version as
  `retain ask` does: the time it names ("in 2018", "[2020]", `as_of=`), or the period that taught the fact it asks
  about, with the prompt's time rewritten to that period (the returned sequences keep the prompt as given); with
  `context=` (the turns before), a follow-up reads the fact the conversation is on. A forward outside `generate`
  reads the latest version.
"""

import contextlib
import copy

import torch
import transformers
from torch import nn

from .knowledge import FactRegistry, follow_up, read
from .relations import model_matcher
from .text import dated

BASE = getattr(transformers, "__BASE__")  # the architecture the run trained (set by `retain export`)


class SparseMemoryProjection(nn.Module):
    """down(a) + the written rows of the k units of largest |a| per token, weighted by a; each example reads the
    version of the rows that `tables[table_of[i]]` holds (None: every example reads `delta`)."""

    def __init__(self, down: nn.Module, units: int, hidden: int, k: int) -> None:
        super().__init__()
        self.down = down
        self.delta = nn.Parameter(torch.zeros(units, hidden, dtype=down.weight.dtype))
        self.k = k
        self.tables: list[torch.Tensor] = []
        self.table_of: torch.Tensor | None = None

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        flat = a.reshape(-1, a.shape[-1])
        units = flat.detach().abs().topk(self.k, dim=-1).indices
        weights = flat.gather(-1, units).to(self.delta.dtype)
        if self.table_of is None:
            written = nn.functional.embedding_bag(units, self.delta, per_sample_weights=weights, mode="sum")
        else:  # tokens of example i are rows i·T … (i+1)·T−1 of the flattened batch
            table_of = self.table_of.to(a.device).repeat_interleave(len(flat) // len(self.table_of))
            written = torch.empty(len(flat), self.delta.shape[1], dtype=self.delta.dtype, device=a.device)
            for table in table_of.unique().tolist():
                rows = table_of == table
                written[rows] = nn.functional.embedding_bag(units[rows], self.tables[table], per_sample_weights=weights[rows],
                                                            mode="sum")
        down = self.down(a)
        return down + written.view(*a.shape[:-1], -1).to(down.dtype)


class LowRankDelta(nn.Module):
    def __init__(self, hidden: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, hidden, bias=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class GatedFeedForward(nn.Module):
    """slow(x) + π·(fast(x) − slow(x)), π = sigmoid(gate(x)) per token; the fast pathway is a full block or
    slow + a low-rank delta (`rank` > 0)."""

    def __init__(self, slow: nn.Module, hidden: int, rank: int) -> None:
        super().__init__()
        self.slow = slow
        self.fast = copy.deepcopy(slow) if rank == 0 else None
        self.fast_delta = LowRankDelta(hidden, rank) if rank > 0 else None
        self.gate = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slow = self.slow(x)
        delta = self.fast(x) - slow if self.fast is not None else self.fast_delta(x)
        return slow + torch.sigmoid(self.gate(x)) * delta


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, dim)
        self.up = nn.Linear(dim, hidden)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class TaskAdapters(nn.Module):
    """y + adapter_t(y), y = block(x), t the adapter `active` holds for each example (no adapter while None)."""

    def __init__(self, block: nn.Module, hidden: int, dim: int, count: int) -> None:
        super().__init__()
        self.block = block
        self.adapters = nn.ModuleList(BottleneckAdapter(hidden, dim) for _ in range(count))
        self.active: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if self.active is None:
            return y
        out = y.clone()
        for index in self.active.unique().tolist():
            rows = self.active == index
            out[rows] = y[rows] + self.adapters[index](y[rows])
        return out


class RetainForCausalLM(BASE):
    def __init__(self, config) -> None:
        super().__init__(config)
        spec = config.retain
        hidden = config.get_text_config().hidden_size
        build = {"memory": lambda m, o: SparseMemoryProjection(m, o["units"], hidden, o["k"]),
                 "gated": lambda m, o: GatedFeedForward(m, hidden, o["rank"]),
                 "adapters": lambda m, o: TaskAdapters(m, hidden, o["dim"], o["count"])}
        for name, kind, options in spec["modules"]:
            parent, _, attribute = name.rpartition(".")
            setattr(self.get_submodule(parent), attribute, build[kind](self.get_submodule(name), options))
        self._memory = [m for m in self.modules() if isinstance(m, SparseMemoryProjection)]
        self._adapters = [m for m in self.modules() if isinstance(m, TaskAdapters)]
        self._casm = spec.get("casm")
        if self._casm is not None:
            self._registry = FactRegistry.from_state(self._casm["facts"])
            for v, n in enumerate(self._casm["copies"]):
                self.register_buffer(f"retain_casm_rows_{v}", torch.zeros(n, dtype=torch.long))
                self.register_buffer(f"retain_casm_values_{v}", torch.zeros(n, hidden))
        if "aria" in spec:
            self.register_buffer("retain_aria_prototypes", torch.zeros(len(spec["aria"]["tasks"]), hidden))
        self._tokenizer = None
        self._versions = {}  # memory version → its rows per memory module, rebuilt once (the weights are inference's)

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None, **kwargs):
        first = past_key_values is None or past_key_values.get_seq_length() == 0  # later steps keep the sequence's route
        if self._adapters and not self.training and input_ids is not None and first:
            self._choose_adapters(input_ids, attention_mask if attention_mask is not None else torch.ones_like(input_ids))
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values, **kwargs)

    @torch.no_grad()
    def _choose_adapters(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        weight = self.get_input_embeddings().weight
        mask = attention_mask.to(weight.dtype)
        mean = (weight[input_ids] * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        chosen = (nn.functional.normalize(mean, dim=-1).float() @ self.retain_aria_prototypes.float().T).argmax(-1)
        for block in self._adapters:
            block.active = chosen

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, as_of=None, context=None, tokenizer=None, **kwargs):
        """`generate`, each prompt reading the memory version CASM reads for it; `as_of` dates prompts that name no
        time (as `retain ask --as-of`); `context`, the turns of a conversation before the prompts (one list of texts,
        oldest first, for every prompt, or one per prompt), makes a follow-up ("And now?") ask about the fact they
        were on (as `retain ask --conversation`). `tokenizer` (default: the folder's) turns prompts into text and back."""
        if self._casm is None or input_ids is None:
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, tokenizer=tokenizer, **kwargs)
        tokenizer = tokenizer or self._folder_tokenizer()
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        given = [tokenizer.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(input_ids, mask)]
        prompts = given if as_of is None else [dated(p, as_of) for p in given]
        relate = None
        if self._casm.get("by_meaning"):
            encode = lambda texts: tokenizer(list(texts), return_tensors="pt").to(self.device)  # noqa: E731
            relate = model_matcher(self, encode, self._no_memory if self._casm.get("ask") else None)
        if context is not None:
            turns = [context] * len(prompts) if all(isinstance(turn, str) for turn in context) else context
            question = self._casm.get("question") or "{subject} — {relation}:"
            prompts = [follow_up(p, list(before), self._casm["periods"], self._registry, relate, question)
                       for p, before in zip(prompts, turns)]
        reads = [read(p, self._casm["periods"], self._registry, self._casm["scope"], relate=relate,
                      question=self._casm.get("question")) for p in prompts]
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        if [r.text for r in reads] != given:
            side, tokenizer.padding_side = tokenizer.padding_side, "left"
            inputs = dict(tokenizer([r.text for r in reads], return_tensors="pt", padding=True).to(input_ids.device))
            tokenizer.padding_side = side
        self._read_versions([r.version for r in reads])
        try:
            output = super().generate(**inputs, tokenizer=tokenizer, **kwargs)
        finally:
            self._read_versions(None)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        answered = torch.cat([input_ids, sequences[:, inputs["input_ids"].shape[1]:]], dim=1)
        if isinstance(output, torch.Tensor):
            return answered
        output.sequences = answered
        return output

    def _folder_tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.config._name_or_path)
        return self._tokenizer

    @contextlib.contextmanager
    def _no_memory(self):
        """Meanwhile a forward of one example reads no memory (the pretrained model), as CASM's matcher asks it."""
        self._read_versions([None])
        try:
            yield
        finally:
            self._read_versions(None)

    def _read_versions(self, versions) -> None:
        """Example i of the next forwards reads memory version `versions[i]` (None: no memory); None: the latest."""
        if versions is None:
            for memory in self._memory:
                memory.tables, memory.table_of = [], None
            return
        needed = sorted(set(versions), key=lambda v: -1 if v is None else v)
        tables = {v: self._versions.get(v) or self._versions.setdefault(v, self._version(v)) for v in needed}
        index = {v: i for i, v in enumerate(needed)}
        for position, memory in enumerate(self._memory):
            memory.tables = [tables[v][position] for v in needed]
            memory.table_of = torch.tensor([index[v] for v in versions])

    def _version(self, version):
        """Each memory module's rows as period `version` closed (None: zeros, the pretrained model). Version v is
        the latest rows with every row a later period wrote taken from the first copy made after v."""
        table = torch.cat([memory.delta.detach() for memory in self._memory])
        if version is None:
            table = torch.zeros_like(table)
        for v in reversed(range(version or 0, len(self._casm["copies"])) if version is not None else ()):
            rows = getattr(self, f"retain_casm_rows_{v}")
            table[rows] = getattr(self, f"retain_casm_values_{v}").to(table.dtype)
        return table.split([len(memory.delta) for memory in self._memory])
