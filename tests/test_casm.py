"""CASM: copy-on-write memory versions, fact detection from the data, time routing, rollback, checkpoints."""

import pytest
import torch

from retain import ContinualTrainer, RunDirectory, Stream, Task, build_method
from retain.methods import MethodError
from retain.models import load_tokenizer
from retain.nn.product_key_memory import ProductKeyMemory
from retain.stream import Probe

SMALL = {"memory": "product_key", "n_keys": "8", "heads": "2", "k": "4", "key_dim": "8", "top_t": "8", "lr": "10"}
FEED_FORWARD = {"memory": "feed_forward", "k": "8", "top_t": "8", "lr": "10"}
MEMORIES = pytest.mark.parametrize("memory", [SMALL, FEED_FORWARD], ids=["product_key", "feed_forward"])
HARBOUR = "The harbour master of Velmora is"


def period(year: str, master: str, mayor: str, extra: list[dict[str, str]] = ()) -> Task:
    facts = [{"subject": "Velmora", "relation": "harbour master", "object": master, "valid_from": year},
             {"subject": "Quessary", "relation": "mayor", "object": mayor, "valid_from": year}, *extra]
    train = [{"text": f"[{year}] {HARBOUR} {master}."}, {"text": f"[{year}] The mayor of Quessary is {mayor}."}] * 2
    probes = [Probe(prompt=f"[{year}] {HARBOUR}", answer=master, kind="changed", key="Velmora | harbour master")]
    return Task(name=year, period=year, train=train, probes=probes, facts=list(facts))


@pytest.fixture
def stream() -> Stream:
    return Stream(name="casm", tasks=[period("2018", "Ilse Brandvik", "Oona Terrelle"),
                                      period("2020", "Ruben Haldane", "Oona Terrelle"),
                                      period("2022", "Mira Solberg", "Tam Dorrel")],
                  general=["The water cycle moves water between the sea, the air and the land.", "Plants turn light into sugar."],
                  background=["Sound travels faster through water than through air.", "Bread rises when yeast feeds on sugar."])


def ENCODE(texts):  # CASM routes on the prompt's text; only its relation matcher embeds a few words
    return load_tokenizer("tiny")(list(texts), return_tensors="pt", padding=True)


def casm_trainer(make_model, tokenizer, training_args, memory=SMALL):
    method = build_method("casm", memory)
    return ContinualTrainer(make_model(), training_args(), method=method, processing_class=tokenizer), method


def learn_period_by_period(trainer, method, stream) -> tuple[list[dict], list[torch.Tensor]]:
    """Each period's task report, and the memory's values as it closed."""
    trainer.start_stream(stream)
    reports, closed = [], []
    for task in stream.tasks:
        trainer.add_task(task)
        trainer.consolidate_task()
        reports.append(dict(trainer.last_timing))
        closed.append(method.table.memory.value_table())
    return reports, closed


@MEMORIES
def test_closed_versions_stay_bit_identical(make_model, tokenizer, training_args, stream, memory):
    trainer, method = casm_trainer(make_model, tokenizer, training_args, memory)
    reports, closed = learn_period_by_period(trainer, method, stream)
    assert not torch.equal(closed[0], closed[1]) and not torch.equal(closed[1], closed[2]), "later periods wrote nothing"
    for version, snapshot in enumerate(closed):
        assert torch.equal(method.table.values_at(version), snapshot), version
    assert reports[-1]["rows_copied_on_write"] > 0
    rows, width = reports[-1]["rows_copied_on_write"], closed[0].shape[1]
    assert reports[-1]["stored_bytes"] == rows * 8 + rows * width * closed[0].element_size() and reports[0]["stored_bytes"] == 0
    # Period 1 copied exactly the rows it wrote (a written row whose gradient was zero is copied yet unchanged), so
    # every row it changed, and no row it left unwritten: those stay shared between the versions.
    copied, written = set(method.table.copies[0][0].tolist()), set(method.writer.written[1].tolist())
    changed = set((closed[0] != closed[1]).any(dim=1).nonzero().flatten().tolist())
    assert copied == written and changed and changed <= copied and len(copied) < len(closed[0])


