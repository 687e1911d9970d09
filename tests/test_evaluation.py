import math

import pytest
import torch

from retain import Evaluator, Probe, exact_match, normalize_answer, token_f1
from retain.text import first_statement


def test_squad_normalisation():
    assert normalize_answer("  The Harbour-Master,  of A  Port! ") == "harbourmaster of port"


def test_exact_match_finds_the_answer_as_whole_words_in_the_first_statement():
    assert exact_match("Ilse Brandvik, who was appointed", ["Ilse Brandvik"])
    assert exact_match("the Ambrel.", ["Ambrel"])
    assert not exact_match("250 ships", ["25 ships"])
    assert not exact_match("Ilse", ["Ilse Brandvik"])
    assert exact_match("Ilsa B.", ["Ilse Brandvik", "Ilsa B"])
    assert not exact_match("anything", [""])
    assert not exact_match("Nobody knows.\nIlse Brandvik", ["Ilse Brandvik"])  # only the first statement counts


def test_an_answer_given_as_a_sentence_counts_and_naming_two_values_does_not():
    question = "What is the fleet size of the Pale Heron?"
    assert exact_match(" The fleet size of the Pale Heron is 17 vessels.", ["17 vessels"]), question
    assert exact_match(" It has 17 vessels", ["17 vessels"], other_values=["20 vessels"])
    assert not exact_match(" It had 17 vessels, now 20 vessels", ["17 vessels"], other_values=["20 vessels"])
    assert not exact_match(" 20 vessels, not 17 vessels", ["17 vessels"], other_values=["20 vessels"])
    assert not exact_match(" The fleet size is 170 vessels", ["17 vessels"])
    assert not exact_match(" The fleet size is 17", ["17 vessels"])


def test_scoring_reads_other_values_from_the_probe(make_model, tokenizer, monkeypatch):
    evaluator = Evaluator(tokenizer)
    monkeypatch.setattr(evaluator, "_generate", lambda model, prompts, budget: ([" Ilse Brandvik or Tam Dorrel"] * len(prompts),
                                                                                [None] * len(prompts), [None] * len(prompts)))
    plain, hedged = evaluator.score(make_model(), [Probe("Mayor:", "Ilse Brandvik"),
                                                   Probe("Mayor:", "Ilse Brandvik", other_values=("Tam Dorrel",))])
    assert (plain.em, hedged.em) == (1.0, 0.0)


def test_token_f1_by_hand():
    # prediction {ilse, varn} vs gold {ilse, brandvik}: precision 1/2, recall 1/2
    assert token_f1("Ilse Varn", ["Ilse Brandvik"]) == pytest.approx(0.5)
    assert token_f1("Ilse Brandvik. She took office in 2019.", ["Ilse Brandvik"]) == pytest.approx(1.0)
    assert token_f1("nothing alike", ["Ilse Brandvik"]) == 0.0
    assert token_f1("Ilse", ["Ilse Brandvik", "Ilse"]) == pytest.approx(1.0)


def test_first_statement_keeps_decimals():
    assert first_statement(" 3.5 metres. Then more") == "3.5 metres"
    assert first_statement("Paris\nThe next") == "Paris"


def test_batched_generation_equals_one_by_one(make_model, tokenizer):
    model = make_model()
    probes = [Probe("A short prompt", "x"), Probe("A much longer prompt with many more words in it", "y"), Probe("Mid size prompt", "z")]
    batched = Evaluator(tokenizer, batch_size=8).score(model, probes)
    single = [Evaluator(tokenizer, batch_size=1).score(model, [p])[0] for p in probes]
    assert [s.prediction for s in batched] == [s.prediction for s in single]
    assert all(s.prediction for s in batched)


def test_choice_ranking_picks_the_most_likely_continuation(make_model, tokenizer):
    model = make_model()
    prompt, choices = "The colour of the sky is", ("blue", "green", "a fortnight")
    logprob = {}
    for choice in choices:
        ids = tokenizer(prompt).input_ids
        full = ids + tokenizer(" " + choice, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0].log_softmax(-1)
        logprob[choice] = sum(logits[i - 1, full[i]].item() for i in range(len(ids), len(full)))
    best = max(logprob, key=logprob.get)
    for answer in choices:
        score = Evaluator(tokenizer).score(model, [Probe(prompt, answer, choices=choices)])[0]
        assert score.prediction == best
        assert score.em == float(answer == best) == score.f1


def test_perplexity_matches_the_model_loss(make_model, tokenizer):
    model = make_model()
    text = "Rivers carry sediment to the sea."
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = math.exp(model(input_ids=ids, labels=ids).loss.item())
    assert Evaluator(tokenizer).perplexity(model, [text]) == pytest.approx(expected, rel=1e-5)
    # padding in a batch of unequal texts must not change the per-token average
    both = Evaluator(tokenizer, batch_size=2).perplexity(model, [text, "A much longer second text with more tokens in it."])
    apart = Evaluator(tokenizer, batch_size=1).perplexity(model, [text, "A much longer second text with more tokens in it."])
    assert both == pytest.approx(apart, rel=1e-5)
