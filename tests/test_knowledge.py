import json

import pytest

from retain.knowledge import FactRegistry, follow_up, read
from retain.text import at_time, dated, query_time, time_key


def test_time_keys_order_years_and_months():
    assert time_key("2018") == (2018, 0)
    assert time_key("2021-03") == time_key("March 2021") == time_key(" march 2021 ") == (2021, 3)
    assert time_key("2020") < time_key("March 2021") < time_key("2022")
    with pytest.raises(ValueError, match="cannot read a time from 'soon'"):
        time_key("soon")


@pytest.mark.parametrize("text, expected", [
    ("[2020] The harbour master of Velmora Port is", "2020"),
    ("In 2020 the harbour master of Velmora Port was", "2020"),
    ("The harbour master of Velmora Port in 2020 was", "2020"),
    ("As of 2020, the harbour master of Velmora Port is", "2020"),
    ("as of March 2021, the harbour master of Velmora Port is", "2021-03"),
    ("[2021-03] The harbour master is", "2021-03"),
    ("The harbour master of Velmora Port is", None),
    ("The docks can hold 2020 ships", None),
])
def test_query_time_reads_each_form(text, expected):
    assert query_time(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("[2020] The harbour master of Velmora Port is", "[2018] The harbour master of Velmora Port is"),
    ("In 2020 the harbour master of Velmora Port was", "In 2018 the harbour master of Velmora Port was"),
    ("as of March 2021, the harbour master is", "as of 2018, the harbour master is"),
    ("The docks can hold 2020 ships", "[2018] The docks can hold 2020 ships"),
    ("Who led Velmora Port before 2020?", "Who led Velmora Port 2018?"),  # "before" is part of the time it names
])
def test_at_time_replaces_the_time_query_time_reads_or_names_one(text, expected):
    assert at_time(text, "2018") == expected


@pytest.mark.parametrize("text, expected", [
    ("Who ran Velmora Port in early 2019?", "2019"),
    ("Velmora Port's harbour master (2019):", "2019"),
    ("2019 - who was harbour master of Velmora Port?", "2019"),
    ("Who was the harbour master of Velmora Port in '18?", "2018"),
    ("The harbour master of Velmora Port in the year 2018 was", "2018"),
    ("In twenty eighteen, who was harbour master of Velmora Port?", "2018"),
    ("harbour master of Velmora Port in two thousand and five", "2005"),
    ("nineteen ninety-nine: the harbour master of Velmora Port", "1999"),
    ("On 2019-05-03 the harbour master of Velmora Port was", "2019-05"),
    ("Who led Velmora Port in Sept. 2021?", "2021-09"),
    ("Velmora Port, harbour master, 09/2021", "2021-09"),
    ("Who led Velmora Port in May?", "2021-05"),  # the clock's year
    ("Who was harbour master of Velmora Port last year?", "2020"),
    ("Who was harbour master of Velmora Port two years ago?", "2019"),
    ("Who was harbour master of Velmora Port last month?", "2021-11"),
    ("Who is in charge of Velmora Port today?", "2021-12"),
    ("Who is currently the harbour master of Velmora Port?", "2021-12"),
    ("Who runs Velmora Port at present?", "2021-12"),
    ("Who led Velmora Port from 2015 to 2017?", "2017"),  # a range: its end
    ("Who led Velmora Port between 2015 and 2017?", "2017"),
    ("Velmora Port's harbour master, 2016-2018?", "2018"),
    ("Who was harbour master of Velmora Port in mid-2019?", "2019"),
    ("Who was harbour master of Velmora Port before 2020?", "2019"),  # the year before
    ("Who took over Velmora Port after 2019?", "2020"),
    ("Who was harbour master of Velmora Port three years back?", "2018"),
    ("Who was harbour master of Velmora Port a couple of years ago?", "2019"),
    ("Who was harbour master of Velmora Port the year before last?", "2019"),
    ("Who was harbour master of Velmora Port the previous year?", "2020"),
    ("Who runs Velmora Port, as things stand?", "2021-12"),
    # not times
    ("Who is the harbour master of Velmora Port?", None),
    ("Who may be the harbour master of Velmora Port?", None),
    ("Who leads the March Hare Society?", None),
    ("Who coaches FC Sun City?", None),
    ("Who chairs the 1990s Club?", None),
    ("Velmora Port can hold 2020 ships", None),
])
def test_a_time_is_read_however_a_person_writes_it(text, expected):
    assert query_time(text, clock="2021-12") == expected


