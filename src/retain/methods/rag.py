"""RAG: no training; the registry's facts about the query's subject, valid at the query's time, are put in the prompt.

The retrieval baseline users would otherwise pick: every task's `facts.jsonl` goes into a FactRegistry
(contradictions close the old version, as in CASM), and at inference each prompt is preceded by the
facts whose subject it names, as they stood at the time it asks about (the latest period when it names
none): "Facts as of 2020: The mayor of Nozer is Ilse Brandvik.\\n" + prompt. The model's weights never
change, so general text is untouched and nothing is forgotten; what it scores measures retrieval plus
the pretrained model's reading of the retrieved line. Unlike CASM, the answer is in the model's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from retain.knowledge import FactRegistry, FactVersion
from retain.methods.base import Encode, Method, MethodConfig, Routing, TrainingContext, check_periods, register, task_period
from retain.stream import Stream
from retain.text import normalize_answer, query_time


@dataclass
class RAGConfig(MethodConfig):
    max_facts: int = field(default=8, metadata={"help": "Most facts put before a prompt (the longest subject matches first).",
                                                  "min": 0})


@register
class RAG(Method):
    name = "rag"
    config_class = RAGConfig
    trains = False

    def __init__(self, config: RAGConfig | None = None) -> None:
        super().__init__(config)
        self.registry = FactRegistry()
        self.periods: list[str] = []

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.requires_grad_(False)  # nothing is trained: the facts reach the model through its prompt

    def check(self, stream: Stream) -> None:
        check_periods(stream, self.periods, self.name)

    def before_task(self, model: nn.Module, context: TrainingContext) -> None:
        task = context.task
        period = task_period(task, self.periods[-1] if self.periods else None, self.name)
        self.periods.append(period)
        self.registry.observe_facts(task.facts, period)  # a change it cannot place in time is left out

    def retrieve(self, prompt: str) -> list[FactVersion]:
        """The facts whose subject the prompt names, valid at the time it asks about (the latest when none)."""
        if not self.periods:
            return []
        time = query_time(prompt, self.periods[-1]) or self.periods[-1]
        words = f" {normalize_answer(prompt)} "
        found = [v for v in self.registry.versions
                 if v.valid_at(time) and f" {normalize_answer(v.subject)} " in words]
        return sorted(found, key=lambda v: -len(v.subject))[: self.config.max_facts]

    def route(self, model: nn.Module, prompts: Sequence[str], encode: Encode) -> Routing:
        return Routing(texts=[self.prompt_text(prompt) for prompt in prompts])

    def prompt_text(self, prompt: str) -> str:
        """The prompt preceded by the facts `retrieve` finds for it."""
        facts = self.retrieve(prompt)
        if not facts:
            return prompt
        time = query_time(prompt, self.periods[-1]) or self.periods[-1]
        return f"Facts as of {time}: " + " ".join(f"The {v.relation} of {v.subject} is {v.object}." for v in facts) + "\n" + prompt

    def state_dict(self) -> dict:
        return {"periods": self.periods, "registry": self.registry.state()}

    def load_state_dict(self, state: dict) -> None:
        self.periods = list(state["periods"])
        self.registry = FactRegistry.from_state(state["registry"])
