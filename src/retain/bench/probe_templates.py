"""A family of probe templates for the temporal-facts stream, split by template into a dev half and a test half.

Training wordings are frozen (a relation's sentences in `retain.bench.temporal_facts`, the fact questions of
`retain.fact_questions`); probes ask in these templates, none of which any training text holds (a test checks
near-copies too). The halves are fixed here, by template: the dev half may be looked at when choosing anything
(wordings, defaults, thresholds); the test half is scored in every run and never used for a choice. Each half holds
every style: questions and statements, possessives, the time first or last, other punctuation and case, the
relation in other words, and (the last period only) the present.

Placeholders: {s} the subject, {r} the relation, {alt} the relation in other words (`Relation.aliases`), {wh}
"Who"/"What" ({wh_} in lower case), {t} the period as a sentence names it ("2020", "October 2021"), {yy} its last
two digits (for "'20").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, TypeVar

from retain.text import spoken_time


T = TypeVar("T")


class ProbeTemplate(NamedTuple):
    name: str
    text: str
    half: Literal["dev", "test"]
    present: bool = False  # asks about now: used in the last period only, read at the stream's clock

    @property
    def form(self) -> str:
        """The probe form the template's probes carry: "test/possessive-last"."""
        return f"{self.half}/{self.name}"


def _family(*groups: tuple[tuple[str, str], ...], present: bool = False) -> list[ProbeTemplate]:
    """Templates of each group, alternately dev and test, so that both halves hold every style."""
    return [ProbeTemplate(name, text, "dev" if i % 2 == 0 else "test", present)
            for group in groups for i, (name, text) in enumerate(group)]


_QUESTIONS = (
    ("q-last", "{wh} was the {r} of {s} in {t}?"),
    ("q-first", "In {t}, {wh_} was the {r} of {s}?"),
    ("q-qa-slot", "Q: {wh} was the {r} of {s} in {t}?\nA:"),
    ("q-as-of-first", "As of {t}, {wh_} was the {r} of {s}?"),
    ("q-possessive", "{wh} was {s}'s {r} in {t}?"),
    ("q-back-in", "Back in {t}, {wh_} was {s}'s {r}?"),
    ("q-colon-year", "{t}: {wh_} was the {r} of {s}?"),
    ("q-the-year", "In the year {t}, {wh_} was the {r} of {s}?"),
    ("q-parenthesis", "{wh} was the {r} of {s} ({t})?"),
    ("q-short-year", "{wh} was the {r} of {s} in '{yy}?"),
    ("q-could-you", "Could you tell me {wh_} the {r} of {s} was in {t}?"),
    ("q-do-you-know", "Do you know the {r} of {s} as of {t}?"),
    ("q-no-mark", "{wh} was the {r} of {s} in {t}"),
    ("q-during", "During {t}, {wh_} was the {r} of {s}?"),
)
_STATEMENTS = (
    ("s-tag", "[{t}] The {r} of {s} is"),
    ("s-first", "In {t}, the {r} of {s} was"),
    ("s-last", "The {r} of {s} in {t} was"),
    ("s-as-of-first", "As of {t}, the {r} of {s} was"),
    ("s-possessive-last", "{s}'s {r} in {t} was"),
    ("s-possessive-first", "In {t} {s}'s {r} was"),
    ("s-as-of-middle", "The {r} of {s}, as of {t}, was"),
    ("s-during", "During {t}, the {r} of {s} was"),
    ("s-dash", "{t} - the {r} of {s} was"),
    ("s-parenthesis", "The {r} of {s} (as of {t}) was"),
    ("s-the-year", "In the year {t}, the {r} of {s} was"),
    ("s-name-the", "Name the {r} of {s} in {t}:"),
)
_OTHER_WORDS = (
    ("alt-q-last", "{wh} was the {alt} of {s} in {t}?"),
    ("alt-s-first", "In {t}, the {alt} of {s} was"),
    ("alt-s-possessive", "{s}'s {alt} in {t} was"),
    ("alt-q-as-of", "As of {t}, {wh_} was the {alt} of {s}?"),
    ("alt-q-qa-slot", "Q: In {t}, {wh_} was {s}'s {alt}?\nA:"),
    ("alt-s-back-in", "The {alt} of {s} back in {t} was"),
)
_CASE = (
    ("lower-s-first", "in {t}, the {r} of {s} was"),
    ("upper-q-last", "{WH} WAS THE {R} OF {S} IN {t}?"),
    ("upper-s-first", "IN {t}, THE {R} OF {S} WAS"),
    ("lower-q-possessive", "{wh_} was {s}'s {r} in {t}?"),
    ("spaced-q-last", "{wh}  was the {r} of  {s} in {t} ?"),
    ("spaced-s-last", "The {r} of {s}  in {t}  was"),
)
_PRESENT = (
    ("now-s-today", "Today, the {r} of {s} is"),
    ("now-q-now", "{wh}'s the {r} of {s} now?"),
    ("now-q-would-you-say", "Currently, {wh_} would you say is the {r} of {s}?"),
    ("now-s-current", "The current {r} of {s} is"),
    ("now-s-possessive", "{s}'s {r} these days is"),
    ("now-s-alt", "At present, the {alt} of {s} is"),
    ("now-q-possessive", "{wh} is {s}'s {r} today?"),
    ("now-s-right-now", "Right now, the {r} of {s} is"),
)

TEMPLATES: tuple[ProbeTemplate, ...] = (*_family(_QUESTIONS, _STATEMENTS, _OTHER_WORDS, _CASE),
                                        *_family(_PRESENT, present=True))


def render(template: ProbeTemplate, subject: str, relation: str, alias: str, wh: str, period: str) -> str:
    """The probe prompt `template` asks about (subject, relation) as of `period`, capitalised as a sentence (unless the
    template is written in lower or upper case)."""
    t = spoken_time(period)
    text = template.text.format(s=subject, r=relation, alt=alias, wh=wh, wh_=wh.lower(), t=t, yy=period[2:4],
                                S=subject.upper(), R=relation.upper(), WH=wh.upper())
    return text if template.name.startswith(("lower", "upper")) else text[:1].upper() + text[1:]


def probe_templates(present: bool, other_words: bool = True) -> list[ProbeTemplate]:
    """The templates that ask as of a period (`present` False) or about now (True), dev and test alternating; without
    `other_words`, not those that ask for the relation in other words (a relation with no alias)."""
    return [t for t in TEMPLATES if t.present == present and (other_words or "{alt}" not in t.text)]


def drawn(templates: list[T], count: int, turn: int) -> list[T]:
    """`count` templates (at most all), the `turn`-th draw of a rotation through `templates`: dev and test alternate
    in the family, so an even count takes half from each, and every template is drawn about equally often."""
    return [templates[(turn * count + i) % len(templates)] for i in range(min(count, len(templates)))]


def asked(subject: str, relation: str, alias: str | None, wh: str, period: str, count: int, turn: int, now: bool,
          allowed: Callable[[str], bool] = lambda prompt: True) -> dict[str, str]:
    """Form → prompt: (subject, relation) asked as of `period` in `count` templates, the `turn`-th draw, and with
    `now` in `count` templates about the present too; without an `alias`, none that asks in other words; only
    prompts `allowed` (an importer's check that no training text already says them)."""
    prompts = {}
    for present in [False, True] if now else [False]:
        family = [(t, render(t, subject, relation, alias or relation, wh, period))
                  for t in probe_templates(present, alias is not None)]
        kept = [pair for pair in family if allowed(pair[1])]
        prompts |= {t.form: prompt for t, prompt in drawn(kept, count, turn)}
    return prompts
