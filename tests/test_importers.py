"""Importers of the CASM benchmark's Synthetic TemporalWiki and of TemporalWiki, on invented files in their layouts."""

import json
import shutil
from pathlib import Path

import pytest

from retain import ContinualTrainer, build_method, load_stream
from retain.cli import main
from retain.evaluation import exact_match
from retain.fact_questions import WORDINGS, fact_questions
from retain.importers.casm import import_casm
from retain.importers.temporalwiki import import_temporalwiki
from retain.knowledge import FactRegistry
from retain.methods import METHODS
from retain.text import wording

FIXTURES = Path(__file__).parent / "fixtures"  # invented files in the datasets' layouts
CASM_DIR, TWIKI = FIXTURES / "casm-synthetic", FIXTURES / "temporalwiki"


@pytest.fixture
def casm_copy(tmp_path) -> Path:
    assert CASM_DIR.is_dir(), f"{CASM_DIR}: the invented CASM layout is missing"
    return Path(shutil.copytree(CASM_DIR, tmp_path / "casm"))


@pytest.fixture
def twiki_copy(tmp_path) -> Path:
    assert TWIKI.is_dir(), f"{TWIKI}: the invented TemporalWiki layout is missing"
    return Path(shutil.copytree(TWIKI, tmp_path / "twiki"))


def test_casm_import_makes_one_task_per_period_with_facts_and_keyed_probes(tmp_path, capsys):
    assert main(["import", "casm", str(CASM_DIR), "--output", str(tmp_path / "s")]) == 0
    assert "4 tasks (2018, 2020, 2022, 2024), 5 facts" in capsys.readouterr().out
    stream = load_stream(tmp_path / "s")
    assert stream.task_names == ["2018", "2020", "2022", "2024"] and stream.background and stream.general
    task = stream.tasks[1]
    assert task.train[0]["text"].startswith("The tram count of Saltmere Tram Company stands at 22 trams")
    trams = next(f for f in task.facts if f["relation"] == "tram count")
    assert (trams["object"], trams["valid_from"]) == ("22 trams", "2018")  # unchanged since 2018
    signal = [p for p in task.probes if p.key == "Kestrel Head Beacon | signal colour"]
    assert {p.form for p in signal} == {"cloze", "question", "time_clause"}
    assert {(p.kind, p.answer, p.learned_in) for p in signal} == {("changed", "blue", "2020")}
    assert set(signal[0].other_values) == {"violet", "red"}
    assert {p.kind for p in stream.tasks[0].probes} == {"new"}
    assert {p.kind for p in stream.tasks[2].probes} == {"changed", "unchanged"}


def test_casm_facts_cut_is_consistent_across_files(tmp_path):
    stream, _ = import_casm(CASM_DIR, facts=2, passages="both")
    for task in stream.tasks:
        assert [f["subject"] for f in task.facts] == ["Saltmere Tram Company", "Kestrel Head Beacon"]
        assert len(task.train) == 4  # a template and an augmented passage per fact
        assert {p.key.split(" | ")[0] for p in task.probes} <= {"Saltmere Tram Company", "Kestrel Head Beacon"}
    template, _ = import_casm(CASM_DIR, passages="template")
    assert template.tasks[0].train[0]["text"] == "In 2018, the tram count of Saltmere Tram Company is 22 trams."


