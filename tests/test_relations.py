import re
import runpy
from pathlib import Path

import torch

from retain.bench.probe_templates import TEMPLATES
from retain.bench.temporal_facts import RELATIONS
from retain.knowledge import FactRegistry, read
from retain.relations import (ASK_PROMPT, ASK_SHOTS, DEV_KINDS, DEV_QUESTIONS, RelationMatcher, input_embedder, model_asker,
                              spans)

# A toy embedding: each word a direction; a relation and its paraphrase share one.
DIRECTIONS = {"staff": 0, "workforce": 0, "director": 1, "head": 1, "headquarters": 2, "tell": 3, "colour": 4}


def embed(texts):
    vectors = torch.zeros(len(texts), 5)
    for i, text in enumerate(texts):
        for word in text.split():
            vectors[i, DIRECTIONS.get(word, 3)] += 1
    return torch.nn.functional.normalize(vectors, dim=-1)


def registry():
    facts = FactRegistry()
    for relation, value in [("staff", "310 employees"), ("director", "Tam Dorrel"), ("headquarters", "Quessary")]:
        facts.observe("the Dorin Institute", relation, value, "2018")
    facts.observe("Nozer", "mayor", "Ilse Brandvik", "2018")
    facts.observe("the Dorin Institute", "director", "Oona Terrelle", "2020")
    return facts


def test_spans_are_runs_of_content_words():
    assert spans("could you tell me who workforce was in") == ["workforce"]
    assert spans("number of residents") == ["number", "residents"]
    assert spans("port of registry code") == ["port", "registry", "code", "registry code"]


def test_the_relation_a_query_means_is_found_among_its_subjects_facts_or_none():
    matcher = RelationMatcher(embed)
    facts = registry()
    found = facts.find("Could you tell me the workforce of the Dorin Institute in 2020?", "2020", matcher)
    assert (found.relation, found.object) == ("staff", "310 employees")
    assert facts.find("Who was the head of the Dorin Institute in 2018?", "2018", matcher).object == "Tam Dorrel"
    assert facts.find("Who is the head of the Dorin Institute now?", None, matcher).object == "Oona Terrelle"
    facts.alias("the Dorin Institute", ["Dorin"])  # by another name, the relation in other words too
    assert facts.find("Who was the head of Dorin in 2018?", "2018", matcher).object == "Tam Dorrel"
    # Verbatim only without a matcher; no subject, or a relation it knows no fact of, reads no fact.
    assert facts.find("The workforce of the Dorin Institute was", "2020") is None
    assert facts.find("The workforce of Velmora Port was", "2020", matcher) is None
    assert facts.find("The colour of the Dorin Institute was", "2020", matcher) is None
    # The period read follows the fact found: the 2020 director, the 2018 staff.
    periods = ["2018", "2020"]
    assert read("In 2020, the head of the Dorin Institute was", periods, facts, relate=matcher).version == 1
    assert read("In 2020, the workforce of the Dorin Institute was", periods, facts, relate=matcher).version == 0


def test_a_confidence_is_a_probability_against_none_of_these():
    matcher = RelationMatcher(embed, temperature=0.1, none_similarity=0.5)
    sure = matcher("workforce", ["staff", "director"])
    assert sure[0] > 0.9 and sum(sure) < 1
    unsure = matcher("colour", ["staff", "director"])
    assert max(unsure) < 0.5  # nothing it means: "none of these" wins
    assert matcher("who was", ["staff"]) == [matcher("", ["staff"])[0]]  # no content word: no evidence


def test_the_model_is_asked_which_relation_and_the_surer_reading_wins():
    asked = []

    def ask(favourite):
        def asking(words, relations):
            asked.append(words)
            return torch.tensor([-0.5 if r == favourite else -6.0 for r in relations])  # mean log-probabilities
        return asking

    relations = ["staff", "director", "headquarters"]
    matcher = RelationMatcher(embed, ask=ask("director"))
    assert max(RelationMatcher(embed)("who ran it", relations)) < 0.5  # the words alone: none of these
    assert matcher("who ran it", relations)[1] > 0.9 and asked == ["who ran it"]
    assert matcher("workforce", relations)[0] > 0.9  # the words are sure of staff, though the model is not
    assert max(matcher("and it", relations)) < 0.5 and len(asked) == 2  # no content word: nothing asked about
    unlikely = RelationMatcher(embed, ask=lambda words, relations: torch.full((len(relations),), -6.0))
    assert max(unlikely("who painted it", relations)) < 0.5  # no relation a likely answer: none of these
    # Through the registry: the query's subject becomes "it" and its time is left out before the model is asked.
    assert registry().find("Who ran the Dorin Institute in 2018?", "2018", matcher).object == "Tam Dorrel"
    assert asked[-1] == "who ran it"


def test_the_dev_questions_and_the_models_examples_ask_about_none_of_the_streams_relations():
    stream = {name for r in RELATIONS for name in (r.name, r.alias)}
    dev = {relation for relations in DEV_KINDS.values() for relation in relations}
    assert not dev & stream and not {answer for _, answer in ASK_SHOTS} & (stream | dev)
    assert all(relation is None or relation in DEV_KINDS[kind] for kind, _, relation in DEV_QUESTIONS)
    assert sum(relation is None for _, _, relation in DEV_QUESTIONS) >= 20  # "none of these" is asked too


