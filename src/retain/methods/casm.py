"""CASM: contradiction-aware, versioned memory, read as of the time a query asks about.

Composed of three parts: an SMF writer (sparse TF-IDF-selected value rows of its memory are
written), a `VersionedTable` over that memory (copy-on-write, one version per period: every closed
period's memory can be rebuilt bit for bit, while rows no later period wrote are shared by all
versions), and a `FactRegistry` (which fact holds when).

Each task's facts (facts.jsonl) go through a FactRegistry: a known (subject, relation) stated with a
different normalised object is a contradiction and closes the old version; the same object is a
confirmation; a new pair an addition. Training examples that state only confirmed facts are
dropped, so confirmations write nothing and stay shared. (The fact questions every method trains on
come from the trainer, not from here: CASM adds no training example of its own.) A task without
facts trains on everything; then the model itself, as trained on it, is asked each known fact whose
subject the text names, in the first training wording of `retain.fact_questions` ("[2020] Nozer —
mayor:"), and an answer other than the known object, which a passage naming the subject states, is
taken as a contradiction, with that answer as the new version. How often that is right is measured
by `benchmarks/casm.py --text-only-after-first`.

At inference the time in the query ("[2020] …", "in 2020", "as of March 2021", or `as_of`) picks
the newest period that began at or before it; no time reads the live (latest) memory. When the
registry knows the fact a query asks about (its subject and relation appear in it, or by meaning:
`retain.relations`), the query reads the version of the period in which the fact's then-valid version
was stated, asked as that period's first training question ("[2018] Nozer — mayor:", `read_as`), exactly
as it was learned, whatever the asker's wording: a fact that has not changed since 2018 is read from
2018's version whatever later year is asked about.
`rollback()` withdraws the latest period: its facts are retracted in the registry and every row it
wrote gets back the value it had before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import nn

from retain.evaluation import exact_match
from retain.fact_questions import WORDINGS, question
from retain.knowledge import FactRegistry, FactVersion, Read, RelationScorer, follow_up, read, version_at
from retain.methods.base import (
    Encode, Exported, Method, MethodError, Routing, StreamData, TaskData, TrainingContext, check_periods, register, task_period,
)
from retain.methods.smf import SMFConfig, SparseMemoryFinetuning
from retain.nn.versioned_table import VersionedTable
from retain.relations import Answers, model_matcher
from retain.stream import Stream, Task
from retain.text import first_statement, normalize_answer, time_key

@dataclass
class CASMConfig(SMFConfig):
    scope: Literal["facts", "all"] = field(default="facts", metadata={
        "help": "'facts': a query that names no time and no fact the registry knows reads no memory (the "
                "pretrained model), so text about nothing learned is untouched; 'all': it reads the latest memory."})

    by_meaning: bool = field(default=True, metadata={
        "help": "When a query names a known subject but none of its relations verbatim, find the relation it means "
                "from the model's input embeddings (`retain.relations`); off: the subject and relation must appear."})
    ask: bool = field(default=True, metadata={
        "help": "With by_meaning, also ask the pretrained model which of the subject's relations a query asks for "
                "(each scored as its answer), for words close to no relation's name ('who ran it')."})

    read_as: Literal["asked", "question"] = field(default="question", metadata={
        "help": "How a query whose fact the registry finds is read: 'question', as the first training wording of "
                "the fact questions (\"[2018] Nozer — mayor:\"), whatever the asker's words; 'asked', in the "
                "asker's words with its time rewritten to the period."})

    def writer_config(self) -> SMFConfig:
        """The SMF options of the memory writer."""
        return SMFConfig(**{f.name: getattr(self, f.name) for f in fields(SMFConfig)})


@register
class CASM(Method):
    name = "casm"
    config_class = CASMConfig
    # Under FSDP its writer follows the shards as SMF's does, and the versioned table reads and writes whole rows.
    sharded_by = frozenset({"fsdp"})
    versioned = True

    def __init__(self, config: CASMConfig | None = None) -> None:
        super().__init__(config)
        self.writer = SparseMemoryFinetuning(self.config.writer_config())
        self.sharded_by = self.writer.sharded_by  # none for a product-key memory
        self.table: VersionedTable | None = None  # over the writer's memory, once the model has one
        self.periods: list[str] = []  # one memory version per period, oldest first
        self.registry = FactRegistry()
        self.observations: list[dict[str, int]] = []
        self.as_of: str | None = None  # an explicit time for every query, overriding the text's
        self.answers: Answers = {}  # the pretrained model's reading of a query's words (`model_asker`): never trained

    # -- writing --------------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        model = self.writer.prepare(model)
        self.table = VersionedTable(self.writer.memory)
        return model

    def check(self, stream: Stream) -> None:
        self.writer.check(stream)
        check_periods(stream, self.periods, self.name)

    def before_stream(self, model: nn.Module, data: StreamData) -> None:
        self.writer.before_stream(model, data)

    def before_task(self, model: nn.Module, context: TrainingContext) -> list[dict[str, str]]:
        task = context.task
        self.writer.before_task(model, context)
        period = task_period(task, self.periods[-1] if self.periods else None, self.name)
        self.periods.append(period)
        self.table.begin()
        counts = {"addition": 0, "confirmation": 0, "contradiction": 0, "unplaced": 0, "examples_dropped": 0,
                  "asked_model": 0, "unsupported": 0}
        confirmed: list[FactVersion] = []
        for seen in self.registry.observe_facts(task.facts, period):
            counts["unplaced" if seen is None else seen.kind] += 1
            if seen is not None and seen.kind == "confirmation":
                confirmed.append(seen.version)
        self.observations.append(counts)
        changed = [v for v in self.registry.versions if v.valid_from == period and not v.retracted]
        kept = [example for example in task.train if not _only_states(example, confirmed, changed)]
        counts["examples_dropped"] = len(task.train) - len(kept)
        return kept or task.train

    def optimizer(self, model: nn.Module, context: TrainingContext) -> torch.optim.Optimizer:
        return self.writer.optimizer(model, context)

    def after_forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], context: TrainingContext) -> None:
        self.writer.after_forward(model, inputs, context)
        self.table.before_write(self.writer.selected)

    def after_task(self, model: nn.Module, data: TaskData, context: TrainingContext) -> dict[str, float]:
        report = self.writer.after_task(model, data, context)
        if not data.task.facts and data.complete is not None:
            self._ask_model(data.task, data.complete)
        self.table.close()
        counts = self.observations[-1]
        return report | {
            "facts_added": counts["addition"], "facts_confirmed": counts["confirmation"],
            "facts_contradicted": counts["contradiction"], "facts_unplaced": counts.get("unplaced", 0),
            "examples_dropped": counts["examples_dropped"],
            "facts_asked_model": counts["asked_model"], "model_answers_unsupported": counts["unsupported"],
            "rows_copied_on_write": self.table.copied_rows(), "stored_bytes": float(self.table.copied_bytes())}

    def _ask_model(self, task: Task, complete: Callable[[Sequence[str]], list[str]]) -> None:
        """A task that brings text but no facts: ask the model, as trained on it, about every current fact whose
        subject the text names. An answer that does not start with the known object contradicts it when a
        passage naming the subject states the answer (its longest such prefix, which becomes the new version);
        an answer no such passage states is the model's own mix-up and changes nothing."""
        period = self.periods[-1]
        passages = [f" {normalize_answer(' '.join(example.values()))} " for example in task.train]
        naming = {v.id: [p for p in passages if f" {normalize_answer(v.subject)} " in p] for v in self.registry.versions
                  if not v.retracted and v.valid_until is None}
        asked = [self.registry.versions[i] for i, found in naming.items() if found]
        prompts = [question(v.subject, v.relation, period) for v in asked]
        counts = self.observations[-1]
        counts["asked_model"] = len(asked)
        for version, generated in zip(asked, complete(prompts) if prompts else []):
            answer = first_statement(generated).strip()
            if exact_match(answer, [version.object]):
                counts["confirmation"] += 1
            elif stated := _stated_prefix(answer, naming[version.id]):
                self.registry.observe(version.subject, version.relation, stated, period)
                counts["contradiction"] += 1
            else:
                counts["unsupported"] += 1

    # -- reading --------------------------------------------------------------------------------

    def version_at(self, time: str | None) -> int:
        """The newest period that began at or before `time` (the first period for earlier times; the latest for None)."""
        return version_at(self.periods, time)

    def read(self, prompt: str, relate: RelationScorer | None = None) -> Read:
        """How `prompt` is read (`retain.knowledge.read`): which version, and as what text."""
        return read(prompt, self.periods, self.registry, self.config.scope, self.as_of, relate, self._question())

    def follow_up(self, model: nn.Module, prompt: str, context: Sequence[str], encode: Encode) -> str:
        """The turn on its own, naming the fact the conversation is on (`retain.knowledge.follow_up`): the memory is
        read per query, and an earlier turn's words would change the time or fact the router reads off it."""
        relate = self._matcher(model, encode)
        return follow_up(prompt, context, self.periods, self.registry, relate, WORDINGS[0])

    def _matcher(self, model: nn.Module, encode: Encode) -> RelationScorer | None:
        if not self.config.by_meaning:
            return None
        # Before the first period there is no memory: the model as it is is the pretrained one.
        pretrained = self.table.pretrained if self.table else contextlib.nullcontext
        return model_matcher(model, encode, pretrained if self.config.ask else None, self.answers)

    def _question(self) -> str | None:
        """The training wording a query is read in (`read_as="question"`), else None: the asker's."""
        return WORDINGS[0] if self.config.read_as == "question" else None

    def route(self, model: nn.Module, prompts: Sequence[str], encode: Encode) -> Routing | None:
        """Each prompt reads its memory version; its route is the period of that version ("pretrained" for none)."""
        if not self.periods:
            return None
        relate = self._matcher(model, encode)
        reads = [self.read(prompt, relate) for prompt in prompts]
        self.table.read([r.version for r in reads])
        return Routing(texts=[r.text for r in reads],
                       names=["pretrained" if r.version is None else self.periods[r.version] for r in reads],
                       facts=["" if r.fact is None else f"{r.fact.subject} | {r.fact.relation}" for r in reads])

    def export(self, as_of: str | None) -> Exported:
        """Every period's version and what `read` needs to choose one per query (the periods, the registry), so that
        the exported model reads as `route` does; with `as_of`, the live memory becomes that period's version instead,
        read by every input. Changes the loaded model, not the run's checkpoint."""
        if as_of is None:
            tensors = {f"casm_{part}_{v}": copy[i] for v, copy in enumerate(self.table.copies)
                       for i, part in enumerate(("rows", "values"))}
            return Exported(routing={"casm": {"periods": self.periods, "scope": self.config.scope,
                                              "by_meaning": self.config.by_meaning, "ask": self.config.ask,
                                              "question": self._question(),
                                              "copies": [len(rows) for rows, _ in self.table.copies],
                                              "facts": self.registry.state()}}, tensors=tensors)
        time_key(as_of)
        version = self.version_at(as_of)
        values = self.table.values_at(version)
        self.writer.memory.write_rows(torch.arange(len(values)), values)
        self.table.read_live()
        return Exported(period=self.periods[version])

    # -- undoing --------------------------------------------------------------------------------

    def rollback(self) -> str:
        """Withdraw the latest period: retract its facts and restore every row it wrote. Returns its name."""
        if len(self.periods) < 2:
            raise MethodError("casm: rollback needs a period before the latest to return to")
        period = self.periods.pop()
        self.table.rollback()
        for version in reversed(self.registry.versions):
            if version.valid_from == period and not version.retracted:
                self.registry.retract(version.id)
        self.observations.pop()
        self.writer.written.pop()
        return period

    def state_dict(self) -> dict[str, Any]:
        return self.writer.state_dict() | {"periods": self.periods, "copies": self.table.copies,
                                           "observations": self.observations, "registry": self.registry.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.writer.load_state_dict(state)
        self.periods, self.observations = list(state["periods"]), list(state["observations"])
        self.table.load_state_dict({"versions": len(self.periods), "copies": state["copies"]})
        self.registry = FactRegistry.from_state(state["registry"])


def _stated_prefix(answer: str, passages: list[str]) -> str | None:
    """The longest prefix of `answer`'s words that one of the normalised `passages` states (3+ characters); None if none."""
    words = answer.split()
    for n in range(len(words), 0, -1):
        prefix = " ".join(words[:n]).rstrip(",;:")
        key = normalize_answer(prefix)
        if len(key) >= 3 and any(f" {key} " in passage for passage in passages):
            return prefix
    return None


def _only_states(example: dict[str, str], confirmed: list[FactVersion], changed: list[FactVersion]) -> bool:
    """Whether a training example states a confirmed fact (its subject and object appear) and no new one."""
    text = normalize_answer(" ".join(example.values()))

    def states(version: FactVersion) -> bool:
        return normalize_answer(version.subject) in text and normalize_answer(version.object) in text

    return any(states(v) for v in confirmed) and not any(states(v) for v in changed)