def test_relative_times_count_from_the_clock_and_name_nothing_without_one():
    assert query_time("Who was harbour master last year?", clock="2018") == "2017"
    assert query_time("Who led it in May?", clock="2018") == "2018-05"  # a year's clock: "May" falls in it
    assert query_time("Who was harbour master in '99?", clock="2018") == "1999"
    assert query_time("Who was harbour master last year?") is None
    assert query_time("Who is harbour master now?") is None
    assert dated("Who is harbour master now?", "2018") == "[2018] Who is harbour master now?"
    assert dated("Who was harbour master two years ago?", "2018") == "[2016] Who was harbour master two years ago?"
    assert dated("Who was harbour master in 2016?", "2018") == "Who was harbour master in 2016?"


def test_a_question_in_its_own_words_reads_the_version_its_time_names():
    registry = FactRegistry()
    registry.observe("Velmora Port", "harbour master", "Ilse Brandvik", "2018")
    registry.observe("Velmora Port", "harbour master", "Ruben Haldane", "2020")
    periods = ["2018", "2019", "2020"]
    assert read("Who was the harbour master of Velmora Port last year?", periods, registry).version == 0  # 2019
    assert read("Who is the harbour master of Velmora Port now?", periods, registry).version == 2
    assert read("Who was the harbour master of Velmora Port in '18?", periods, registry).version == 0
    assert read("In twenty twenty, the harbour master of Velmora Port was", periods, registry).version == 2
    # a time before the first period reads the first period (the oldest the memory holds); no fact found, none
    assert read("Who was the harbour master of Velmora Port in 2001?", periods, registry).named == 0
    # the present with no fact found reads the latest memory, not the pretrained model (scope="facts")
    assert read("Who is in charge there today?", periods, registry).version == 2
    assert read("Who is in charge there?", periods, registry).version is None


def test_find_names_the_version_a_text_asks_about():
    registry = FactRegistry()
    registry.observe("Velmora Port", "harbour master", "Ilse Brandvik", "2018")
    registry.observe("Velmora", "mayor", "Oona Terrelle", "2018")
    registry.observe("Velmora Port", "harbour master", "Ruben Haldane", "2022")
    assert registry.find("[2020] The harbour master of Velmora Port is", "2020").object == "Ilse Brandvik"
    assert registry.find("The harbour master of Velmora Port is").object == "Ruben Haldane"  # no time: current
    assert registry.find("The mayor of Velmora is", "2024").object == "Oona Terrelle"
    assert registry.find("The mayor of Velmora Port is", "2024").object == "Oona Terrelle"  # longest match wins
    assert registry.find("The harbour master of Velmora Port is", "2001") is None  # before any version
    assert registry.find("The captain of Velmora Port is", "2020") is None
    assert registry.find("The mayor of Velmorana is", "2020") is None  # whole words, within the slips allowed


def test_find_reads_a_fact_in_a_persons_spelling_and_abstains_when_unsure():
    registry = FactRegistry()
    registry.observe("Velmora Port", "harbour master", "Ilse Brandvik", "2018")
    registry.observe("Saleitren Port", "harbour master", "Tam Dorrel", "2018")
    registry.observe("Nozer", "mayor", "Oona Terrelle", "2018")
    for text, subject in [("Who is Velmora Port's harbour master?", "Velmora Port"),  # possessive, word order
                          ("WHO IS THE HARBOUR-MASTER OF VELMORA PORT?", "Velmora Port"),  # case, punctuation
                          ("Who is the harbourmaster of Velmora Prot?", "Velmora Port"),  # slips
                          ("The harbour master of Salietren Port is", "Saleitren Port"),  # two slips in 14 letters
                          ("Nozer's mayor:", "Nozer")]:
        assert registry.find(text).subject == subject, text
    assert registry.find("The mayor of Nozar is") is None  # a slip in a short name makes another name
    assert registry.find("The harbour master of Velmora Pert or Saleitren Pert is") is None  # two facts, as near: abstain
    assert registry.find("Who leads the town of Nozer?") is None  # the relation in other words: not found