class Leaning(torch.nn.Module):
    """A model whose every position predicts the same distribution, leaning to `LOGITS`' tokens."""

    LOGITS = torch.tensor([0.0, 0.0, 0.0, 4.0, 1.0, 0.0, 0.0, 3.0])

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, input_ids):
        self.calls += 1
        return type("Output", (), {"logits": self.LOGITS.expand(1, input_ids.shape[1], 8)})


def test_the_asker_scores_each_relation_as_the_models_answer_with_no_memory():
    vocabulary = {"director": 3, "staff": 4, "\n": 7}
    encode = lambda texts: {"input_ids": torch.tensor([[vocabulary.get(w, 1) for w in re.findall(r"\S+|\n", texts[0])]])}
    entered = []

    class Pretrained:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            entered.append(False)

    model = Leaning()
    scores = model_asker(model, encode, Pretrained)("who ran it", ["director", "staff"])
    logprobs = Leaning.LOGITS.log_softmax(0)
    torch.testing.assert_close(scores, torch.stack([logprobs[[3, 7]].mean(), logprobs[[4, 7]].mean()]))
    assert model.calls == 2 and entered == [True, False]  # one forward a relation, all of them with no memory
    answers = {}
    ask = model_asker(model, encode, Pretrained, answers)
    ask("who ran it", ["director"]), ask("who ran it", ["director"])
    assert model.calls == 3  # words and relations asked once
    torch.testing.assert_close(model_asker(model, encode, Pretrained, answers)("who ran it", ["director"]), scores[:1])
    assert model.calls == 3  # and once for every asker that shares its answers (a method's, batch after batch)
    assert "{words}" in ASK_PROMPT and ASK_PROMPT.endswith("Q: {words}?\nAsks for:")


def test_input_embedder_means_token_rows():
    weight = torch.eye(4)
    vectors = input_embedder(weight, lambda text: [1, 2] if text == " a b" else [3], common=None)(["a b", "c"])
    torch.testing.assert_close(vectors, torch.tensor([[0, 0.7071, 0.7071, 0], [0, 0, 0, 1.0]]), atol=1e-4, rtol=0)


def test_what_every_token_shares_is_taken_out():
    # Every row leans the same way (a large shared direction) and differs in one small one of its own: raw, any two
    # tokens look alike; less the mean and the top direction, unrelated tokens are orthogonal and a token matches itself.
    generator = torch.Generator().manual_seed(0)
    own = torch.randn(64, 16, generator=generator)
    weight = own * 0.1 + 3.0 * torch.randn(64, 1, generator=generator).abs() * torch.ones(16)
    raw = input_embedder(weight, lambda text: [int(text)], common=None)(["1", "2"])
    assert raw[0] @ raw[1] > 0.9
    clean = input_embedder(weight, lambda text: [int(text)], common=1)(["1", "2", "1"])
    assert abs(clean[0] @ clean[1]) < 0.5 and clean[0] @ clean[2] > 0.999
    weight[:, 0] += 100.0  # trained in place: the directions are computed again, not read from the cache
    moved = input_embedder(weight, lambda text: [int(text)], common=1)(["1", "2"])
    assert abs(moved[0] @ moved[1]) < 0.5


def test_a_found_fact_can_be_read_as_its_training_question():
    from retain.fact_questions import WORDINGS, question

    facts, periods = registry(), ["2018", "2020"]
    asked = "Could you tell me who the head of the Dorin Institute was back in 2021?"
    seen = read(asked, periods, facts, relate=RelationMatcher(embed), question=WORDINGS[0])
    assert seen.text == question("the Dorin Institute", "director", "2020") == "[2020] The Dorin Institute — director:"
    assert read(asked, periods, facts, relate=RelationMatcher(embed)).text.endswith("back in 2020?")  # the asker's words
    assert read("Plants turn light into sugar.", periods, facts, question=WORDINGS[0]).text == "Plants turn light into sugar."


def test_the_person_wordings_name_no_relation_alias_template_or_training_sentence(monkeypatch):
    """benchmarks/relations.py's check on a person's words measures the matcher only if its questions are not the
    stream's own words: no relation's name or alias as a phrase, no probe template, no training sentence's opening."""
    script = Path(__file__).parents[1] / "benchmarks" / "relations.py"
    monkeypatch.syspath_prepend(str(script.parent))
    wordings = runpy.run_path(str(script))["PERSON_WORDINGS"]
    assert set(wordings) == {r.name for r in RELATIONS}
    templates = {t.text.replace("{wh_}", "").replace("{wh}", "").lower() for t in TEMPLATES}
    stems = {sentence.split("{")[0].lower().strip() for r in RELATIONS for sentence in r.templates} - {""}
    for relation in RELATIONS:
        asked = wordings[relation.name]
        assert sum("{t}" in w for w in asked) == 2 and len(asked) == 3  # two about a time, one about now
        for text in map(str.lower, asked):
            for phrase in {relation.name, relation.alias}:
                assert not re.search(rf"\b{re.escape(phrase)}\b", text), (text, phrase)
            assert text not in templates and not any(text.startswith(stem) for stem in stems), text