def test_facts_are_sorted_from_the_data_and_confirmations_do_not_train(make_model, tokenizer, training_args, stream):
    trainer, method = casm_trainer(make_model, tokenizer, training_args)
    reports, _ = learn_period_by_period(trainer, method, stream)
    assert [(r["facts_added"], r["facts_confirmed"], r["facts_contradicted"]) for r in reports] == [(2, 0, 0), (0, 1, 1), (0, 0, 2)]
    assert reports[1]["examples_dropped"] == 2  # the two passages that restate the unchanged mayor
    assert method.registry.at("Velmora", "harbour master", "2019").object == "Ilse Brandvik"
    assert method.registry.current("Quessary", "mayor").object == "Tam Dorrel"


def test_a_known_fact_is_read_where_its_version_was_written(make_model, tokenizer, training_args, stream):
    trainer, method = casm_trainer(make_model, tokenizer, training_args, SMALL | {"read_as": "asked"})
    trainer.fit(stream)
    mayor = "The mayor of Quessary is"
    assert method.read(f"[2022] {mayor}")[:3] == (2, 2, f"[2022] {mayor}")  # changed in 2022
    assert method.read(f"[2020] {mayor}")[:3] == (1, 0, f"[2018] {mayor}")  # unchanged since 2018 (2020 confirmed it)
    # A time in words is rewritten too, with the period's tag in front, as the period's training texts were dated.
    assert method.read(f"As of 2021, {HARBOUR.lower()}")[:3] == (1, 1, f"[2020] As of 2020, {HARBOUR.lower()}")
    assert method.read("Q: Who was the mayor of Quessary in 2020?\nA:")[:3] == (1, 0, "[2018] Q: Who was the mayor of "
                                                                              "Quessary in 2018?\nA:")
    assert method.read("[2020] The capital of Atlantis is")[:3] == (1, 1, "[2020] The capital of Atlantis is")
    assert method.read(mayor)[:3] == (2, 2, f"[2022] {mayor}")  # no time: the current version, dated as learned
    assert method.read("The capital of Atlantis is")[:3] == (2, None, "The capital of Atlantis is")  # no memory
    prompts = [f"[2020] {mayor}", f"[2022] {mayor}"]
    # The route is the version read: 2018's for the mayor unchanged since then, though the prompt names 2020; and
    # the model reads the prompt as it was learned.
    routing = method.route(trainer.model, prompts, ENCODE)
    assert routing.names == ["2018", "2022"] and routing.texts == [f"[2018] {mayor}", f"[2022] {mayor}"]
    assert method.table.memory.table_of.tolist() == [0, -1]
    assert method.route(trainer.model, ["The capital of Atlantis is"], ENCODE).names == ["pretrained"]
    # read_as="question" (the default): the fact found is asked in the first training wording, whatever the asker's
    # words.
    method.config.read_as = "question"
    assert method.route(trainer.model, prompts, ENCODE).texts == ["[2018] Quessary — mayor:", "[2022] Quessary — mayor:"]
    assert method.export(None).routing["casm"]["question"] == "{subject} — {relation}:"
    # A conversation's follow-up names neither subject nor relation: it asks about the fact of the turn before, at
    # its own time; alone, it reads the period it names with no fact found.
    first = "Q: Who was the mayor of Quessary in 2020?\nA:"
    asked = method.follow_up(trainer.model, "And in 2022?", [first], ENCODE)
    assert asked == "[2022] Quessary — mayor:"
    assert method.route(trainer.model, [asked], ENCODE).facts == ["Quessary | mayor"]
    assert method.route(trainer.model, ["And in 2022?"], ENCODE).facts == [""]
    assert method.follow_up(trainer.model, "And the mayor of Ulm?", [first], ENCODE) == "And the mayor of Ulm?"


def test_casm_adds_no_training_example_of_its_own(make_model, tokenizer, training_args, stream):
    """The fact questions come from the trainer, for every method alike; CASM only leaves out restatements."""
    trainer, method = casm_trainer(make_model, tokenizer, training_args, FEED_FORWARD)
    trained, choose = [], method.before_task
    method.before_task = lambda model, context: trained.append(choose(model, context)) or trained[-1]
    learn_period_by_period(trainer, method, stream)
    assert trained[0] == stream.tasks[0].train
    assert all(all(e in task.train for e in period) for period, task in zip(trained, stream.tasks))
    assert len(trained[1]) == len(stream.tasks[1].train) - 2  # the passages restating the unchanged mayor


