from collections import Counter
from dataclasses import replace

import pytest

from retain.bench.probe_templates import TEMPLATES
from retain.bench.temporal_facts import TemporalFactsConfig, generate
from retain.evaluation import ProbeScore
from retain.fact_questions import fact_questions
from retain.result import EvalRow, RunResult
from retain.text import query_time
from test_fair import trained_on

CONFIG = TemporalFactsConfig(facts=28, periods=("2018", "2020", "2022"), change_rate=0.3, qa=True, probe_templates=4)
STYLES = ("q-", "s-", "alt-", "lower-", "upper-", "spaced-", "now-")


def test_the_family_has_forty_templates_split_by_template_with_every_style_in_each_half():
    assert len(TEMPLATES) >= 40 and len({t.name for t in TEMPLATES}) == len(TEMPLATES)
    halves = Counter(t.half for t in TEMPLATES)
    assert halves["dev"] >= 20 and halves["test"] >= 20
    for half in ("dev", "test"):
        names = [t.name for t in TEMPLATES if t.half == half]
        assert {style for style in STYLES if any(n.startswith(style) for n in names)} == set(STYLES), half


def test_each_fact_and_period_is_asked_in_dev_and_test_templates_and_now_only_at_the_end():
    stream = generate(CONFIG)
    for task in stream.tasks:
        last = task is stream.tasks[-1]
        per_fact = Counter((p.key, p.form.split("/")[0]) for p in task.probes)
        assert set(per_fact.values()) == {4 if last else 2}  # 2 of each half as of the period, 2 more about now
        present = [p for p in task.probes if p.form.split("/")[1].startswith("now-")]
        assert bool(present) == last
        # Every templated probe names the period it asks about, or the present (read at the last period).
        for probe in task.probes:
            assert probe in present or query_time(probe.prompt, stream.tasks[-1].period) == task.period, probe.prompt
    drawn = Counter(p.form for t in stream.tasks for p in t.probes)
    assert len(drawn) == len(TEMPLATES)  # the rotation reaches every template
    assert generate(CONFIG).tasks == stream.tasks  # deterministic


def test_no_template_is_a_training_wording_or_a_near_copy_of_one():
    stream = generate(replace(CONFIG, probe_templates=len([t for t in TEMPLATES if not t.present])))
    for task in stream.tasks:
        texts = [" ".join(e.values()) for e in task.train + fact_questions(task.facts, task.period)]
        for probe in task.probes:
            assert not trained_on(probe.prompt, texts), probe.prompt


def test_too_many_templates_is_a_config_error():
    with pytest.raises(ValueError, match="probe_templates"):
        TemporalFactsConfig(probe_templates=len(TEMPLATES))


def test_summary_reports_every_template_and_each_half_as_a_whole():
    stream = generate(replace(CONFIG, facts=6))
    probes = [p for t in stream.tasks for p in t.probes]
    # Right on every dev probe, wrong on every test one: each half's score says so, and so does each template's.
    scores = [ProbeScore("", float(p.form.startswith("dev/")), 0.0) for p in probes]
    rows = [EvalRow.from_scores(label, stream.tasks, scores, set()) for label in ["initial", *stream.task_names]]
    summary = RunResult("casm", "tiny", 0, tasks=stream.task_names, rows=rows).summary()
    assert summary["by_form"]["dev/*"]["plasticity"] == 1.0 and summary["by_form"]["test/*"]["plasticity"] == 0.0
    assert summary["by_form"]["dev/*"]["historical"] == 1.0 and summary["by_form"]["test/*"]["historical"] == 0.0
    templates = {form for form in summary["by_form"] if not form.endswith("/*")}
    assert templates == {p.form for p in probes}
    assert all(summary["by_form"][form]["acc"] == float(form.startswith("dev/")) for form in templates)
    # Historical per template counts every earlier probe of a changed fact, its current answer asked in any template.
    now = {p.key: p.answer for p in stream.tasks[-1].probes}
    changed = {p.form for t in stream.tasks[:-1] for p in t.probes if p.answer != now[p.key]}
    assert changed and {form for form in templates if summary["by_form"][form]["historical"] is not None} == changed
