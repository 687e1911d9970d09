import pytest

from retain.knowledge import FactRegistry
from retain.text import at_time, query_time, time_key


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
    ("as of March 2021, the harbour master of Velmora Port is", "March 2021"),
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
])
def test_at_time_replaces_the_time_query_time_reads_or_names_one(text, expected):
    assert at_time(text, "2018") == expected


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
    assert registry.find("The mayor of Velmoran is", "2020") is None  # whole words only


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