def test_casm_probes_in_the_template_family_both_halves_and_now_last(tmp_path, capsys):
    assert main(["import", "casm", str(CASM_DIR), "--output", str(tmp_path / "s"), "--probe-templates", "4"]) == 0
    stream = load_stream(tmp_path / "s")
    signal = [p for p in stream.tasks[1].probes if p.key == "Kestrel Head Beacon | signal colour"]
    forms = [p.form for p in signal]
    assert forms[0] == "cloze" and len(forms) == 5  # the dataset's own prompt and four templates
    assert sum(f.startswith("dev/") for f in forms) == sum(f.startswith("test/") for f in forms) == 2
    assert all("signal colour of Kestrel Head Beacon" in p.prompt or "Kestrel Head Beacon's signal colour" in p.prompt
               or p.form.startswith(("dev/upper", "test/upper", "dev/spaced", "test/spaced")) for p in signal[1:])
    assert {(p.answer, p.learned_in) for p in signal} == {("blue", "2020")}
    every = {p.form for task in stream.tasks for p in task.probes}
    assert not any("/alt-" in f or f.endswith("-alt") for f in every)  # no relation in other words to ask by
    now = {p.form for task in stream.tasks for p in task.probes if "/now-" in p.form}
    assert now and now <= {p.form for p in stream.tasks[-1].probes}
    # No template is a training text's wording, even near (its time out, case and articles aside): neither a
    # passage's nor a fact question's.
    both, _ = import_casm(CASM_DIR, passages="both", templates=32)
    texts = [f" {wording(' '.join(e.values()))} " for task in both.tasks
             for e in [*task.train, *fact_questions(task.facts, task.period, wordings=len(WORDINGS))]]
    templated = {p.prompt for task in both.tasks for p in task.probes if p.form != "cloze"}
    assert len(templated) > 100 and not [p for p in templated if any(f" {wording(p)} " in t for t in texts)]
    assert main(["import", "casm", str(CASM_DIR), "--output", str(tmp_path / "t"), "--probe-templates", "33"]) == 2
    assert "--probe-templates: expected 0 to 32" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_casm_older_folder_name_gives_the_same_stream(casm_copy):
    newer, _ = import_casm(casm_copy)
    (casm_copy / "augmented" / "synthetic").rename(casm_copy / "augmented_synthetic")
    older, _ = import_casm(casm_copy)
    assert [t.train for t in older.tasks] == [t.train for t in newer.tasks]


