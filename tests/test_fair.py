"""A fair comparison: every method trains on the same examples, no probe wording is ever trained on,
scores are reported per probe form, and routing is scored against the version an answer needs."""

import re

import pytest

from retain import ContinualTrainer, build_method
from retain.bench.temporal_facts import TemporalFactsConfig, generate
from retain.fact_questions import DEFAULT_WORDINGS, WORDINGS, fact_questions, new_or_changed
from retain.text import wording

CASM = {"memory": "feed_forward", "k": "8", "top_t": "8", "lr": "10"}
METHODS = {"full_ft": {}, "replay": {"buffer_size": "8", "ratio": "0.25"}, "smf": {"memory": "feed_forward", "k": "8"},
           "casm": CASM}
STREAM = TemporalFactsConfig(facts=6, periods=("2018", "2020", "2022"), change_rate=0.34, paraphrases=2, qa=True, seed=3)


def recording_trainer(name, make_model, tokenizer, training_args):
    """A trainer whose tokenize() keeps every example it is given (what each task trains on), with fact questions in
    every training wording."""
    # One generated token per probe: only what is trained on is looked at here, not the scores.
    trainer = ContinualTrainer(make_model(), training_args(num_train_epochs=1, fact_questions=len(WORDINGS), max_new_tokens=1),
                               method=build_method(name, METHODS[name]),
                               processing_class=tokenizer)
    seen, tokenize = [], trainer.tokenize
    trainer.tokenize = lambda examples: seen.append(list(examples)) or tokenize(examples)
    return trainer, seen


def test_every_method_trains_on_the_same_examples_with_fact_questions(make_model, tokenizer, training_args):
    stream = generate(STREAM)
    first = {}
    for name in METHODS:
        trainer, _ = recording_trainer(name, make_model, tokenizer, training_args)
        trainer.start_stream(stream)
        trainer.add_task(stream.tasks[0])
        first[name] = trainer.train_dataset
        assert trainer.last_timing["fact_questions"] == 6 * len(WORDINGS)
        assert trainer.last_timing["train_examples"] == len(stream.tasks[0].train) + 6 * len(WORDINGS)
    assert all(features == first["full_ft"] for features in first.values())
    # The questions are the same examples for every method, and none without the trainer asking for them.
    trainer = ContinualTrainer(make_model(), training_args(fact_questions=0), processing_class=tokenizer)
    assert trainer.fact_questions(stream.tasks[0]) == []
    trainer = ContinualTrainer(make_model(), training_args(), processing_class=tokenizer)
    assert len(trainer.fact_questions(stream.tasks[0])) == 6 * DEFAULT_WORDINGS


def test_only_new_or_changed_facts_become_questions():
    earlier = [[{"subject": "Nozer", "relation": "mayor", "object": "Ilse Brandvik", "valid_from": "2018"},
                {"subject": "Nozer", "relation": "population", "object": "900 residents", "valid_from": "2018"}]]
    facts = [{"subject": "Nozer", "relation": "Mayor", "object": "ilse brandvik.", "valid_from": "2020"},  # restated
             {"subject": "Nozer", "relation": "population", "object": "950 residents", "valid_from": "2020"},  # changed
             {"subject": "Velmora", "relation": "mayor", "object": "Tam Dorrel", "valid_from": "2020"}]  # new
    assert [f["object"] for f in new_or_changed(facts, earlier)] == ["950 residents", "Tam Dorrel"]
    questions = fact_questions(facts[1:2], "2020", wordings=2)
    assert questions == [{"prompt": "[2020] Nozer — population:", "completion": " 950 residents."},
                         {"prompt": "[2020] Records list the population of Nozer as", "completion": " 950 residents."}]
    with pytest.raises(ValueError, match=f"0 to {len(WORDINGS)} wordings"):
        fact_questions(facts, "2020", wordings=len(WORDINGS) + 1)


def trained_on(probe: str, texts: list[str]) -> bool:
    """Whether a training text holds the probe's wording, or a near copy of it: the probe without its time, in
    another case, spacing or punctuation, with or without articles."""
    words = f" {wording(probe)} "
    return any(words in f" {wording(text)} " for text in texts)


