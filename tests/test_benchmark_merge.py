"""benchmarks/temporal.py --merge: one report from runs made apart, only when they were made alike, with every run's
machine kept through merges of merges."""

import json
import runpy
import sys
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "temporal.py"


def run(plasticity):
    scores = {"plasticity": plasticity, "stability": 0.5, "historical": 0.25}
    return {"summary": {**scores, "acc": 0.5, "routing_accuracy": None, "by_form": {"cloze": scores},
                        "general_ppl_change": 1.0},
            "speed": {"train_seconds": 10.0, "seconds_per_step": 0.1}, "timings": [{"train_tokens": 100}]}


def report(path, runs, machine, **settings):
    """A report as the script writes it for one (seed, method) run or several."""
    body = {"benchmark": "temporal", "preset": "medium", "model": "m", "epochs": 8, "batch_size": 8, "same_data": "-",
            "machine": machine, "per_seed": runs} | settings
    path.write_text(json.dumps(body))
    return path


def merge(tmp_path, monkeypatch, *paths, methods="full_ft,casm"):
    """The script run as `python benchmarks/temporal.py --merge …` would run it, in this process (no second import of
    torch and transformers): its exit code, stderr and merged report."""
    out = tmp_path / "merged.json"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--merge", *map(str, paths), "--methods", methods, "--output", str(out)])
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    stderr, code = StringIO(), 0
    with redirect_stderr(stderr):
        try:
            runpy.run_path(str(SCRIPT), run_name="__main__")
        except SystemExit as exit_:  # as the interpreter would: a message goes to stderr with exit status 1
            code = exit_.code if isinstance(exit_.code, int) else 1
            if not isinstance(exit_.code, int):
                print(exit_.code, file=sys.stderr)
    done = SimpleNamespace(returncode=code, stderr=stderr.getvalue())
    return done, (json.loads(out.read_text()) if code == 0 else None)


def test_merging_into_a_merged_report_keeps_every_runs_machine(tmp_path, monkeypatch):
    a = report(tmp_path / "a.json", {"0": {"full_ft": run(1.0)}}, "gpu", fact_questions=6)
    b = report(tmp_path / "b.json", {"0": {"casm": run(0.5)}}, "cpu", fact_questions=6)
    done, first = merge(tmp_path, monkeypatch, a, b)
    assert done.returncode == 0, done.stderr
    (tmp_path / "first.json").write_text(json.dumps(first))
    c = report(tmp_path / "c.json", {"1": {"casm": run(0.7)}}, "cpu2", fact_questions=6)
    done, second = merge(tmp_path, monkeypatch, tmp_path / "first.json", c)
    assert done.returncode == 0, done.stderr
    assert [(s["file"], s["machine"], s["methods"]) for s in second["merged_from"]] == [
        ("a.json", "gpu", ["full_ft"]), ("b.json", "cpu", ["casm"]), ("c.json", "cpu2", ["casm"])]
    assert second["seeds"] == [0, 1] and second["fact_questions"] == 6
    casm = second["mean_sd"]["casm"]["plasticity"]
    assert casm["n"] == 2 and abs(casm["mean"] - 0.6) < 1e-9 and abs(casm["sd"] - 0.2 ** 0.5 / 10 ** 0.5) < 1e-9
    done, only = merge(tmp_path, monkeypatch, tmp_path / "first.json", c, methods="casm")
    assert [s["file"] for s in only["merged_from"]] == ["b.json", "c.json"]