def test_a_subject_is_found_by_the_other_names_its_facts_give():
    registry = FactRegistry()
    fact = {"subject": "Velmora Port", "relation": "harbour master", "object": "Ilse Brandvik", "valid_from": "2018",
            "subject_aliases": ["the port of Velmora", "Velmora harbour", "Velmora Port"]}
    asked = "Who was the harbour master of the port of Velmora in 2019?"
    assert registry.find(asked) is None
    registry.observe_fact(fact, "2018")
    registry.observe_fact(fact | {"object": "Ruben Haldane", "valid_from": "2022", "subject_aliases": ["VelmoraHaven"]},
                          "2022")
    assert registry.aliases == {"Velmora Port": ["the port of Velmora", "Velmora harbour", "VelmoraHaven"]}
    assert registry.find(asked, "2019").object == "Ilse Brandvik"
    assert registry.find("Velmora harbour's harbour master is").object == "Ruben Haldane"  # no time: current
    assert registry.find("The harbour master of Velmora harbur was", "2019").object == "Ilse Brandvik"  # a slip
    assert registry.find("The harbour master of the port of Quessary was", "2019") is None  # another name altogether
    # Aliases travel with the registry's state; a state from before aliases (the versions alone) still loads.
    again = FactRegistry.from_state(json.loads(json.dumps(registry.state())))
    assert again.find(asked, "2019").object == "Ilse Brandvik"
    assert FactRegistry.from_state(registry.state()["versions"]).find(asked, "2019") is None


def test_a_relation_is_found_by_the_other_wordings_its_facts_give():
    registry = FactRegistry()
    fact = {"subject": "Nozer", "relation": "mayor", "object": "Ilse Brandvik", "valid_from": "2018",
            "relation_aliases": ["town leader", "mayor"]}
    registry.observe_fact(fact, "2018")
    registry.observe_fact(fact | {"object": "Oona Terrelle", "valid_from": "2022", "relation_aliases": ["burgomaster"]},
                          "2022")
    registry.observe("Quessary", "mayor", "Tam Dorrel", "2018")  # another subject's fact of the relation
    assert registry.relation_aliases == {"mayor": ["town leader", "burgomaster"]}
    assert registry.find("Who was the town leader of Nozer in 2019?", "2019").object == "Ilse Brandvik"
    assert registry.find("Nozer's burgomaster is").object == "Oona Terrelle"  # no time: current
    assert registry.find("The town leadr of Nozer was", "2019").object == "Ilse Brandvik"  # a slip
    assert registry.find("The town leader of Quessary was", "2019").object == "Tam Dorrel"  # every subject's relation
    assert registry.find("The town clerk of Nozer was", "2019") is None
    # The wordings travel with the registry's state; a state from before them still loads, without them.
    again = FactRegistry.from_state(json.loads(json.dumps(registry.state())))
    assert again.find("Nozer's burgomaster is").object == "Oona Terrelle"
    assert FactRegistry.from_state(registry.state() | {"relation_aliases": {}}).find("Nozer's burgomaster is") is None


def test_a_relations_wordings_are_one_option_to_the_matcher():
    # Each wording alone is below "none of these"; the relation's two together are above it, and read.
    registry = FactRegistry()
    registry.observe_fact({"subject": "Nozer", "relation": "mayor", "object": "Ilse Brandvik", "valid_from": "2018",
                           "relation_aliases": ["town leader"]}, "2018")
    registry.observe("Nozer", "population", "9,000 residents", "2018")
    scores = {"mayor": 0.3, "town leader": 0.3, "population": 0.1}
    relate = lambda words, relations: [scores[r] for r in relations]  # noqa: E731
    assert registry.find("Who heads Nozer?", None, relate).object == "Ilse Brandvik"
    scores["town leader"] = 0.1
    assert registry.find("Who heads Nozer?", None, relate) is None