def test_the_held_out_check_refuses_near_copies_of_a_probe():
    probe = "Q: Who was the harbour master of Velmora Port in 2019?\nA:"
    for copy in ["Q: Who was the harbour master of Velmora Port in 2019?\nA: Ilse Brandvik.",
                 "[2018] Q: Who was the harbour master of Velmora Port?\nA: Ilse Brandvik.",  # the probe minus its time
                 "q:  who was  harbour master of velmora port, as of 2018 ?\na: Ilse Brandvik",  # spacing, case, time
                 "Q: Who was the harbour master of Velmora Port last year?\nA: Ilse Brandvik"]:  # a relative time
        assert trained_on(probe, [copy]), copy
    assert not trained_on(probe, ["Q: Who is the harbour master of Velmora Port?\nA: Ilse Brandvik"])  # another wording
    assert not trained_on("[2019] The mayor of Nozer is", ["[2019] The mayor of Nozeria is Tam Dorrel."])  # whole words


def test_no_probe_prompt_occurs_in_any_methods_training_examples(make_model, tokenizer, training_args):
    stream = generate(STREAM)
    probes = {p.prompt for t in stream.tasks for p in t.probes}
    assert {p.form for t in stream.tasks for p in t.probes} == {"cloze", "question", "time_clause", "now"}
    for name in METHODS:
        trainer, seen = recording_trainer(name, make_model, tokenizer, training_args)
        trainer.fit(stream)
        texts = [" ".join(e.values()) for batch in seen for e in batch]
        assert sum("prompt" in e for batch in seen for e in batch) > 0  # the fact questions are there
        for prompt in probes:
            assert not trained_on(prompt, texts), (name, prompt)


def test_scores_are_reported_per_probe_form_and_routes_against_the_version_an_answer_needs(
        make_model, tokenizer, training_args):
    stream = generate(STREAM)
    trainer = ContinualTrainer(make_model(), training_args(num_train_epochs=1), method=build_method("casm", CASM),
                               processing_class=tokenizer)
    result = trainer.fit(stream)
    summary = result.summary()
    assert set(summary["by_form"]) == {"cloze", "question", "time_clause", "now"}
    assert {"plasticity", "stability", "historical"} <= set(summary["by_form"]["cloze"])
    assert summary["by_form"]["now"]["historical"] is None  # "now" asks only the current value
    last = result.rows[-1]
    for form, kinds in last.by_form.items():
        probes = [p for p in last.predictions if p["form"] == form]
        assert kinds[""]["em"][-1] == pytest.approx(sum(p["correct"] for p in probes if p["task"] == "2022")
                                                    / sum(p["task"] == "2022" for p in probes))
    # An unchanged fact asked as of 2022 is read from, and needs, the version of the period that stated it.
    unchanged = [p for p in last.predictions if p["task"] == "2022" and p["kind"] == "unchanged"]
    assert unchanged and all(p["learned_in"] != "2022" and p["route"] == p["learned_in"] for p in unchanged)
    assert last.routing_accuracy == 1.0
    # Routing accuracy can fail: a method that routes to the period the probe names is wrong on those probes.
    def route_to_the_named_period(model, prompts, encode):
        routing = trainer.method.route(model, prompts, encode)
        routing.names = [match[0] if (match := re.search(r"\d{4}", p)) else "2022" for p in prompts]
        return routing

    trainer.evaluator.route = route_to_the_named_period
    assert trainer.evaluate_all_tasks(stream.tasks).routing_accuracy < 1.0
    # The router's (fact, period) is scored too, and can fail: facts swapped between prompts, or never found.
    assert last.router_precision == last.router_recall == 1.0
    assert result.to_json()["summary"]["router_precision"] == 1.0

    def swap_facts(model, prompts, encode):
        routing = trainer.method.route(model, prompts, encode)
        routing.facts = routing.facts[::-1]
        return routing

    trainer.evaluator.route = swap_facts
    swapped = trainer.evaluate_all_tasks(stream.tasks)
    assert swapped.router_precision < 1.0 and swapped.router_recall < 1.0

    def find_nothing(model, prompts, encode):
        routing = trainer.method.route(model, prompts, encode)
        routing.facts = [""] * len(prompts)
        return routing

    trainer.evaluator.route = find_nothing
    lost = trainer.evaluate_all_tasks(stream.tasks)
    assert lost.router_recall == 0.0 and lost.router_precision is None