def test_runs_made_differently_or_twice_are_refused(tmp_path, monkeypatch):
    four = report(tmp_path / "four.json", {"0": {"casm": run(0.5)}}, "cpu")  # made before wordings were recorded: 4
    six = report(tmp_path / "six.json", {"1": {"casm": run(0.5)}}, "cpu", fact_questions=6)
    done, _ = merge(tmp_path, monkeypatch, four, six)
    assert done.returncode != 0 and "different settings" in done.stderr
    again = report(tmp_path / "again.json", {"1": {"casm": run(0.9)}}, "cpu", fact_questions=6)
    done, _ = merge(tmp_path, monkeypatch, six, again)
    assert done.returncode != 0 and "seed 1 of casm is in two reports" in done.stderr
    templated = report(tmp_path / "templated.json", {"2": {"casm": run(0.5)}}, "cpu", fact_questions=6, probe_templates=4)
    done, _ = merge(tmp_path, monkeypatch, six, templated)  # asked in other probes
    assert done.returncode != 0 and "different settings" in done.stderr
    done, merged = merge(tmp_path, monkeypatch, templated, report(tmp_path / "t3.json", {"3": {"casm": run(0.7)}}, "cpu",
                                                                    fact_questions=6, probe_templates=4))
    assert done.returncode == 0 and merged["probe_templates"] == 4 and merged["seeds"] == [2, 3]
    person = report(tmp_path / "person.json", {"4": {"casm": run(0.5)}}, "cpu", fact_questions=6, probe_templates=4,
                    person_wordings=True)
    done, _ = merge(tmp_path, monkeypatch, templated, person)  # asked in a person's words too
    assert done.returncode != 0 and "different settings" in done.stderr
    done, _ = merge(tmp_path, monkeypatch, six, methods="snapshot")  # what --methods names, none of them ran
    assert done.returncode != 0 and "names none of the reports' methods (casm)" in done.stderr


