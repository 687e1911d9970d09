"""Fact questions: a task's facts written as training examples in several wordings, the same for every method.

A temporal stream's `facts.jsonl` says what each period added or changed. Passages alone teach a model
to continue passages; a fact also trained as the question it answers (prompt → object, loss on the
object only) teaches it to answer. The trainer adds these examples for every method alike
(`ContinualTrainingArguments.fact_questions`), so a comparison stays on the same data. They are
training wordings only: the probes of retain's temporal benchmark ask in other wordings, and a test
checks that no probe prompt occurs in any method's training examples.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from retain.knowledge import fact_key, is_multi_valued, several_values
from retain.text import normalize_answer

WORDINGS: tuple[str, ...] = (
    "{subject} — {relation}:",
    "Records list the {relation} of {subject} as",
    "Fact card. Subject: {subject}. Attribute: {relation}. Value:",
    "Asked for the {relation} of {subject}, the archive answers:",
    # Answer slots after a line break. Trained only on the four above, which end mid-line, a model answers a
    # question put to it ("Q: …?\nA:") with its pretrained reply ("No.") or another fact of the subject.
    "Question: Tell me the {relation} of {subject}.\nAnswer:",
    "Entry: {subject}, {relation}.\nValue:",
    # A third answer marker. CASM's sparse memory answers a question whose marker it was trained on and misses one it
    # was not ("A:" where it learned "Answer:"); full_ft's whole model does not care.
    "Request: the {relation} of {subject}.\nReply:",
)
# All seven by default: the README's comparisons of every method (3 seeds) trained on them. The first six cost
# about 10% fewer training tokens, and CASM's question form then misses its targets on 100 facts (0.95 / 0.93 /
# 0.90 on a CPU, 0.88 / 0.84 / 0.85 on an H100); the first four, about 36% fewer, and 0.83 / 0.85 / 0.83 on
# `medium` (docs/benchmarks.md).
DEFAULT_WORDINGS = len(WORDINGS)


def question(subject: str, relation: str, period: str | None = None, wording: int = 0) -> str:
    """The prompt of training wording `wording` about (subject, relation), dated "[period] " when given."""
    text = WORDINGS[wording].format(subject=subject, relation=relation)
    text = text[:1].upper() + text[1:]
    return f"[{period}] {text}" if period else text


def fact_questions(facts: Iterable[dict[str, str]], period: str | None, wordings: int = DEFAULT_WORDINGS) -> list[dict[str, str]]:
    """Each fact as a prompt/completion example in the first `wordings` training wordings."""
    if not 0 <= wordings <= len(WORDINGS):
        raise ValueError(f"fact_questions: expected 0 to {len(WORDINGS)} wordings, got {wordings}")
    return [{"prompt": question(f["subject"], f["relation"], period, w), "completion": f" {f['object']}."}
            for f in facts for w in range(wordings)]


def new_or_changed(facts: Sequence[dict[str, Any]], earlier: Iterable[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The facts whose (subject, relation) no earlier task stated with this object as a value it still holds (a
    restated fact teaches nothing new and is not asked again). A `multi_valued` fact, or one a period states with
    several objects (`several_values`), holds every object stated."""
    current: dict[tuple[str, str], set[str]] = {}
    for task_facts in earlier:
        several = several_values(task_facts)
        for fact in task_facts:
            values = current.setdefault(fact_key(fact), set())
            if not (is_multi_valued(fact) or fact_key(fact) in several or len(values) > 1):
                values.clear()
            values.add(normalize_answer(fact["object"]))
    return [f for f in facts if normalize_answer(f["object"]) not in current.get(fact_key(f), set())]