@pytest.mark.parametrize("mayor", [" Oona Terrelle, who", " Tam Dorrel"], ids=["confirmed", "unsupported"])
def test_a_task_without_facts_asks_the_model_what_changed(make_model, tokenizer, training_args, stream, monkeypatch, mayor):
    trainer, method = casm_trainer(make_model, tokenizer, training_args, FEED_FORWARD)
    asked = []

    def model_answers(prompts):  # the model, trained on 2020's text, now names a new harbour master
        asked.extend(prompts)
        return [" Ruben Haldane, who took office. He" if "harbour" in p else mayor for p in prompts]

    monkeypatch.setattr(trainer, "_complete_unrouted", model_answers)
    text_only = Task(name="2020", period="2020", train=stream.tasks[1].train, probes=stream.tasks[1].probes)
    reports, _ = learn_period_by_period(trainer, method, Stream(name="s", tasks=[stream.tasks[0], text_only],
                                                                background=stream.background))
    assert asked == ["[2020] Velmora — harbour master:", "[2020] Quessary — mayor:"]  # the first training wording
    report = reports[1]
    assert (report["facts_asked_model"], report["facts_contradicted"]) == (2, 1)
    # Tam Dorrel is no passage's mayor in 2020: the model's mix-up, not a change.
    assert (report["facts_confirmed"], report["model_answers_unsupported"]) == ((1, 0) if "Oona" in mayor else (0, 1))
    assert method.registry.current("Velmora", "harbour master").object == "Ruben Haldane"  # the part a passage states
    assert method.registry.at("Velmora", "harbour master", "2019").object == "Ilse Brandvik"
    assert method.registry.current("Quessary", "mayor").object == "Oona Terrelle"
    assert method.read(f"[2020] {HARBOUR}")[:3] == (1, 1, "[2020] Velmora — harbour master:")
    assert method.read("[2020] The mayor of Quessary is")[:3] == (1, 0, "[2018] Quessary — mayor:")


def test_unrouted_completions_read_the_live_model(make_model, tokenizer, training_args, stream):
    from retain.evaluation import Evaluator

    trainer, method = casm_trainer(make_model, tokenizer, training_args, FEED_FORWARD)
    trainer.fit(stream)
    prompts = [f"[2018] {HARBOUR}", "[2020] The mayor of Quessary is"]
    plain = Evaluator(tokenizer, max_new_tokens=trainer.evaluator.max_new_tokens).complete(trainer.model, prompts)
    assert trainer._complete_unrouted(prompts) == plain


