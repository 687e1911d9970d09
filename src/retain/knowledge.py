"""Versioned facts: validity windows, version chains, contradiction detection, rollback.

A fact is (subject, relation, object) with a validity window [valid_from, valid_until). When a new
object arrives for a (subject, relation) whose current version says otherwise, that version is
closed at the new one's valid_from and the new version links to it: nothing is overwritten.

Boundary rule: a version is valid at time t when valid_from ≤ t < valid_until (an open end is
+∞). At the instant a new version starts, the new version answers. Times are `retain.text` labels.

`read` says which period's memory a query reads, and as what text. This module and `retain.text` import nothing
else of retain (hence the relative import): `retain export` ships both beside an exported model's modeling code,
which reads queries as CASM does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from .text import MONTHS, at_time, normalize_answer, query_time, time_key, wording

# A capitalised word not starting a line or sentence ("Ulm", "NASA"), and capitalised words that name no one.
_CAPITALISED = re.compile(r"(?<!^)(?<![.?!]\s)\b[A-Z][\w-]*", re.MULTILINE)
_NO_NAMES = {"I", *(m.capitalize() for m in MONTHS), *(m[:3].capitalize() for m in MONTHS), "Sept", "Monday",
             "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}


def is_multi_valued(fact: Mapping[str, Any]) -> bool:
    """Whether a facts.jsonl record marks its relation as holding several objects at once (`"multi_valued": true`)."""
    value = fact.get("multi_valued")
    return value is True or str(value).lower() in ("true", "1", "yes")


_normalized = lru_cache(maxsize=65536)(normalize_answer)  # subjects and relations recur in every lookup


_POSSESSIVE = re.compile(r"(?<=\w)['’]s\b")


def slips(name: str, words: str) -> int | None:
    """The fewest character edits that turn `name` into a run of `words` (normalised text) of about its length, if
    within the slips allowed for its length: none under 6 characters, one up to 9, two beyond; else None."""
    name = _normalized(name)
    allowed = 0 if len(name) < 6 else 1 if len(name) < 10 else 2
    found = process.extractOne(name, _runs(words, len(name.split())), scorer=Levenshtein.distance, score_cutoff=allowed)
    return None if found is None else int(found[1])


@lru_cache(maxsize=4096)
def _runs(words: str, size: int) -> list[str]:
    """Every run of `size` - 1 to `size` + 1 consecutive words ("harbourmaster" is one word, "harbour master" two)."""
    tokens = words.split()
    return [" ".join(tokens[i : i + n]) for n in range(max(size - 1, 1), size + 2) for i in range(len(tokens) - n + 1)]


def fact_key(fact: Mapping[str, Any]) -> tuple[str, str]:
    """A fact's (subject, relation), normalised."""
    return _normalized(fact["subject"]), _normalized(fact["relation"])


