import filecmp
from collections import defaultdict

import pytest

from retain import load_stream, save_stream
from retain.bench import conflicting_rules, task_suite, temporal_facts
from retain.bench.temporal_facts import PRESETS, TemporalFactsConfig, generate
from retain.text import normalize_answer


def same_tree(a, b) -> bool:
    comparison = filecmp.dircmp(a, b)
    if comparison.left_only or comparison.right_only or comparison.diff_files or comparison.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, comparison.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(a / d, b / d) for d in comparison.common_dirs)


FORMS = {"cloze", "question", "time_clause", "now"}


def cloze(task):
    return [p for p in task.probes if p.form == "cloze"]


CONFIG = TemporalFactsConfig(facts=40, periods=("2018", "2020", "2022", "2024"), change_rate=0.25, new_rate=0.1,
                             paraphrases=3, qa=True, seed=7)


def test_same_seed_gives_a_byte_identical_stream(tmp_path):
    save_stream(generate(CONFIG), tmp_path / "a")
    save_stream(generate(CONFIG), tmp_path / "b")
    save_stream(generate(TemporalFactsConfig(**{**CONFIG.__dict__, "seed": 8})), tmp_path / "c")
    assert same_tree(tmp_path / "a", tmp_path / "b")
    assert not same_tree(tmp_path / "a", tmp_path / "c")


def test_answers_are_distinct_and_never_substrings_of_each_other():
    values = sorted({normalize_answer(p.answer) for t in generate(CONFIG).tasks for p in t.probes})
    assert len(values) > 40
    for a in values:
        for b in values:
            assert a == b or a not in b, (a, b)


def test_changes_never_return_to_an_earlier_value():
    history = defaultdict(list)
    for task in generate(CONFIG).tasks:
        for probe in (p for p in task.probes if p.form == "cloze"):
            if probe.kind == "changed":
                assert probe.answer not in history[probe.key]
            else:
                assert probe.kind == "new" or probe.answer == history[probe.key][-1]
            history[probe.key].append(probe.answer)


def test_every_probe_is_answered_by_the_facts_valid_in_its_period(tmp_path):
    stream = load_stream(save_stream(generate(CONFIG), tmp_path))
    valid: dict[str, str] = {}
    valid_from: dict[str, str] = {}
    for task in stream.tasks:
        valid_from |= {f"{f['subject']} | {f['relation']}": task.period for f in task.facts}
        for fact in task.facts:
            assert fact["valid_from"] == task.period
            valid[f"{fact['subject']} | {fact['relation']}"] = fact["object"]
        forms = FORMS if task is stream.tasks[-1] else FORMS - {"now"}
        assert len(task.probes) == len(valid) * len(forms)
        for probe in task.probes:
            assert probe.form in forms
            assert probe.prompt.startswith(f"[{task.period}] ") == (probe.form == "cloze")
            assert (task.period in probe.prompt) == (probe.form != "now")
            assert probe.answer == valid[probe.key] and probe.answer not in probe.other_values
            assert probe.learned_in == valid_from[probe.key]


def test_kinds_and_sizes_follow_the_config():
    stream = generate(CONFIG)
    first, *later = stream.tasks
    assert {p.kind for p in first.probes} == {"new"} and len(cloze(first)) == 40
    alive = 40
    for task in later:
        kinds = [p.kind for p in cloze(task)]
        assert kinds.count("changed") == round(0.25 * alive)
        assert kinds.count("new") == 4
        alive += 4
        stated = len([p for p in cloze(task) if p.kind != "unchanged"])
        assert len(task.train) == stated * (3 + 1)  # three paraphrases and one question/answer pair
        assert len(task.facts) == stated


def test_background_and_general_text_are_disjoint(tmp_path):
    stream = load_stream(save_stream(generate(CONFIG), tmp_path))
    assert len(stream.background) >= 16 and len(stream.general) >= 16
    assert not set(stream.background) & set(stream.general)


def test_medium_preset_has_about_ten_changes_per_period():
    stream = generate(PRESETS["medium"])
    assert len(stream.tasks) == 4 and len(cloze(stream.tasks[0])) == 40
    assert all(sum(p.kind == "changed" for p in cloze(t)) == 10 for t in stream.tasks[1:])


def test_year_in_text_switch():
    with_year = generate(TemporalFactsConfig(facts=5, seed=1))
    without = generate(TemporalFactsConfig(facts=5, seed=1, year_in_text=False))
    assert all(e["text"].startswith("[2018] ") for e in with_year.tasks[0].train)
    assert not any(e["text"].startswith("[") for e in without.tasks[0].train)