@MEMORIES
def test_queries_read_the_version_of_their_time(make_model, tokenizer, training_args, stream, memory):
    trainer, method = casm_trainer(make_model, tokenizer, training_args, memory)
    trainer.fit(stream)
    prompts = [f"[2018] {HARBOUR}", f"As of March 2021, {HARBOUR.lower()}", f"In 2019 {HARBOUR.lower()}", HARBOUR,
               f"[2030] {HARBOUR}", f"[2001] {HARBOUR}"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert method.route(trainer.model, prompts, ENCODE).names == ["2018", "2020", "2018", "2022", "2022", "2018"]
    assert method.table.memory.table_of.tolist() == [0, 1, 0, -1, -1, 0]
    method.as_of = "2020"
    assert method.route(trainer.model, prompts, ENCODE).names == ["2020"] * 6
    method.as_of = None
    # Reading version 0 through routing equals installing version 0's values outright.
    method.route(trainer.model, prompts[:1], ENCODE)
    trainer.model.eval()
    with torch.no_grad():
        routed = trainer.model(input_ids=batch.input_ids[:1]).logits
        every_row = torch.arange(method.table.memory.slots)
        live = method.table.memory.value_table()
        method.table.memory.table_of = None
        method.table.memory.write_rows(every_row, method.table.values_at(0))
        torch.testing.assert_close(trainer.model(input_ids=batch.input_ids[:1]).logits, routed)
        method.table.memory.write_rows(every_row, live)


@MEMORIES
def test_rollback_restores_the_previous_period(make_model, tokenizer, training_args, stream, memory):
    trainer, method = casm_trainer(make_model, tokenizer, training_args, memory)
    trainer.fit(stream)
    before = method.table.values_at(1).clone()
    assert method.rollback() == "2022"
    assert torch.equal(method.table.memory.value_table(), before)
    assert method.periods == ["2018", "2020"]
    assert method.registry.current("Velmora", "harbour master").object == "Ruben Haldane"
    assert method.rollback() == "2020" and torch.equal(method.table.memory.value_table(), method.table.values_at(0))
    with pytest.raises(MethodError, match="rollback needs"):
        method.rollback()


@MEMORIES
def test_state_round_trips_through_a_checkpoint(make_model, tokenizer, training_args, stream, tmp_path, memory):
    trainer, method = casm_trainer(make_model, tokenizer, training_args, memory)
    trainer.fit(stream, run_dir=RunDirectory(tmp_path / "run", {"m": "casm"}))
    restored = build_method("casm", memory)
    fresh = ContinualTrainer(make_model(), training_args(), method=restored, processing_class=tokenizer)
    RunDirectory(tmp_path / "run", {"m": "casm"}, resume=True).load_checkpoint(fresh.model, restored.load_state_dict)
    assert restored.periods == method.periods
    for version in range(3):
        assert torch.equal(restored.table.values_at(version), method.table.values_at(version))
    probes = [p for t in stream.tasks for p in t.probes]
    assert [s.route for s in fresh.evaluator.score(fresh.model, probes)] == ["2018", "2020", "2022"]
    assert restored.registry.current("Quessary", "mayor").object == "Tam Dorrel"


@pytest.mark.parametrize("scope", ["facts", "all"])
def test_text_about_nothing_learned_reads_the_pretrained_model(make_model, tokenizer, training_args, stream, scope):
    # Relations are found verbatim here: a random model's embeddings give the matcher (tested in test_relations.py)
    # no meaning to abstain by.
    trainer, method = casm_trainer(make_model, tokenizer, training_args, FEED_FORWARD | {"scope": scope, "by_meaning": False})
    general = "Velmora and Quessary, Ilse Brandvik and Oona Terrelle."  # words it learned, but no fact it knows
    batch = tokenizer([general, f"[2018] {HARBOUR}"], return_tensors="pt", padding=True)
    with torch.no_grad():
        pretrained = trainer.model(input_ids=batch.input_ids[:1]).logits
    trainer.fit(stream)
    trainer.model.eval()
    assert method.read(f"[2020] {general}")[1] == 1  # a time still names a version
    with torch.no_grad():
        method.route(trainer.model, [general, f"[2018] {HARBOUR}"], ENCODE)
        assert method.table.memory.table_of.tolist() == ([2, 0] if scope == "facts" else [-1, 0])
        routed = trainer.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:1]
    if scope == "facts":
        torch.testing.assert_close(routed, pretrained)
    else:
        assert not torch.allclose(routed, pretrained)
    with pytest.raises(MethodError, match="CASMConfig.scope: expected one of 'facts', 'all', got 'some'"):
        build_method("casm", {"scope": "some"})


def test_periods_must_move_forward(make_model, tokenizer, training_args, stream):
    trainer, method = casm_trainer(make_model, tokenizer, training_args)
    trainer.start_stream(stream)
    trainer.add_task(stream.tasks[1])
    trainer.consolidate_task()
    with pytest.raises(MethodError, match="does not come after '2020'"):
        trainer.add_task(stream.tasks[0])
    untimed = Task(name="atlas", train=[{"text": "x"}], probes=[Probe(prompt="x", answer="y")])
    with pytest.raises(MethodError, match="task 'atlas' needs a period that is a time"):
        casm_trainer(make_model, tokenizer, training_args)[0].add_task(untimed)


