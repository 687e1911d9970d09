import json

import pytest
from datasets import Dataset

from retain import Probe, Stream, StreamError, Task, load_stream, save_stream


def write_stream(root, spec: str, files: dict[str, str]):
    root.mkdir(parents=True, exist_ok=True)
    (root / "stream.yaml").write_text(spec)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


GOOD_SPEC = """name: s
tasks:
  - name: "2018"
    period: 2018
    train: a/train.jsonl
    probes: a/probes.jsonl
    facts: a/facts.jsonl
  - name: "2020"
    train: b/train.jsonl
    probes: b/probes.jsonl
general: general.jsonl
"""


def good_files():
    return {
        "a/train.jsonl": '{"text": "X is 1."}\n\n{"prompt": "Q: X?", "completion": " 1"}\n',
        "a/probes.jsonl": '{"prompt": "X is", "answer": "1", "kind": "new", "aliases": ["one"]}\n',
        "a/facts.jsonl": '{"subject": "X", "relation": "is", "object": "1", "valid_from": "2018"}\n',
        "b/train.jsonl": '{"text": "Y is 2."}\n',
        "b/probes.jsonl": '{"prompt": "Y is", "answer": "2", "choices": ["1", "2"]}\n',
        "general.jsonl": '{"text": "Plain text."}\n',
    }


def test_load_valid_stream(tmp_path):
    stream = load_stream(write_stream(tmp_path, GOOD_SPEC, good_files()))
    assert stream.task_names == ["2018", "2020"]
    first, second = stream.tasks
    assert first.period == "2018" and second.period is None
    assert first.train == [{"text": "X is 1."}, {"prompt": "Q: X?", "completion": " 1"}]
    assert first.probes == [Probe(prompt="X is", answer="1", kind="new", aliases=("one",))]
    assert first.facts == [{"subject": "X", "relation": "is", "object": "1", "valid_from": "2018"}]
    assert second.probes[0].choices == ("1", "2")
    assert stream.general == ["Plain text."]


def test_save_and_load_round_trip(tmp_path):
    stream = load_stream(write_stream(tmp_path / "in", GOOD_SPEC, good_files()))
    again = load_stream(save_stream(stream, tmp_path / "out"))
    assert again == stream


@pytest.mark.parametrize(
    "file, text, message",
    [
        ("a/train.jsonl", '{"text": "ok"}\n{"text": \n', r"a/train.jsonl:2: invalid JSON"),
        ("a/train.jsonl", '{"text": "ok"}\n{"prompt": "p"}\n', r"a/train.jsonl:2: missing field 'completion'"),
        ("a/train.jsonl", '{"body": "x"}\n', r"a/train.jsonl:1: a training example needs 'text'"),
        ("a/train.jsonl", "\n\n", r"a/train.jsonl: task '2018' has no training examples"),
        ("a/probes.jsonl", '{"prompt": "X is"}\n', r"a/probes.jsonl:1: missing field 'answer'"),
        ("a/probes.jsonl", '{"prompt": "X is", "answer": ""}\n', r"a/probes.jsonl:1: 'answer' must be a non-empty string"),
        ("a/probes.jsonl", '{"prompt": "X", "answer": "3", "choices": ["1", "2"]}\n', r"a/probes.jsonl:1: answer '3' is not one of"),
        ("a/probes.jsonl", '{"prompt": "X", "answer": "1", "colour": "red"}\n', r"a/probes.jsonl:1: unknown field 'colour'"),
        ("a/probes.jsonl", '["X", "1"]\n', r"a/probes.jsonl:1: expected an object"),
        ("a/facts.jsonl", '{"subject": "X", "relation": "is", "object": "1"}\n', r"a/facts.jsonl:1: missing field 'valid_from'"),
        ("a/facts.jsonl", '{"subject": "X", "relation": "is", "object": "1", "valid_from": "2018", "subject_aliases": "Y"}\n',
         r"a/facts.jsonl:1: 'subject_aliases' must be a list of the subject's other names"),
        ("a/facts.jsonl", '{"subject": "X", "relation": "is", "object": "1", "valid_from": "2018", "relation_aliases": [""]}\n',
         r"a/facts.jsonl:1: 'relation_aliases' must be a list of the relation's other wordings"),
        ("general.jsonl", '{"text": 3}\n', r"general.jsonl:1: 'text' must be a non-empty string"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, file, text, message):
    files = good_files() | {file: text}
    with pytest.raises(StreamError, match=message):
        load_stream(write_stream(tmp_path, GOOD_SPEC, files))


def test_missing_file_is_named(tmp_path):
    files = good_files()
    del files["b/probes.jsonl"]
    with pytest.raises(StreamError, match=r"b/probes.jsonl: file not found"):
        load_stream(write_stream(tmp_path, GOOD_SPEC, files))


def test_missing_stream_yaml(tmp_path):
    with pytest.raises(StreamError, match=r"stream.yaml: not found"):
        load_stream(tmp_path)


def test_duplicate_task_name(tmp_path):
    spec = GOOD_SPEC.replace('name: "2020"', 'name: "2018"')
    with pytest.raises(StreamError, match=r"stream.yaml: .*duplicate task name '2018'"):
        load_stream(write_stream(tmp_path, spec, good_files()))


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(StreamError, match=r"stream.yaml:4: invalid YAML"):
        load_stream(write_stream(tmp_path, "name: s\ntasks:\n  - name: [unclosed\n", {}))


def test_task_entry_missing_probes(tmp_path):
    spec = GOOD_SPEC.replace("    probes: b/probes.jsonl\n", "")
    with pytest.raises(StreamError, match=r"stream.yaml: tasks\[1\]: missing field 'probes'"):
        load_stream(write_stream(tmp_path, spec, good_files()))


def test_empty_task_list(tmp_path):
    with pytest.raises(StreamError, match=r"'tasks' must be a non-empty list"):
        load_stream(write_stream(tmp_path, "name: s\ntasks: []\n", {}))


def test_build_in_python_from_lists_and_datasets():
    train = Dataset.from_list([{"text": "A is b."}, {"text": "C is d."}])
    probes = Dataset.from_list([{"prompt": "A is", "answer": "b", "kind": "new"}])
    task = Task(name="t", train=train, probes=probes)
    assert task.train == [{"text": "A is b."}, {"text": "C is d."}]
    assert task.probes == [Probe(prompt="A is", answer="b", kind="new")]
    stream = Stream(name="s", tasks=[task, Task(name="u", train=[{"text": "x"}], probes=[Probe("p", "a")])])
    assert len(stream) == 2


def test_python_validation_names_the_object():
    with pytest.raises(StreamError, match=r"task 't' probes\[0\]: missing field 'answer'"):
        Task(name="t", train=[{"text": "x"}], probes=[{"prompt": "p"}])
    with pytest.raises(StreamError, match=r"task 't': has no training examples"):
        Task(name="t", train=[], probes=[Probe("p", "a")])
    task = Task(name="t", train=[{"text": "x"}], probes=[Probe("p", "a")])
    with pytest.raises(StreamError, match=r"duplicate task name 't'"):
        Stream(name="s", tasks=[task, task])
    with pytest.raises(StreamError, match=r"has no tasks"):
        Stream(name="s", tasks=[])


def test_saved_probe_records_are_json_lines(tmp_path):
    task = Task(name="t/1", train=[{"text": "x"}], probes=[Probe("p", "a", aliases=("b",))])
    save_stream(Stream(name="s", tasks=[task]), tmp_path)
    lines = (tmp_path / "t_1" / "probes.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"prompt": "p", "answer": "a", "kind": "", "aliases": ["b"]}]