def test_person_wordings_probe_each_fact_with_its_probes_answer(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from relations import PERSON_WORDINGS
    from temporal import add_person_probes

    from retain.bench.temporal_facts import PRESETS, generate
    from retain.stream import load_stream, save_stream

    save_stream(generate(PRESETS["small"]), tmp_path)
    before = load_stream(tmp_path)
    add_person_probes(tmp_path)
    after = load_stream(tmp_path)
    for old, new, period in zip(before.tasks, after.tasks, [t.period for t in before.tasks]):
        assert new.probes[: len(old.probes)] == old.probes
        added = new.probes[len(old.probes):]
        first = {p.key: p for p in reversed(old.probes)}
        now = new is after.tasks[-1]
        assert len(added) == sum(len([t for t in PERSON_WORDINGS[k.split(" | ")[1]] if now or "{t}" in t]) for k in first)
        for probe in added:
            assert (probe.answer, probe.learned_in, probe.other_values) == (first[probe.key].answer,
                                                                           first[probe.key].learned_in,
                                                                           first[probe.key].other_values)
            assert (period in probe.prompt) == (probe.form == "person/as-of")
            assert not any(probe.prompt in example["text"] for example in new.train)


def test_the_temporalwiki_benchmark_runs_every_seed_on_the_importers_own_sample(tmp_path, monkeypatch):
    """benchmarks/temporalwiki.py on the tests' TemporalWiki fixture and the tiny model: each seed imports its own
    sample, every method trains on it, and the report keeps what the importer kept and dropped, per seed."""
    script, fixture, out = SCRIPT.parent / "temporalwiki.py", Path(__file__).parent / "fixtures" / "temporalwiki", tmp_path / "tw.json"
    monkeypatch.setattr(sys, "argv", [str(script), "--diffsets", str(fixture / "TWiki_Diffsets"), "--probes",
                                      str(fixture / "twiki_probes"), "--per-period", "2", "--seeds", "0,1", "--methods",
                                      "full_ft,rag", "--model", "tiny", "--epochs", "1", "--fact-questions", "1",
                                      "--runs", str(tmp_path / "runs"), "--output", str(out)])
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    runpy.run_path(str(script), run_name="__main__")
    report = json.loads(out.read_text())
    assert report["seeds"] == [0, 1] and set(report["per_seed"]["1"]) == {"full_ft", "rag"}
    assert all(len(report["imported"][seed]["lines"]) == 5 and "dropped" in report["imported"][seed] for seed in ("0", "1"))
    assert report["mean_sd"]["full_ft"]["plasticity"]["n"] == 2 and "cloze" in report["mean_sd"]["rag"]["by_form"]
    assert not (tmp_path / "runs").exists()  # the run directories go once the JSON is written


def test_the_conflicting_rules_benchmark_scores_aria_against_the_joint_bound_and_resumes(tmp_path, monkeypatch):
    """benchmarks/conflicting.py on the tiny model: full_ft and the aria variants per seed with the joint bound; a
    --resume with one more variant trains only that variant and keeps the rest as they were."""
    script, out, runs = SCRIPT.parent / "conflicting.py", tmp_path / "c.json", tmp_path / "runs"
    argv = [str(script), "--model", "tiny", "--seeds", "0", "--epochs", "1", "--train-examples", "8", "--probes", "4",
            "--runs", str(runs), "--output", str(out)]
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(script), run_name="__main__")
    first = json.loads(out.read_text())
    assert set(first["summary"]) == {"full_ft", "aria", "aria_no_conflict", "aria_isolated", "joint"}
    iso, aria = (first["per_seed"]["0"]["methods"][m]["timings"] for m in ("aria_isolated", "aria_no_conflict"))
    assert iso[0]["trainable_parameters"] == aria[0]["trainable_parameters"]  # the first task trains the shared pathways
    counts = [t["trainable_parameters"] for t in iso]  # then, isolated, each task's adapter alone
    assert counts[1] == counts[2] < counts[0] / 4 and all(t["trainable_parameters"] == counts[0] for t in aria)
    with pytest.raises(SystemExit) as bad:  # an unknown method is an option error before anything trains
        monkeypatch.setattr(sys, "argv", [*argv, "--methods", "full_ft,arai"])
        runpy.run_path(str(script), run_name="__main__")
    assert bad.value.code == 2
    assert not list(runs.glob("seed-0/compare/*/checkpoints")) and not (runs / "seed-0" / "joint").exists()
    kept = (runs / "seed-0" / "compare" / "aria" / "result.json").stat().st_mtime_ns
    monkeypatch.setattr(sys, "argv", [*argv, "--resume", "--variants", "aria_r4:shared_tasks=1,fast_rank=4"])
    runpy.run_path(str(script), run_name="__main__")
    second = json.loads(out.read_text())
    assert (runs / "seed-0" / "compare" / "aria" / "result.json").stat().st_mtime_ns == kept
    assert second["per_seed"]["0"]["joint"] == first["per_seed"]["0"]["joint"]
    assert second["per_seed"]["0"]["methods"]["aria_r4"]["method_args"] == {"shared_tasks": "1", "fast_rank": "4"}
    sizes = second["parameters"]  # the full-copy fast pathway adds more than a rank-4 one; full_ft adds nothing
    assert sizes["full_ft"]["added"] == 0 < sizes["aria_r4"]["added"] < sizes["aria"]["added"] == sizes["aria_isolated"]["added"]
    joint_only = tmp_path / "j.json"  # the joint bound alone, trained longer: nothing else trains, nothing is overwritten
    monkeypatch.setattr(sys, "argv", [*argv[:-2], "--output", str(joint_only), "--joint-only", "--joint-epochs", "2"])
    runpy.run_path(str(script), run_name="__main__")
    longer = json.loads(joint_only.read_text())
    assert set(longer["summary"]) == {"joint"} and longer["joint_epochs"] == 2 and second["joint_epochs"] == 1
    assert (runs / "seed-0" / "compare" / "aria" / "result.json").stat().st_mtime_ns == kept
    assert not (runs / "seed-0" / "joint").exists() and json.loads(out.read_text()) == second
    subset = tmp_path / "s.json"  # --methods: only those are reported, though --runs holds more; nothing retrains
    monkeypatch.setattr(sys, "argv", [*argv[:-2], "--output", str(subset), "--resume", "--methods", "full_ft,aria"])
    runpy.run_path(str(script), run_name="__main__")
    assert set(json.loads(subset.read_text())["summary"]) == {"full_ft", "aria", "joint"}
    assert (runs / "seed-0" / "compare" / "aria" / "result.json").stat().st_mtime_ns == kept