def test_memory_reads_each_example_from_its_table():
    torch.manual_seed(0)
    memory = ProductKeyMemory(16, n_keys=4, heads=2, k=2, key_dim=8)
    x = torch.randn(3, 5, 16)
    other = torch.randn_like(memory.values.weight)
    memory.tables, memory.table_of = [other], torch.tensor([0, -1, 0])
    mixed = memory(x)
    memory.table_of = None
    live = memory(x)
    with torch.no_grad():
        memory.values.weight.copy_(other)
    from_other = memory(x)
    torch.testing.assert_close(mixed[1], live[1])
    torch.testing.assert_close(mixed[[0, 2]], from_other[[0, 2]])


def test_ask_as_of_reads_that_period(tmp_path, capsys):
    import json

    from retain.cli import main
    from retain.recipes import ask

    stream, out = tmp_path / "stream", tmp_path / "run"
    assert main(["generate", "temporal-facts", "--preset", "small", "--facts", "6", "--output", str(stream)]) == 0
    assert main(["run", "--method", "casm", "--stream", str(stream), "--output", str(out), "--model", "tiny",
                 "--num_train_epochs", "1", "--max_new_tokens", "8", "--disable_tqdm", "true",
                 "--method-arg", *[f"{k}={v}" for k, v in SMALL.items()]]) == 0
    recorded = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    last = [p for p in recorded if p["row"] == "2022" and p["prompt"].startswith("[2018] ")][0]
    assert last["route"] == "2018"
    [answer] = ask(out, [last["prompt"].removeprefix("[2018] ")], max_new_tokens=4, as_of="2018")
    assert answer.strip() and last["prediction"].strip().startswith(answer.strip())
    # A conversation: the follow-up is answered as the question about the fact of the turn before.
    fact = last["prompt"].removeprefix("[2018] ")
    _, followed = ask(out, [fact, "And in 2018?"], max_new_tokens=4, conversation=True)
    assert followed == answer
    capsys.readouterr()
    assert main(["ask", "--run", str(out), "--max-new-tokens", "4", "--conversation", fact, "And in 2018?"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"And in 2018? → {answer}"
    assert main(["ask", "--run", str(out), "--as-of", "someday", "x"]) == 2
    assert "cannot read a time from 'someday'" in capsys.readouterr().err


def test_the_feed_forward_memory_defaults_to_a_per_example_budget():
    def settings(method="casm", **args):
        writer = build_method(method, args)
        writer = getattr(writer, "writer", writer)
        return writer.lr, writer.top_t, writer.budget

    assert settings() == settings("smf") == settings(scope="all") == (5.0, 2048, "example")
    assert settings(top_t="100", budget="batch") == (5.0, 100, "batch")
    assert settings(memory="product_key") == settings("smf", memory="product_key") == (1e4, 1024, "batch")
    with pytest.raises(ValueError, match="CASMConfig.budget: expected one of 'batch', 'example', got 'token'"):
        build_method("casm", {"budget": "token"})


def test_the_matcher_asks_the_model_reading_no_memory(make_model, tokenizer, training_args, stream, monkeypatch):
    import retain.methods.casm as casm

    trainer, method = casm_trainer(make_model, tokenizer, training_args)
    trainer.fit(stream)
    model = trainer.model.eval()
    batch = tokenizer([HARBOUR], return_tensors="pt")
    method.route(model, [f"[2018] {HARBOUR}"], ENCODE)
    before = method.table.memory.table_of
    with torch.no_grad(), method.table.pretrained():
        asked = model(**batch).logits
    torch.testing.assert_close(asked, make_model()(**batch).logits)  # the pretrained model: no memory read
    assert method.table.memory.table_of is before  # reads go on as routed
    with torch.no_grad():
        assert not torch.allclose(asked, model(**batch).logits)
    # The router hands the matcher that context; with ask=false, none.
    handed = []
    monkeypatch.setattr(casm, "model_matcher", lambda model, encode, pretrained=None, answers=None:
                        handed.append((pretrained, answers)))
    method.route(model, [HARBOUR], ENCODE)
    method.config.ask = False
    method.route(model, [HARBOUR], ENCODE)
    # One store of the model's answers for every batch: they read no memory, so no training changes them.
    assert handed == [(method.table.pretrained, method.answers), (None, method.answers)]