def several_values(facts: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """The (subject, relation) pairs (`fact_key`) that `facts`, one period's, state with more than one object: the
    data says the relation holds a set (a competition's participants), so a second object is not a change."""
    objects: dict[tuple[str, str], set[str]] = {}
    for fact in facts:
        objects.setdefault(fact_key(fact), set()).add(normalize_answer(fact["object"]))
    return {key for key, values in objects.items() if len(values) > 1}


@dataclass
class FactVersion:
    id: int
    subject: str
    relation: str
    object: str
    valid_from: str
    valid_until: str | None = None
    replaces: int | None = None
    retracted: bool = False

    def valid_at(self, time: str) -> bool:
        t = time_key(time)
        return (not self.retracted and time_key(self.valid_from) <= t
                and (self.valid_until is None or t < time_key(self.valid_until)))


class Observation(NamedTuple):
    kind: Literal["addition", "confirmation", "contradiction"]
    version: FactVersion  # the version current after the observation
    previous: FactVersion | None  # for a contradiction: the version it closed


class FactRegistry:
    def __init__(self) -> None:
        self.versions: list[FactVersion] = []
        self.aliases: dict[str, list[str]] = {}  # subject → its other names, as the facts gave them
        self.relation_aliases: dict[str, list[str]] = {}  # relation → its other wordings, as the facts gave them

    def alias(self, subject: str, names: Iterable[str]) -> None:
        """Record other names of `subject`: a query naming one of them asks about the subject."""
        _extend(self.aliases, subject, names)

    def alias_relation(self, relation: str, names: Iterable[str]) -> None:
        """Record other wordings of `relation` ("town leader" for "mayor"): a query giving one asks about the
        relation, for every subject's fact of it."""
        _extend(self.relation_aliases, relation, names)

    def names(self, subject: str) -> list[str]:
        """`subject` and its aliases."""
        return [subject, *self.aliases.get(subject, ())]

    def relation_names(self, relation: str) -> list[str]:
        """`relation` and its aliases."""
        return [relation, *self.relation_aliases.get(relation, ())]

    def chain(self, subject: str, relation: str) -> list[FactVersion]:
        """Every version of (subject, relation), oldest first, retracted ones included."""
        return [v for v in self.versions if (v.subject, v.relation) == (subject, relation)]

    def current(self, subject: str, relation: str) -> FactVersion | None:
        live = [v for v in self.chain(subject, relation) if not v.retracted and v.valid_until is None]
        return live[-1] if live else None

    def at(self, subject: str, relation: str, time: str) -> FactVersion | None:
        valid = [v for v in self.chain(subject, relation) if v.valid_at(time)]
        return valid[-1] if valid else None

    def find(self, text: str, time: str | None = None, relate: RelationScorer | None = None) -> FactVersion | None:
        """The version a text asks about, valid at `time` (None: the current one): the fact whose subject and
        relation both occur in the text, normalised (case, punctuation, articles, a possessive's "'s"), the longest
        such match. Failing that, the fact whose subject and relation occur with the fewest spelling slips (`slips`:
        "Velmora Prot", "harbourmaster"). Failing that, with `relate`, the fact of the subject the text names whose
        relation `relate` says the rest of the text means ("the workforce of X" → X's staff), if it is sure. None if
        none of these finds one fact (it abstains). A subject is named by its name or any of its `aliases`, a relation
        by its own or any of its `relation_aliases`."""
        words = f" {_normalized(_POSSESSIVE.sub('', text))} "
        live = [v for v in self.versions
                if not v.retracted and (v.valid_until is None if time is None else v.valid_at(time))]
        asked = [(len(name) + len(relation), v.id, v) for v in live for name in self.names(v.subject)
                 for relation in self.relation_names(v.relation)
                 if f" {_normalized(name)} " in words and f" {_normalized(relation)} " in words]
        if asked:  # the longest match; among versions of one multi-valued fact, all valid at once, the newest
            return max(asked, key=lambda match: match[:2])[2]
        near = [(s + r, v) for v in live if (s := _fewest_slips(self.names(v.subject), words)) is not None
                and (r := _fewest_slips(self.relation_names(v.relation), words)) is not None]
        if near:
            fewest = min(n for n, _ in near)
            pairs = {(_normalized(v.subject), _normalized(v.relation)) for n, v in near if n == fewest}
            return max((v for n, v in near if n == fewest), key=lambda v: v.id) if len(pairs) == 1 else None
        return None if relate is None else _by_meaning(text, words, live, relate, self.names, self.relation_names)

    def observe(self, subject: str, relation: str, obj: str, valid_from: str, multi_valued: bool = False) -> Observation:
        """Record a stated fact: a new pair is an addition, the same normalised object a confirmation,
        another object a contradiction, which closes the current version and opens a new one. For a
        `multi_valued` relation (a company's parts, a person's occupations), or one that already holds several live
        values, another object is one more value: an addition that closes nothing, and any live value restated is a
        confirmation. ValueError: a change that cannot be placed in time (not after the current version's start)."""
        live = [v for v in self.chain(subject, relation) if not v.retracted and v.valid_until is None]
        if multi_valued or len(live) > 1:
            same = [v for v in live if normalize_answer(v.object) == normalize_answer(obj)]
            if same:
                return Observation("confirmation", same[-1], None)
            version = FactVersion(len(self.versions), subject, relation, obj, valid_from)
            self.versions.append(version)
            return Observation("addition", version, None)
        current = self.current(subject, relation)
        if current is not None and normalize_answer(current.object) == normalize_answer(obj):
            return Observation("confirmation", current, None)
        if current is not None and time_key(valid_from) <= time_key(current.valid_from):
            raise ValueError(f"{subject} | {relation}: a change at {valid_from} must come after the current "
                             f"version's start ({current.valid_from})")
        version = FactVersion(len(self.versions), subject, relation, obj, valid_from,
                              replaces=None if current is None else current.id)
        self.versions.append(version)
        if current is None:
            return Observation("addition", version, None)
        current.valid_until = valid_from
        return Observation("contradiction", version, current)

    def observe_fact(self, fact: Mapping[str, Any], period: str, multi_valued: bool = False) -> Observation:
        """`observe` a facts.jsonl record, valid from its own `valid_from` or else `period`, with the other names it
        gives its subject and relation (`"subject_aliases": ["the port of Velmora"]`, `"relation_aliases"`)."""
        self.alias(fact["subject"], fact.get("subject_aliases") or ())
        self.alias_relation(fact["relation"], fact.get("relation_aliases") or ())
        return self.observe(fact["subject"], fact["relation"], fact["object"], fact.get("valid_from") or period,
                            multi_valued=multi_valued or is_multi_valued(fact))

    def observe_facts(self, facts: Sequence[Mapping[str, Any]], period: str) -> list[Observation | None]:
        """`observe_fact` for each of one period's facts, a pair they state with several objects taken as a set
        (`several_values`). None for a fact the registry cannot place in time: counted by the caller, never raised."""
        several = several_values(facts)
        observed: list[Observation | None] = []
        for fact in facts:
            try:
                observed.append(self.observe_fact(fact, period, multi_valued=fact_key(fact) in several))
            except ValueError:
                observed.append(None)
        return observed

    def retract(self, version_id: int) -> FactVersion | None:
        """Withdraw a version: the one it replaced becomes current again over the whole window. Returns it."""
        version = self.versions[version_id]
        if version.retracted:
            raise ValueError(f"version {version_id} is already retracted")
        version.retracted = True
        if version.replaces is None:
            return None
        previous = self.versions[version.replaces]
        previous.valid_until = version.valid_until
        return previous

    def state(self) -> dict[str, Any]:
        """Every version and alias as plain data (for a checkpoint); `from_state` rebuilds the registry."""
        return {"versions": [asdict(v) for v in self.versions], "aliases": self.aliases,
                "relation_aliases": self.relation_aliases}

    @classmethod
    def from_state(cls, state: dict[str, Any] | list[dict[str, Any]]) -> FactRegistry:
        """The registry `state` describes (a list: the versions alone, as checkpoints before aliases held them)."""
        registry = cls()
        state = {"versions": state} if isinstance(state, list) else state
        registry.versions = [FactVersion(**record) for record in state["versions"]]
        registry.aliases = {subject: list(names) for subject, names in state.get("aliases", {}).items()}
        registry.relation_aliases = {relation: list(names)
                                     for relation, names in state.get("relation_aliases", {}).items()}
        return registry

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> FactRegistry:
        return cls.from_state(json.loads(Path(path).read_text()))


# (the words of a query, its subject replaced by "it" and its time taken out, candidate relations) → for each relation, how
# sure it is that the words ask about it (0 to 1; `retain.methods.casm` reads it off the model's own states).
RelationScorer = Callable[[str, Sequence[str]], list[float]]


def _extend(table: dict[str, list[str]], key: str, names: Iterable[str]) -> None:
    """Add to `table[key]` the `names` that are neither `key` nor already there, normalised."""
    seen = {_normalized(n) for n in (key, *table.get(key, ()))}
    new = [n for n in dict.fromkeys(names) if _normalized(n) not in seen]
    if new:
        table[key] = [*table.get(key, ()), *new]


def _fewest_slips(names: Iterable[str], words: str) -> int | None:
    """The fewest `slips` with which `words` gives any of `names`; None if it gives none."""
    return min((d for name in names if (d := slips(name, words)) is not None), default=None)


def _by_meaning(text: str, words: str, live: list[FactVersion], relate: RelationScorer,
                names: Callable[[str], list[str]], relation_names: Callable[[str], list[str]]) -> FactVersion | None:
    """The live version of the subject `text` names (by one of its `names`, verbatim or with slips, the longest such
    name) whose relation `relate` scores highest on the rest of the text, a relation scoring the sum of its
    wordings' scores (`relation_names`: they are one option); None if no subject is named or no relation scores
    0.5."""
    named = [(len(n), n, v) for v in live for n in names(v.subject) if f" {_normalized(n)} " in words]
    named = named or [(len(n) - s, n, v) for v in live for n in names(v.subject) if (s := slips(n, words)) is not None]
    if not named:
        return None
    longest = max(k for k, _, _ in named)
    name, subject = next((n, v.subject) for k, n, v in named if k == longest)
    candidates = [v for _, _, v in named if v.subject == subject]
    rest = f" {wording(_POSSESSIVE.sub('', text))} ".replace(f" {_normalized(name)} ", " it ")  # "who ran it"
    options = [(name, relation) for relation in sorted({v.relation for v in candidates})
               for name in relation_names(relation)]
    scores: dict[str, float] = {}
    for (_, relation), score in zip(options, relate(" ".join(rest.split()), [name for name, _ in options])):
        scores[relation] = scores.get(relation, 0.0) + score
    best = max(scores, key=scores.__getitem__)
    if scores[best] < 0.5:
        return None
    return max((v for v in candidates if v.relation == best), key=lambda v: v.id)


def version_at(periods: list[str], time: str | None) -> int:
    """The index of the newest of `periods` (oldest first) that began at or before `time` (the first for earlier
    times; the latest for None)."""
    if time is None or not periods:
        return len(periods) - 1
    key = time_key(time)
    begun = [i for i, period in enumerate(periods) if time_key(period) <= key]
    return begun[-1] if begun else 0


class Read(NamedTuple):
    """How a prompt is read: the version its time names, the version it reads (None: no memory), the text read and
    the fact version the registry found it asking about (None: none)."""

    named: int
    version: int | None
    text: str
    fact: FactVersion | None = None


def read(prompt: str, periods: list[str], registry: FactRegistry, scope: str = "facts", as_of: str | None = None,
         relate: RelationScorer | None = None, question: str | None = None) -> Read:
    """How `prompt` is read by a memory with one version per period of `periods`.

    When the registry knows the fact the prompt asks about, the version read is the one written in the period
    that fact's version (valid at the prompt's time, or `as_of`) was stated, and the prompt is dated as that
    period's text was: its time becomes the period, with the period's tag in front, as every training text of the
    period had it. "[2022] The mayor of Nozer is", about a mayor unchanged since 2018, reads the 2018 memory as
    "[2018] The mayor of Nozer is"; "Q: Who was the mayor of Nozer in 2022?" as "[2018] Q: Who was the mayor of
    Nozer in 2018?". Only the time is rewritten: the wording stays the asker's, and no object enters the text.
    With `question` (a training wording: "{subject} — {relation}:"), the fact found is asked in it instead, dated
    the same way ("[2018] Nozer — mayor:"): the asker's wording is gone, and still no object is in the text. A
    prompt naming neither a time nor a known fact reads no memory (None) under `scope="facts"` ("all": the
    latest). Otherwise the period named is read, and the text is the prompt.
    """
    clock = periods[-1] if periods else None  # what "now" and "last year" count from
    time = as_of or query_time(prompt, clock)
    named = version_at(periods, time)
    fact = registry.find(prompt, time, relate)
    if fact is None:
        general = time is None and scope == "facts"
        return Read(named, None if general else named, prompt)
    written = version_at(periods, fact.valid_from)
    period = periods[written]
    if question is not None:
        asked = question.format(subject=fact.subject, relation=fact.relation)
        return Read(named, written, f"[{period}] {asked[:1].upper()}{asked[1:]}", fact)
    text = at_time(prompt, period, clock)
    return Read(named, written, text if text.startswith(f"[{period}]") else f"[{period}] {text}", fact)


def follow_up(prompt: str, context: Sequence[str], periods: list[str], registry: FactRegistry,
              relate: RelationScorer | None = None, question: str = "{subject} — {relation}:") -> str:
    """A turn of a conversation made a question on its own. A prompt that names a subject the registry knows, or a
    name of its own (a capitalised word not starting a sentence, other than a month, a weekday or "I": "Who is the
    mayor of Ulm?"), is returned as it is. Otherwise
    it follows the latest earlier turn (`context`, oldest first) that names a subject the registry knows: it asks
    about the fact of that subject the two turns name together ("Tell me about Velmora Port." … "Who was its
    harbour master in 2019?"), else about the earlier turn's own fact ("Who was the harbour master of Velmora Port in
    2018?" … "And now?"), written as `question` and dated with the prompt's time, or failing that the earlier
    turn's ("[2022] Velmora Port — harbour master:"). When neither names one, or no earlier turn names a known
    subject, the prompt is returned as it is: it reads what `read` reads for it."""
    clock = periods[-1] if periods else None
    time = query_time(prompt, clock)

    names = {f" {_normalized(name)} " for subject in {v.subject for v in registry.versions}
             for name in registry.names(subject)}

    def names_a_subject(text: str) -> bool:
        words = f" {_normalized(_POSSESSIVE.sub('', text))} "
        return any(name in words for name in names)

    if names_a_subject(prompt) or any(word not in _NO_NAMES for word in _CAPITALISED.findall(prompt)):
        return prompt
    for earlier in reversed(context):
        if not names_a_subject(earlier):
            continue
        when = time or query_time(earlier, clock)
        before = registry.find(earlier, when, relate)
        fact = registry.find(f"{earlier} {prompt}" if before is None else f"{before.subject} {prompt}", when, relate)
        fact = fact or before
        if fact is None:
            return prompt
        asked = question.format(subject=fact.subject, relation=fact.relation)
        return asked if when is None else f"[{when}] {asked}"
    return prompt
