"""A deterministic, offline stream of fictional facts that change over time.

Every fact exists from the first period; at each later period a share of them changes value (never
back to an earlier value) and, optionally, new facts appear. A period's training text states the
facts that are new or changed in it; its probes ask, as of that period, about every fact alive
then, tagged `new`, `changed` or `unchanged`, in held-out wordings (`form`) that no training text
and no fact question (`retain.fact_questions`) uses:

- `cloze`: "[2020] The mayor of Nozer is"
- `question`: "Q: Who was the mayor of Nozer in 2020?\nA:"
- `time_clause`: "In 2020, the mayor of Nozer was"
- `now`: "Today, the mayor of Nozer is" (the last period only: the present, read as the last period, so the current value)

or, with `probe_templates`, in templates drawn from a family of 46 split into a dev and a test half
(`retain.bench.probe_templates`: questions, statements, possessives, the time first or last, the relation in
other words, other case and punctuation, the present), each probe's form naming its half ("test/q-possessive").

Every answer in the stream is distinct and no answer is a substring of another, so scoring by the
words of an answer stays honest. `background` text (what methods may calibrate on) and `general`
text (what perplexity is measured on) are disjoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

from retain import metrics
from retain.bench.probe_templates import asked, probe_templates
from retain.result import KindsOf, RunResult, register_summary
from retain.stream import Probe, Stream, Task

_ONSETS = ["b", "br", "d", "dr", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "tr", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ei", "ou"]
_CODAS = ["", "", "", "l", "n", "r", "s", "th", "nd", "x"]
_SHIP_ADJECTIVES = ["Pale", "Silver", "Quiet", "Northern", "Amber", "Restless", "Hollow", "Crimson", "Patient", "Distant",
                    "Iron", "Gentle", "Winter", "Copper", "Lantern", "Salt"]
_SHIP_NOUNS = ["Meridian", "Kestrel", "Heron", "Lark", "Tide", "Ember", "Gannet", "Comet", "Harrow", "Sparrow", "Drift",
               "Beacon", "Plover", "Current", "Thistle", "Marlin"]
_ORG_KINDS = ["Institute", "Guild", "Works", "Company", "Observatory", "Foundry", "Trust", "Press"]
_GOODS_KINDS = ["salted", "dried", "smoked", "woven", "polished", "carved", "dyed", "pressed", "pickled", "glazed",
                "spun", "tanned", "cured", "hammered", "braided", "roasted"]
_GOODS = ["cod", "figs", "wool", "copper", "slate", "amber", "linen", "cedar", "barley", "horn", "pearls", "tin",
          "cork", "indigo", "birch", "saffron", "clay", "rope", "eel", "leather"]
_SEASONS = ["spring", "summer", "autumn", "winter"]


class Relation(NamedTuple):
    name: str
    subject: str  # entity type of the subject
    value: str  # value type
    question: str  # "Who" or "What"
    templates: tuple[str, ...]  # the first is the probes' cloze prompt; the others are training sentences ending in {o}
    alias: str  # the relation in other words, for probe templates that ask without its name (`probe_templates`)


RELATIONS: tuple[Relation, ...] = (
    Relation("harbour master", "port", "person", "Who", (
        "The harbour master of {s} is", "{s} has a harbour master named {o}",
        "Ships arriving at {s} report to the harbour master, {o}", "At {s}, the harbour is run by {o}"), "harbourmaster"),
    Relation("dock capacity", "port", "ships", "What", (
        "The dock capacity of {s} is", "The docks at {s} can hold {o}",
        "{s} has berths for {o}", "At full capacity, {s} takes {o}"), "docking capacity"),
    Relation("mayor", "town", "person", "Who", (
        "The mayor of {s} is", "{s} is governed by its mayor, {o}",
        "The town of {s} elected as mayor {o}", "The office of mayor in {s} is held by {o}"), "town leader"),
    Relation("chief export", "town", "goods", "What", (
        "The chief export of {s} is", "{s} is best known for exporting {o}",
        "Most of what {s} sells abroad is {o}", "The main trade good of {s} is {o}"), "main export"),
    Relation("population", "town", "residents", "What", (
        "The population of {s} is", "{s} is home to {o}",
        "The last census of {s} counted {o}", "Living in {s} today are {o}"), "number of residents"),
    Relation("director", "org", "person", "Who", (
        "The director of {s} is", "{s} is led by its director, {o}",
        "The person directing {s} is {o}", "Heading {s} as director is {o}"), "head"),
    Relation("headquarters", "org", "place", "What", (
        "The headquarters of {s} are in", "{s} has its head office in {o}",
        "The main offices of {s} stand in {o}", "{s} is based in {o}"), "head office"),
    Relation("staff", "org", "employees", "What", (
        "The staff of {s} numbers", "{s} employs {o}",
        "On the payroll of {s} are {o}", "Working for {s} are {o}"), "workforce"),
    Relation("captain", "vessel", "person", "Who", (
        "The captain of {s} is", "{s} sails under captain {o}",
        "In command of {s} is {o}", "The master of the vessel {s} is {o}"), "commanding officer"),
    Relation("home port", "vessel", "place", "What", (
        "The home port of {s} is", "{s} is registered at {o}",
        "{s} returns each winter to {o}", "The port {s} sails from is {o}"), "port of registry"),
    Relation("registration code", "vessel", "code", "What", (
        "The registration code of {s} is", "{s} is registered under the code {o}",
        "The hull of {s} is marked {o}", "Port records list {s} as {o}"), "registry code"),
    Relation("lead engineer", "project", "person", "Who", (
        "The lead engineer of {s} is", "{s} is engineered under the lead of {o}",
        "The engineering team of {s} reports to {o}", "Leading the engineers on {s} is {o}"), "chief engineer"),
    Relation("budget", "project", "crowns", "What", (
        "The budget of {s} is", "{s} has been granted {o}",
        "The money set aside for {s} is {o}", "{s} is funded with {o}"), "funding"),
    Relation("completion date", "project", "date", "What", (
        "The completion date of {s} is", "{s} is due to be finished in {o}",
        "The planned end of {s} falls in {o}", "Work on {s} should end in {o}"), "planned finish date"),
)

GENERAL_TEXT: tuple[str, ...] = (
    "The water cycle describes how water evaporates from the sea, rises into the air, cools into clouds and falls again as rain.",
    "Photosynthesis is the process by which green plants use sunlight to turn carbon dioxide and water into sugar and oxygen.",
    "The printing press made books cheaper and helped spread reading and writing across Europe.",
    "A balanced diet includes fruit, vegetables, whole grains and protein, and limits added sugar and salt.",
    "The heart pumps blood through arteries and veins, carrying oxygen and nutrients to every part of the body.",
    "Mount Everest, on the border between Nepal and China, is the highest mountain above sea level.",
    "Computers store information as binary digits, and a program is a list of instructions for the processor.",
    "Rivers shape the land by carrying sediment downstream and leaving it in deltas and flood plains.",
    "The moon orbits the earth about once a month, and its pull on the oceans causes the tides.",
    "Bees carry pollen from flower to flower, which helps many plants to produce fruit and seeds.",
    "In a democracy, citizens choose their leaders in elections that are held at regular intervals.",
    "Ice floats on water because it is less dense than the liquid it froze from.",
    "The Roman Empire built roads, aqueducts and cities across much of Europe and the Mediterranean.",
    "Regular exercise strengthens the heart and muscles and can improve sleep and mood.",
    "Volcanoes form where molten rock from deep inside the earth rises to the surface.",
    "A library lends books, newspapers and recordings to the people who live nearby.",
)


# What methods may calibrate on (SMF's background statistics); never the text perplexity is measured on.
BACKGROUND_TEXT: tuple[str, ...] = (
    "Sound travels faster through water than through air, and faster still through solid rock.",
    "The compass needle points north because it lines up with the magnetic field of the earth.",
    "Bread rises when yeast feeds on sugar in the dough and releases bubbles of carbon dioxide.",
    "Glaciers carve wide valleys as they slide slowly downhill under their own weight.",
    "A thermometer measures temperature, and a barometer measures the pressure of the air.",
    "Many birds fly south in autumn to find food and warmer weather, and return in spring.",
    "The Great Wall of China was built over many centuries to protect the northern borders.",
    "Electric current flows through copper wires because the metal lets electrons move freely.",
    "Deserts receive very little rain, and the plants that grow there store water in their stems.",
    "A vaccine trains the immune system to recognise a germ before a real infection.",
    "The alphabet used for English came from the Latin script of ancient Rome.",
    "Coral reefs are built by tiny animals and give shelter to thousands of kinds of fish.",
    "Trains once ran on steam, made by burning coal to boil water in a large tank.",
    "Earthquakes happen when the plates of the earth's crust suddenly slip past one another.",
    "A museum collects and shows objects of art, history or science to the public.",
    "Salt has been used for thousands of years to keep meat and fish from spoiling.",
    "The planets of the solar system travel around the sun in nearly circular paths.",
    "Paper is made from the fibres of wood, pressed into thin sheets and dried.",
    "Wind turbines turn the energy of moving air into electricity.",
    "Most of the oxygen we breathe is produced by plants and tiny organisms in the sea.",
    "A map shows the shape of the land, its roads and rivers, at a smaller scale.",
    "Chess is a game for two players, each moving sixteen pieces on a board of sixty-four squares.",
    "Cotton grows in warm climates, and its soft fibres are spun into thread for cloth.",
    "Lightning is a giant spark of electricity between clouds, or between a cloud and the ground.",
)


# Questions no task teaches, whose answers must not change (`Stream.locality`): a stream subject's attribute that no
# relation here has, and the stream's relations of real subjects the pretrained model may know.
LOCALITY_OTHER_RELATION: tuple[str, ...] = ("The founding year of {s} is", "The motto of {s} is",
                                            "The oldest building of {s} is", "The colour of the flag of {s} is")
LOCALITY_OTHER_SUBJECT: tuple[str, ...] = (
    "The mayor of London is", "The population of Tokyo is", "The headquarters of the United Nations are in",
    "The captain of the Titanic was", "The chief export of Chile is", "The director of the Louvre is",
    "The home port of the Queen Mary 2 is", "The budget of NASA is", "The harbour master of Rotterdam is",
    "The lead engineer of the Eiffel Tower was", "The staff of the World Health Organization numbers",
    "The completion date of the Panama Canal is",
)


@dataclass(frozen=True)
class TemporalFactsConfig:
    facts: int = field(default=40, metadata={"help": "Facts alive in the first period."})
    periods: tuple[str, ...] = field(default=("2018", "2020", "2022", "2024"), metadata={"help": "Period labels, in order."})
    change_rate: float = field(default=0.25, metadata={"help": "Share of the live facts that change at each later period."})
    new_rate: float = field(default=0.0, metadata={"help": "New facts at each later period, as a share of the first period's."})
    paraphrases: int = field(default=2, metadata={"help": "Training sentences per new or changed fact (1–3 wordings)."})
    qa: bool = field(default=False, metadata={"help": "Also train on question/answer pairs."})
    passages: bool = field(default=True, metadata={"help": "Train on the stated sentences (off: question/answer pairs only)."})
    year_in_text: bool = field(default=True, metadata={"help": "Prefix training text with the period, as probes are: [2020] …"})
    probe_templates: int = field(default=0, metadata={
        "help": "Probe templates per fact and period, drawn in turn from the dev/test family of "
                "`retain.bench.probe_templates` (half from each); 0: the three fixed forms and `now`."})
    seed: int = field(default=0, metadata={"help": "Seed: the same config and seed give a byte-identical stream."})

    def __post_init__(self) -> None:
        if self.facts < 1 or len(self.periods) < 1 or len(set(self.periods)) != len(self.periods):
            raise ValueError("temporal facts: need at least one fact and one period, and periods must be distinct")
        if not 0 <= self.change_rate <= 1 or self.new_rate < 0:
            raise ValueError("temporal facts: change_rate must be in [0, 1] and new_rate ≥ 0")
        if not 1 <= self.paraphrases <= 3:
            raise ValueError("temporal facts: paraphrases must be between 1 and 3")
        if not 0 <= self.probe_templates <= len(probe_templates(present=False)):
            raise ValueError(f"temporal facts: probe_templates must be between 0 and {len(probe_templates(False))}")
        if not (self.passages or self.qa):
            raise ValueError("temporal facts: enable passages, qa, or both")


PRESETS: dict[str, TemporalFactsConfig] = {
    # Sized for the demo: four methods on SmolLM2-135M in a few minutes on two CPU cores.
    "small": TemporalFactsConfig(facts=10, periods=("2018", "2020", "2022"), change_rate=0.3, paraphrases=2),
    # Big enough that one probe is not a sixth of a score, small enough for minutes per method on two CPU cores.
    "medium": TemporalFactsConfig(facts=40, periods=("2018", "2020", "2022", "2024"), change_rate=0.25, paraphrases=2),
    # About the scale of Synthetic TemporalWiki: ~600 facts, four periods, ~150 changes per period.
    "full": TemporalFactsConfig(facts=600, periods=("2018", "2020", "2022", "2024"), change_rate=0.25, paraphrases=3, qa=True),
}


@dataclass
class _Fact:
    subject: str
    relation: Relation
    values: dict[int, str]  # period index → value from that period on

    def value_at(self, period: int) -> str:
        return self.values[max(p for p in self.values if p <= period)]

    @property
    def key(self) -> str:
        return f"{self.subject} | {self.relation.name}"


class _Vocabulary:
    """Draws fictional names and typed values; every answer drawn is unique and substring-free."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.answers: list[str] = []
        self.names: set[str] = set()

    def word(self) -> str:
        syllables = self.rng.choice((2, 2, 2, 3))
        text = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))
        return (text + self.rng.choice(_CODAS)).capitalize()

    def name(self, kind: str) -> str:
        while True:
            if kind == "port":
                candidate = f"{self.word()} Port"
            elif kind == "town" or kind == "place":
                candidate = self.word()
            elif kind == "org":
                candidate = f"the {self.word()} {self.rng.choice(_ORG_KINDS)}"
            elif kind == "vessel":
                candidate = f"the {self.rng.choice(_SHIP_ADJECTIVES)} {self.rng.choice(_SHIP_NOUNS)}"
            elif kind == "project":
                candidate = f"Project {self.word()}"
            elif kind == "person":
                candidate = f"{self.word()} {self.word()}"
            else:
                raise KeyError(kind)
            if candidate not in self.names and len(candidate) > 4:
                self.names.add(candidate)
                return candidate

    def answer(self, kind: str) -> str:
        for _ in range(10_000):
            candidate = self._draw(kind)
            if candidate.lower() in (a.lower() for a in self.answers):
                continue
            if any(candidate.lower() in a.lower() or a.lower() in candidate.lower() for a in self.answers):
                continue
            self.answers.append(candidate)
            return candidate
        raise RuntimeError(f"temporal facts: ran out of distinct values of type {kind!r}")

    def _draw(self, kind: str) -> str:
        rng = self.rng
        if kind in ("person", "place"):
            return self.name(kind)
        if kind == "goods":
            return f"{rng.choice(_GOODS_KINDS)} {rng.choice(_GOODS)}"
        if kind == "ships":
            return f"{rng.randint(12, 480)} ships"
        if kind == "residents":
            return f"{rng.randint(1200, 98000)} residents"
        if kind == "employees":
            return f"{rng.randint(15, 4800)} employees"
        if kind == "crowns":
            return f"{rng.randint(3, 940)} million crowns"
        if kind == "date":
            return f"{rng.choice(_SEASONS)} {rng.randint(2031, 2099)}"
        if kind == "code":
            letters = "".join(rng.choice("BCDFGHJKLMNPRSTVXZ") for _ in range(2))
            return f"{letters}-{rng.randint(1000, 9999)}"
        raise KeyError(kind)