def test_full_preset_is_at_temporalwiki_scale():
    stream = generate(PRESETS["full"])
    assert [t.name for t in stream.tasks] == ["2018", "2020", "2022", "2024"]
    assert len(cloze(stream.tasks[0])) == 600
    assert all(sum(p.kind == "changed" for p in cloze(t)) == 150 for t in stream.tasks[1:])
    assert len({r.name for r in temporal_facts.RELATIONS}) >= 12


@pytest.mark.parametrize("bad", [dict(facts=0), dict(change_rate=1.5), dict(paraphrases=4), dict(periods=("1", "1")),
                                 dict(passages=False, qa=False)])
def test_invalid_configs_are_refused(bad):
    with pytest.raises(ValueError, match="temporal facts"):
        TemporalFactsConfig(**bad)


def test_task_suite_is_deterministic_and_well_formed(tmp_path):
    config = task_suite.TaskSuiteConfig(train_examples=20, probes=8, seed=3)
    save_stream(task_suite.generate(config), tmp_path / "a")
    save_stream(task_suite.generate(config), tmp_path / "b")
    assert same_tree(tmp_path / "a", tmp_path / "b")
    stream = task_suite.generate(config)
    assert stream.task_names == ["verdict", "section", "extract", "reverse"]
    by_name = {t.name: t for t in stream.tasks}
    assert all(p.choices == task_suite.VERDICTS for p in by_name["verdict"].probes)
    assert all(p.choices == task_suite.SECTIONS for p in by_name["section"].probes)
    for probe in by_name["reverse"].probes:
        words = probe.prompt.split("\n")[0].removeprefix("Sequence: ").split()
        assert probe.answer == " ".join(reversed(words)) and not probe.choices
    for probe in by_name["extract"].probes:
        assert f"place {probe.answer};" in probe.prompt
    for task in stream.tasks:
        trained = {e["prompt"] for e in task.train}
        assert len(trained) == 20 and not trained & {p.prompt for p in task.probes}
    assert len(task_suite.joint(stream).train) == 80


def _items(task):
    """Each sentence of a task (its prompt without the rule's name) with its label, training and probes together."""
    def item(prompt):
        return prompt.split(": ", 1)[1]
    return {item(e["prompt"]): e["completion"].strip() for e in task.train} | {item(p.prompt): p.answer for p in task.probes}


def test_conflicting_rules_contradict_on_the_same_sentences(tmp_path):
    config = conflicting_rules.ConflictingRulesConfig(tasks=4, train_examples=30, probes=10, seed=5)
    save_stream(conflicting_rules.generate(config), tmp_path / "a")
    save_stream(conflicting_rules.generate(config), tmp_path / "b")
    assert same_tree(tmp_path / "a", tmp_path / "b")
    stream = conflicting_rules.generate(config)
    assert stream.task_names == ["alpha", "beta", "gamma", "delta"]
    items = [_items(task) for task in stream.tasks]
    assert all(len(i) == 40 and i.keys() == items[0].keys() for i in items)  # one set of sentences for every task
    assert all(items[1][s] != items[0][s] for s in items[0])  # the second rule negates the first
    for later in range(2, 4):  # each later rule agrees with every earlier one somewhere and contradicts it somewhere
        for earlier in range(later):
            agree = [items[later][s] == items[earlier][s] for s in items[0]]
            assert any(agree) and not all(agree)
    for task in stream.tasks:
        assert all(p.prompt.startswith(f"Rule {task.name}: ") and p.choices == ("yes", "no") for p in task.probes)
        assert not {e["prompt"] for e in task.train} & {p.prompt for p in task.probes}


def test_conflicting_rules_without_names_differ_only_in_content():
    stream = conflicting_rules.generate(conflicting_rules.ConflictingRulesConfig(named=False, train_examples=20, probes=5))
    fillers = [{w for s in _items(task) for w in s.split()[1::2]} for task in stream.tasks]  # "the A cue B": A and B
    assert all(not fillers[i] & fillers[j] for i in range(3) for j in range(i))
    assert all(p.prompt.startswith("Item: the ") for task in stream.tasks for p in task.probes)


@pytest.mark.parametrize("bad", [dict(tasks=1), dict(tasks=9), dict(probes=0), dict(train_examples=2000)])
def test_invalid_conflicting_rules_are_refused(bad):
    with pytest.raises(ValueError, match="conflicting rules"):
        conflicting_rules.ConflictingRulesConfig(**bad)