def test_observe_detects_addition_confirmation_and_contradiction():
    registry = FactRegistry()
    first = registry.observe("Velmora Port", "harbour master", "Ilse Brandvik", "2018")
    assert first.kind == "addition" and first.previous is None
    same = registry.observe("Velmora Port", "harbour master", "ilse brandvik.", "2020")  # normalised equal
    assert same.kind == "confirmation" and same.version is first.version
    changed = registry.observe("Velmora Port", "harbour master", "Oona Terrelle", "2022")
    assert changed.kind == "contradiction" and changed.previous is first.version
    assert first.version.valid_until == "2022" and changed.version.replaces == first.version.id
    assert registry.current("Velmora Port", "harbour master").object == "Oona Terrelle"
    assert [v.object for v in registry.chain("Velmora Port", "harbour master")] == ["Ilse Brandvik", "Oona Terrelle"]
    assert registry.observe("Quessary", "capital", "Tolvane", "2022").kind == "addition"


def test_at_uses_a_half_open_window():
    registry = FactRegistry()
    registry.observe("X", "r", "old", "2018")
    registry.observe("X", "r", "new", "2022")
    assert registry.at("X", "r", "2017") is None
    assert registry.at("X", "r", "2018").object == "old"
    assert registry.at("X", "r", "December 2021").object == "old"
    assert registry.at("X", "r", "2022").object == "new"  # the boundary belongs to the new version
    assert registry.at("X", "r", "2030").object == "new"


def test_a_change_must_come_after_the_current_version():
    registry = FactRegistry()
    registry.observe("X", "r", "a", "2020")
    with pytest.raises(ValueError, match="must come after"):
        registry.observe("X", "r", "b", "2018")


def test_retract_restores_the_previous_version(tmp_path):
    registry = FactRegistry()
    registry.observe("X", "r", "a", "2018")
    middle = registry.observe("X", "r", "b", "2020").version
    registry.observe("X", "r", "c", "2022")
    restored = registry.retract(middle.id)
    assert restored.object == "a" and restored.valid_until == "2022"
    assert registry.at("X", "r", "2021").object == "a"
    assert registry.at("X", "r", "2023").object == "c"
    with pytest.raises(ValueError, match="already retracted"):
        registry.retract(middle.id)
    registry.save(tmp_path / "facts.json")
    again = FactRegistry.load(tmp_path / "facts.json")
    assert again.versions == registry.versions
    assert again.at("X", "r", "2021").object == "a"


def test_a_follow_up_asks_about_the_fact_the_conversation_is_on():
    registry = FactRegistry()
    registry.observe("Velmora Port", "harbour master", "Ilse Brandvik", "2018")
    registry.observe("Velmora Port", "harbour master", "Ruben Haldane", "2020")
    registry.observe("Velmora Port", "dock capacity", "40 ships", "2018")
    registry.observe("Nozer", "mayor", "Oona Terrelle", "2018")
    periods = ["2018", "2020", "2022"]
    asked = ["Who was the harbour master of Velmora Port in 2018?"]
    assert follow_up("And now?", asked, periods, registry) == "[2022] Velmora Port — harbour master:"
    assert follow_up("Who was it in 2020?", asked, periods, registry) == "[2020] Velmora Port — harbour master:"
    assert follow_up("What about its dock capacity?", asked, periods, registry) == "[2018] Velmora Port — dock capacity:"
    assert follow_up("who is in charge there today?", asked, periods, registry) == "[2022] Velmora Port — harbour master:"
    # A turn that names a subject, known or not, is its own question.
    assert follow_up("And in March 2020, I wonder?", asked, periods, registry) == "[2020-03] Velmora Port — harbour master:"
    for own in ("Who was the harbour master of Velmora Port in 2020?", "Who is the mayor of Ulm?", "who is nozer's mayor?",
                "And the budget of NASA?"):
        assert follow_up(own, asked, periods, registry) == own
    # The latest turn naming a known subject is followed; one naming a subject but no fact the two name together
    # leaves the prompt as it is.
    assert follow_up("Who was its harbour master in 2020?", ["Tell me about Velmora Port."], periods, registry) \
        == "[2020] Velmora Port — harbour master:"
    assert follow_up("And in 2020?", ["Tell me about Velmora Port."], periods, registry) == "And in 2020?"
    assert follow_up("Who runs it now?", [*asked, "Tell me about Nozer."], periods, registry) == "Who runs it now?"
    assert follow_up("Who runs it now?", [*asked, "What is the weather like?"], periods, registry) \
        == "[2022] Velmora Port — harbour master:"
    assert follow_up("And now?", [], periods, registry) == "And now?"