def generate(config: TemporalFactsConfig = PRESETS["small"], name: str = "temporal-facts") -> Stream:
    """Build the stream for `config`: one task per period, deterministic in `config.seed`."""
    rng = random.Random(config.seed)
    vocabulary = _Vocabulary(rng)
    subjects: dict[tuple[str, int], str] = {}

    def new_fact(index: int, period: int) -> _Fact:
        relation = RELATIONS[index % len(RELATIONS)]
        slot = (relation.subject, index // len(RELATIONS))  # each subject carries several relations
        if slot not in subjects:
            subjects[slot] = vocabulary.name(relation.subject)
        return _Fact(subjects[slot], relation, {period: vocabulary.answer(relation.value)})

    facts = [new_fact(i, 0) for i in range(config.facts)]
    changed: dict[int, list[_Fact]] = {0: []}
    added: dict[int, list[_Fact]] = {0: list(facts)}
    for period in range(1, len(config.periods)):
        alive = [f for f in facts if min(f.values) < period]
        changing = rng.sample(alive, round(config.change_rate * len(alive)))
        for fact in changing:
            fact.values[period] = vocabulary.answer(fact.relation.value)
        fresh = [new_fact(len(facts) + i, period) for i in range(round(config.new_rate * config.facts))]
        facts.extend(fresh)
        order = {id(f): i for i, f in enumerate(facts)}
        changed[period], added[period] = sorted(changing, key=lambda f: order[id(f)]), fresh

    tasks = []
    for period, label in enumerate(config.periods):
        stated = added[period] + changed[period]
        added_ids, changed_ids = {id(f) for f in added[period]}, {id(f) for f in changed[period]}
        train = [example for fact in stated for example in _training_examples(fact, period, label, config)]
        last = period == len(config.periods) - 1
        alive = [fact for fact in facts if min(fact.values) <= period]
        probes = [probe for turn, fact in enumerate(alive, start=config.seed + period * len(facts))
                  for probe in _probes(fact, period, config.periods, _kind(fact, added_ids, changed_ids), last, config, turn)]
        records = [{"subject": f.subject, "relation": f.relation.name, "object": f.value_at(period), "valid_from": label}
                   for f in stated]
        tasks.append(Task(name=label, train=train, probes=probes, period=label, facts=records))
    subjects_asked = list(dict.fromkeys(f.subject for f in facts))[: len(LOCALITY_OTHER_SUBJECT)]
    locality = [_sentence_case(LOCALITY_OTHER_RELATION[i % len(LOCALITY_OTHER_RELATION)].format(s=subject))
                for i, subject in enumerate(subjects_asked)] + list(LOCALITY_OTHER_SUBJECT)
    return Stream(name=name, tasks=tasks, general=list(GENERAL_TEXT), background=list(BACKGROUND_TEXT), locality=locality)


def _kind(fact: _Fact, added: set[int], changed: set[int]) -> str:
    return "new" if id(fact) in added else "changed" if id(fact) in changed else "unchanged"


_PAST = {" is": " was", " are in": " were in", " numbers": " numbered"}


def _probes(fact: _Fact, period: int, periods: tuple[str, ...], kind: str, last: bool, config: TemporalFactsConfig,
            turn: int) -> list[Probe]:
    """The fact asked as of `period` in every held-out form (and, in the last period, as of now); with
    `config.probe_templates`, in that many templates of the family instead, the `turn`-th draw of the rotation."""
    label, relation = periods[period], fact.relation
    if config.probe_templates:
        forms = asked(fact.subject, relation.name, relation.alias, relation.question, label, config.probe_templates, turn,
                      now=last)
    else:
        present = relation.templates[0].format(s=fact.subject)
        ending = next(e for e in _PAST if present.endswith(e))
        past = present[: -len(ending)] + _PAST[ending]
        forms = {
            "cloze": _sentence_case(f"[{label}] {present}"),
            "question": f"Q: {relation.question} was the {relation.name} of {fact.subject} in {label}?\nA:",
            "time_clause": f"In {label}, {past[:1].lower()}{past[1:]}",
        }
        if last:
            forms["now"] = f"Today, {present[:1].lower()}{present[1:]}"
    answer = fact.value_at(period)
    others = tuple(v for v in fact.values.values() if v != answer)
    learned_in = periods[max(p for p in fact.values if p <= period)]
    return [Probe(prompt=prompt, answer=answer, kind=kind, key=fact.key, form=form, other_values=others,
                  learned_in=learned_in) for form, prompt in forms.items()]


def _training_examples(fact: _Fact, period: int, label: str, config: TemporalFactsConfig) -> list[dict[str, str]]:
    prefix = f"[{label}] " if config.year_in_text else ""
    value = fact.value_at(period)
    examples: list[dict[str, str]] = []
    if config.passages:
        wordings = fact.relation.templates[1:]  # the first wording is kept for probes
        for template in wordings[: config.paraphrases]:
            examples.append({"text": _sentence_case(prefix + template.format(s=fact.subject, o=value)) + "."})
    if config.qa:
        question = f"{prefix}Question: {fact.relation.question} is the {fact.relation.name} of {fact.subject}?\nAnswer:"
        examples.append({"prompt": question, "completion": f" {value}."})
    return examples


def _sentence_case(text: str) -> str:
    """Capitalise the first letter after an optional "[period] " prefix ("the Amber Heron" → "The Amber Heron")."""
    head, sep, rest = text.partition("] ") if text.startswith("[") else ("", "", text)
    return f"{head}{sep}{rest[:1].upper()}{rest[1:]}"


def config_from_options(preset: str, **overrides: object) -> TemporalFactsConfig:
    if preset not in PRESETS:
        raise ValueError(f"--preset: unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    known = {f.name for f in fields(TemporalFactsConfig)}
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if k in known and v is not None})


@register_summary
def temporal_summary(result: RunResult, kinds_of: KindsOf, last_predictions: list[dict[str, Any]],
                     metric: str) -> dict[str, float | None]:
    """Plasticity, stability and historical score (see `retain.metrics`) from each row's scores per probe kind
    (`kinds_of(row)`), for a stream whose probes are `changed` / `unchanged` facts."""
    k = result.completed_tasks
    if not {"changed", "unchanged"} & {kind for row in result.rows for kind in kinds_of(row)}:
        return {}

    def kind_square(kind: str) -> list[list[float | None]]:
        return [kinds_of(row).get(kind, {}).get(metric, [None] * k)[:k] for row in result.rows[1:]]

    return {
        "plasticity": metrics.diagonal_mean(kind_square("changed")),
        "stability": metrics.diagonal_mean(kind_square("unchanged")),
        "historical": metrics.historical(last_predictions, result.tasks[k - 1], "correct" if metric == "em" else "f1",
                                         reference=result.rows[-1].predictions),
    }
