from dataclasses import replace

from retain import ContinualTrainer, build_method, load_stream, save_stream
from retain.bench.temporal_facts import LOCALITY_OTHER_SUBJECT, PRESETS, generate
from retain.result import EvalRow, RunResult

STREAM = replace(PRESETS["small"], facts=4, periods=("2018", "2020"))


def test_locality_prompts_ask_what_no_task_teaches_and_round_trip(tmp_path):
    stream = generate(STREAM)
    subjects = {p.key.split(" | ")[0] for t in stream.tasks for p in t.probes}
    same_subject = stream.locality[: -len(LOCALITY_OTHER_SUBJECT)]
    assert same_subject and all(any(s in prompt for s in subjects) for prompt in same_subject)
    taught = {p.key.split(" | ")[1] for t in stream.tasks for p in t.probes}
    assert not any(relation in prompt for prompt in same_subject for relation in taught)
    assert not set(stream.locality) & {p.prompt for t in stream.tasks for p in t.probes}
    save_stream(stream, tmp_path / "s")
    assert load_stream(tmp_path / "s").locality == stream.locality


def test_locality_is_the_share_of_answers_that_did_not_change():
    rows = [EvalRow(label, [None], [None], {}, None, 0.0, locality=answers) for label, answers in
            [("initial", ["Sadiq Khan", "14 million", "in 1889"]), ("a", ["sadiq khan.", "13 million", "In 1889"])]]
    assert RunResult("m", "tiny", 0, ["a"], rows=rows).locality() == 2 / 3  # case and punctuation aside
    assert RunResult("m", "tiny", 0, ["a"], rows=rows[:1]).locality() is None


def test_a_method_that_changes_the_model_changes_locality_answers_and_one_that_does_not_keeps_them(
        make_model, tokenizer, training_args):
    stream = generate(STREAM)
    moved = ContinualTrainer(make_model(), training_args(learning_rate=5e-2), method=build_method("full_ft"),
                             processing_class=tokenizer).fit(stream)
    kept = ContinualTrainer(make_model(), training_args(learning_rate=0.0), method=build_method("full_ft"),
                            processing_class=tokenizer).fit(stream)
    assert len(moved.rows[-1].locality) == len(stream.locality)
    assert moved.to_json()["summary"]["locality"] < 1.0
    assert kept.to_json()["summary"]["locality"] == 1.0