def test_casm_renamed_entity_rows_are_kept_and_misaligned_rows_dropped(casm_copy):
    csv = casm_copy / "augmented" / "synthetic" / "2020.csv"
    rows = csv.read_text().splitlines()
    rows[2] = '"The old signal on the headland shines blue these days."'  # Kestrel Head Beacon, renamed
    rows[3] = '"Nothing here is about glass or glaziers."'  # names neither the entity nor Nell Ambry
    csv.write_text("\n".join(rows) + "\n")
    stream, report = import_casm(casm_copy)
    texts = [e["text"] for e in stream.tasks[1].train]
    assert rows[2].strip('"') in texts and rows[3].strip('"') not in texts and len(texts) == 4
    assert report.kept == {"passages that name their entity differently but state its value (2020.csv)": 1}
    assert report.dropped == {"passages that name neither their fact's entity nor its value (2020.csv)": 1}
    assert "dropped 1: passages that name neither" in report.text()


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "probes.json").unlink(), r"probes.json: file not found"),
    (lambda d: (d / "probes.json").write_text('{\n "2018": {\n  "changed": [,]\n }\n}'), r"probes.json:3: invalid JSON"),
    (lambda d: (d / "synthetic_facts_raw.json").write_bytes(b'[{"entity": "\xff"}]'), r"synthetic_facts_raw.json: not UTF-8"),
    (lambda d: (d / "augmented" / "synthetic" / "2022.csv").write_text('"passage"\n"x"\n'),
     r"2022.csv:1: expected columns \['text'\], found \['passage'\]"),
    (lambda d: (d / "augmented" / "synthetic" / "2024.csv").write_text('"text"\n"Only one row."\n'),
     r"2024.csv: 1 passages for 2024, fewer than the 5 facts"),
    (lambda d: (d / "synthetic_facts_raw.json").write_text('[{"entity": "A", "relation": "r", "value_2018": "x"}, '
                                                           '{"entity": "B", "relation": "r", "value_2019": "y"}]'),
     r"synthetic_facts_raw.json: fact 1: has values for \['2019'\], the first fact for \['2018'\]"),
    (lambda d: shutil.rmtree(d / "augmented"), r"no augmented passages \(looked for augmented/synthetic and augmented_synthetic/\)"),
], ids=["missing file", "bad JSON", "not UTF-8", "wrong column", "too few rows", "periods differ", "no CSV folder"])
def test_casm_malformed_input_gets_one_message_naming_the_file(casm_copy, tmp_path, capsys, breakage, message):
    breakage(casm_copy)
    assert main(["import", "casm", str(casm_copy), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retain import: error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing written


def test_temporalwiki_import_keys_months_and_marks_multi_valued_relations(tmp_path, capsys):
    assert main(["import", "temporalwiki", "--diffsets", str(TWIKI / "TWiki_Diffsets"), "--probes",
                 str(TWIKI / "twiki_probes"), "--output", str(tmp_path / "s")]) == 0
    assert "2021-09: 2 passages to train on, 2 of them stating one of 2 changed facts" in capsys.readouterr().out
    stream = load_stream(tmp_path / "s")
    assert stream.task_names == ["2021-09", "2021-10", "2021-11", "2021-12"]
    september = stream.tasks[0]
    assert {(f["relation"], f.get("multi_valued")) for f in september.facts} == {("has part", True), ("occupation", True)}
    changed = [p for p in september.probes if p.kind == "changed" and p.form == "cloze"]
    assert {p.key for p in changed} == {"Halden Metro | has part | Ostra Station", "Ines Varro | occupation | glassblower"}
    december = [p for p in stream.tasks[3].probes if p.form == "cloze" and p.kind == "changed"]
    league = next(p for p in december if p.key == "Rask United | league")
    assert (league.answer, league.other_values) == ("Division Two North", ("Coastal First",))  # single-valued: replaced
    question = next(p for p in stream.tasks[1].probes if p.form == "question")
    assert "in October 2021?" in question.prompt
    assert all(p.kind == "unchanged" for p in stream.tasks[0].probes if "Norvania" == p.answer)


def test_temporalwiki_drops_triples_no_passage_states_and_samples_per_period(twiki_copy):
    changed = twiki_copy / "twiki_probes" / "0901-1001_changed.csv"
    changed.write_text(changed.read_text() + "Petra Haukan,award received,Order of the Heron\n")
    stream, report = import_temporalwiki(twiki_copy / "TWiki_Diffsets", twiki_copy / "twiki_probes")
    assert report.dropped == {"changed triples no passage of the month states (0901-1001_changed.csv)": 1}
    assert "Order of the Heron" not in {f["object"] for f in stream.tasks[1].facts}
    one, _ = import_temporalwiki(twiki_copy / "TWiki_Diffsets", twiki_copy / "twiki_probes", per_period=1, seed=3)
    assert all(len(t.facts) == 1 and len(t.train) == 1 for t in one.tasks)
    again, _ = import_temporalwiki(twiki_copy / "TWiki_Diffsets", twiki_copy / "twiki_probes", per_period=1, seed=3)
    assert [t.facts for t in again.tasks] == [t.facts for t in one.tasks]


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "TWiki_Diffsets" / "oct_nov.csv").unlink(), r"oct_nov.csv: file not found"),
    (lambda d: (d / "twiki_probes" / "0801-0901_unchanged.csv").write_text("subject,object\nA,B\n"),
     r"0801-0901_unchanged.csv:1: expected columns \['subject', 'relation', 'object'\]"),
    (lambda d: (d / "twiki_probes" / "1001-1101_changed.csv").write_text("subject,relation,object\nA,,B\n"),
     r"1001-1101_changed.csv:2: empty 'relation'"),
    (lambda d: (d / "TWiki_Diffsets" / "nov_dec.csv").write_text('"text"\n"Nothing about anyone."\n'),
     r"1101-1201_changed.csv: no changed triple is stated by a passage of .*nov_dec.csv"),
], ids=["missing file", "wrong columns", "empty field", "nothing to learn"])
def test_temporalwiki_malformed_input_gets_one_message_naming_the_file(twiki_copy, tmp_path, capsys, breakage, message):
    breakage(twiki_copy)
    assert main(["import", "temporalwiki", "--diffsets", str(twiki_copy / "TWiki_Diffsets"), "--probes",
                 str(twiki_copy / "twiki_probes"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert __import__("re").search(message, err) and len(err.strip().splitlines()) == 1, err


def test_import_never_writes_into_a_directory_that_holds_files(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["import", "casm", str(CASM_DIR), "--output", str(tmp_path / "out")]) == 2
    assert "already exists and is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_registry_keeps_every_value_of_a_multi_valued_relation():
    registry = FactRegistry()
    registry.observe("Halden Metro", "has part", "Ostra Station", "2021-09", multi_valued=True)
    seen = registry.observe("Halden Metro", "has part", "Brenn Quay Station", "2021-11", multi_valued=True)
    assert seen.kind == "addition" and seen.previous is None
    assert [v.valid_until for v in registry.chain("Halden Metro", "has part")] == [None, None]
    assert registry.current("Halden Metro", "has part").object == "Brenn Quay Station"
    assert registry.at("Halden Metro", "has part", "2021-10").object == "Ostra Station"
    assert registry.observe("Halden Metro", "has part", "ostra station", "2021-12", multi_valued=True).kind == "confirmation"
    single = FactRegistry()
    single.observe("Rask United", "league", "Coastal First", "2021-11")
    assert single.observe("Rask United", "league", "Division Two North", "2021-12").kind == "contradiction"


def test_casm_answers_a_multi_valued_relation_with_the_newest_value_and_keeps_the_old(
        tmp_path, make_model, tokenizer, training_args):
    stream, _ = import_temporalwiki(TWIKI / "TWiki_Diffsets", TWIKI / "twiki_probes")
    method = build_method("casm", {"memory": "feed_forward", "k": "8", "top_t": "8", "lr": "10"})
    trainer = ContinualTrainer(make_model(), training_args(num_train_epochs=1), method=method, processing_class=tokenizer)
    stream.background = ["Sound travels faster through water than through air.", "Bread rises when yeast feeds on sugar."]
    trainer.fit(stream)
    parts = method.registry.chain("Halden Metro", "has part")
    assert [(v.object, v.valid_until) for v in parts] == [("Ostra Station", None), ("Brenn Quay Station", None)]
    assert method.registry.find("[2021-12] The has part of Halden Metro is", "2021-12").object == "Brenn Quay Station"
    named, version, text, _ = method.read("[2021-12] The has part of Halden Metro is")
    assert method.periods[version] == "2021-11" and text.startswith("[2021-11] ")  # read where the newest was learned
    assert method.registry.current("Rask United", "league").object == "Division Two North"
    assert method.registry.chain("Rask United", "league")[0].valid_until == "2021-12"  # single-valued: closed


@pytest.mark.parametrize("source", ["casm", "temporalwiki"])
def test_every_method_trains_on_every_importers_stream(tmp_path, source):
    """A stream that imports but cannot train is caught here: every registered method runs through each importer's
    output (one epoch, the tiny model)."""
    sources = {"casm": ["casm", str(CASM_DIR), "--facts", "3"],
               "temporalwiki": ["temporalwiki", "--diffsets", str(TWIKI / "TWiki_Diffsets"), "--probes",
                                str(TWIKI / "twiki_probes")]}
    assert main(["import", *sources[source], "--output", str(tmp_path / "s")]) == 0
    methods = sorted(METHODS)
    assert main(["compare", "--methods", ",".join(methods), "--stream", str(tmp_path / "s"), "--output",
                 str(tmp_path / "cmp"), "--model", "tiny", "--num_train_epochs", "1", "--max_new_tokens", "2",
                 "--disable_tqdm", "true", "--method-arg", "casm.k=8", "casm.top_t=8", "smf.k=8", "smf.top_t=8",
                 "aria.adapter_dim=4", "aria.fisher_samples=2", "ewc.fisher_samples=2"]) == 0
    for method in methods:
        result = json.loads((tmp_path / "cmp" / method / "result.json").read_text())
        assert result["complete"] and set(result["summary"]["by_form"]) == {"cloze", "question", "time_clause"}, method


def test_a_pair_stated_with_several_objects_in_one_month_is_a_set_everywhere(twiki_copy, tmp_path, capsys):
    """`participant` is on no list: the data states two participants of one competition in one month, so the pair
    holds a set in the facts, the registry, CASM's training and the probes' scoring; nothing is raised."""
    with (twiki_copy / "twiki_probes" / "1001-1101_changed.csv").open("a") as handle:
        handle.write("Velmora Cup,participant,Ada Brenn\nVelmora Cup,participant,Osk Lind\n")
    with (twiki_copy / "TWiki_Diffsets" / "oct_nov.csv").open("a") as handle:
        handle.write('"Velmora Cup: participant is Ada Brenn."\n"Velmora Cup: participant is Osk Lind."\n')
    assert main(["import", "temporalwiki", "--diffsets", str(twiki_copy / "TWiki_Diffsets"), "--probes",
                 str(twiki_copy / "twiki_probes"), "--output", str(tmp_path / "s")]) == 0
    stream = load_stream(tmp_path / "s")
    november = stream.tasks[2]
    cup = [f for f in november.facts if f["subject"] == "Velmora Cup"]
    assert [f.get("multi_valued") for f in cup] == [True, True]
    probes = {p.answer: p for p in november.probes if p.key.startswith("Velmora Cup") and p.form == "cloze"}
    assert probes["Ada Brenn"].aliases == ("Osk Lind",) and probes["Osk Lind"].aliases == ("Ada Brenn",)
    assert exact_match("Osk Lind", [probes["Ada Brenn"].answer, *probes["Ada Brenn"].aliases])  # any member is right
    registry = FactRegistry()
    for task in stream.tasks:
        assert None not in registry.observe_facts(task.facts, task.period)
    assert {v.object for v in registry.versions if v.subject == "Velmora Cup" and v.valid_until is None} == \
        {"Ada Brenn", "Osk Lind"}
    assert main(["run", "--method", "casm", "--stream", str(tmp_path / "s"), "--output", str(tmp_path / "run"),
                 "--model", "tiny", "--num_train_epochs", "1", "--max_new_tokens", "4", "--disable_tqdm", "true",
                 "--method-arg", "k=8", "top_t=8"]) == 0
    timings = json.loads((tmp_path / "run" / "result.json").read_text())["timings"]
    assert [t["facts_unplaced"] for t in timings] == [0, 0, 0, 0]


def test_the_registry_takes_a_periods_several_objects_as_a_set_and_counts_what_it_cannot_place():
    registry = FactRegistry()
    facts = [{"subject": "Chopin Competition", "relation": "participant", "object": o} for o in ("Ana", "Bo")]
    assert [o.kind for o in registry.observe_facts(facts, "2021-11")] == ["addition", "addition"]
    assert registry.observe("Chopin Competition", "participant", "Cy", "2021-12").kind == "addition"  # still a set
    assert len([v for v in registry.versions if v.valid_until is None]) == 3
    registry.observe("Nozer", "mayor", "Ana", "2020")
    late = [{"subject": "Nozer", "relation": "mayor", "object": "Bo", "valid_from": "2019"}]  # before the current start
    assert registry.observe_facts(late, "2021") == [None]  # counted by the caller, not raised
    assert registry.current("Nozer", "mayor").object == "Ana"


def test_a_subject_is_found_without_its_wikidata_disambiguator(twiki_copy, tmp_path):
    """Wikidata labels people "Wu Qiang (born 1966)"; a passage says "Wu Qiang": the statement is kept (measured on
    the real Sep→Oct 2021 month: 5 of its 10 such subjects), and the fact and probes keep Wikidata's label."""
    with (twiki_copy / "twiki_probes" / "0901-1001_changed.csv").open("a") as handle:
        handle.write("Orla Senn (born 1966),occupation,ferrywright\nOrla Senn (born 1971),occupation,cartwright\n")
    with (twiki_copy / "TWiki_Diffsets" / "sep_oct.csv").open("a") as handle:
        handle.write('"Orla Senn is a ferrywright on the coast."\n')
    stream, report = import_temporalwiki(twiki_copy / "TWiki_Diffsets", twiki_copy / "twiki_probes")
    october = {f["subject"]: f["object"] for f in stream.tasks[1].facts}
    assert october["Orla Senn (born 1966)"] == "ferrywright" and "Orla Senn (born 1971)" not in october
    assert any(p.prompt.startswith("[2021-10] The occupation of Orla Senn (born 1966)") for p in stream.tasks[1].probes)
