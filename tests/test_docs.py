"""The docs are true on a fresh clone. Every command in README.md and docs/*.md is checked against the code as
written: a `retain` command parses with the CLI's own parsers and builds its methods; a file, script, Makefile target
or config it names exists, and a script takes every flag it is given. The README's quick start runs on the tiny model
and asks about an entity of the stream it generates, and every Python snippet runs on the tiny model (one holding a
placeholder, `...`, only compiles and imports what it names)."""

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

import retain
from retain import ContinualTrainingArguments
from retain.cli import CompareArguments, RunArguments, _parse_arguments, _parse_method_args, build_parser, main
from retain.methods import METHODS, build_method

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LAUNCHERS = ("torchrun", "accelerate", "sbatch")


def blocks(language: str) -> list[tuple[str, str]]:
    """(file, code) of every fenced block in `language`."""
    return [(path.name, code) for path in DOCS
            for lang, code in re.findall(r"```(\w*)\n(.*?)```", path.read_text(encoding="utf-8"), re.S) if lang == language]


def commands() -> list[tuple[str, list[str]]]:
    found = []
    for name, code in blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
                words.pop(0)
            if words:
                found.append((name, words))
    return found


def retain_arguments(words: list[str]) -> list[str] | None:
    """The arguments a command gives retain's CLI: `retain ARGS`, `… -m retain.cli ARGS`, `… retain.sbatch ARGS`."""
    if words[0] == "retain":
        return words[1:]
    for index, word in enumerate(words):
        if word == "retain.cli" and words[index - 1] == "-m" or word.endswith("retain.sbatch"):
            return words[index + 1:]
    return None


def check_retain(arguments: list[str], monkeypatch) -> None:
    assert not {"...", "…"} & set(arguments) and not any(a.startswith("[") for a in arguments), "a placeholder, not a command"
    command, rest = arguments[0], arguments[1:]
    if command in ("run", "compare"):
        options = RunArguments if command == "run" else CompareArguments
        # --resume takes the run's own options from its config.json: here, a run's that the docs do not show.
        monkeypatch.setattr("retain.cli._saved_options", lambda output: {"stream": "S", "method": "full_ft", "model": "tiny"})
        parsed, _ = _parse_arguments(rest, options, f"retain {command}", "")
        if "--help" in rest:
            return
        method_args = _parse_method_args(parsed.method_arg)
        if command == "run":
            build_method(parsed.method, method_args)
        else:
            for method in parsed.methods.split(","):
                name, _, kind = method.partition("=")
                build_method(kind or name, {k.partition(".")[2]: v for k, v in method_args.items() if k.startswith(f"{name}.")})
    else:
        build_parser().parse_args(arguments)


def test_every_documented_command_is_one_the_code_takes(capsys, monkeypatch):
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    checked = 0
    for name, words in commands():
        where = f"{name}: {shlex.join(words)}"
        arguments = retain_arguments(words)
        if arguments is not None:
            try:
                check_retain(arguments, monkeypatch)
            except SystemExit as stop:  # argparse's own refusal (or --help, which exits 0)
                assert stop.code == 0, f"{where}: {capsys.readouterr().err}"
            checked += 1
        elif words[0] == "make":
            assert set(words[1:]) <= targets, where
        elif words[0] not in LAUNCHERS and not words[0].endswith(("python", "bash")):
            assert (ROOT / words[0]).exists(), where  # a script of the repository
        # Every file of the repository a command names exists, and a script takes the flags it is given.
        for index, word in enumerate(words):
            if re.match(r"(examples|scripts|benchmarks|docs)/", word):
                assert (ROOT / word).exists(), f"{where}: {word} does not exist"
                if word.endswith(".py") and words[0].endswith("python"):
                    source = (ROOT / word).read_text()
                    if "from common import" in source:  # the benchmarks' shared options
                        source += (ROOT / "benchmarks" / "common.py").read_text()
                    for flag in (w for w in words[index + 1:] if w.startswith("--")):
                        assert f'"{flag}"' in source, f"{where}: {word} takes no {flag}"
    assert checked >= 30


def test_the_quick_start_runs_and_asks_about_its_own_stream(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):]
    lines = [shlex.split(line, comments=True) for line in quick[: quick.index("```python")].splitlines()
             if line.startswith("retain ")]
    assert [words[1] for words in lines] == ["generate", "compare", "ask", "ask"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "demo.yaml", tmp_path / "examples")
    fast = ["--model", "tiny", "--num_train_epochs", "1", "--max_new_tokens", "4", "--disable_tqdm", "true",
            "--fact_questions", "1", "--method-arg", "casm.k=8", "casm.top_t=8"]
    for words in lines:
        assert main(words[1:] + (fast if words[1] == "compare" else [])) == 0, words
    facts = [json.loads(line) for path in (tmp_path / "runs" / "stream").rglob("facts.jsonl")
             for line in path.read_text().splitlines()]
    for asked in (lines[2][-1], lines[3][-2]):  # the last `ask`'s last prompt is a follow-up of the one before
        subject = re.search(r"of (.+?)(?: is| in \d{4}\?)$", asked)[1]
        assert subject in {fact["subject"] for fact in facts}, f"{asked!r} asks about no entity of the generated stream"
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-3].startswith(f"{lines[2][-1]} → ") and printed[-1].startswith(f"{lines[3][-1]} → ")


@pytest.fixture
def tiny_everywhere(monkeypatch, tmp_path):
    """Snippets as written, on the tiny model, one epoch, in a scratch directory holding the repository's examples."""
    real_load, real_args = retain.load_model, ContinualTrainingArguments

    def quick_args(**options):
        return real_args(**{**options, "num_train_epochs": 1, "disable_tqdm": True, "max_new_tokens": 4})

    monkeypatch.setattr(retain, "load_model", lambda name="tiny", **kw: real_load("tiny", **kw))
    monkeypatch.setattr(retain, "ContinualTrainingArguments", quick_args)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    assert main(["generate", "temporal-facts", "--preset", "small", "--facts", "3", "--output", "runs/stream"]) == 0
    yield
    METHODS.pop("l2", None)  # the method architecture.md writes, registered by its snippet


@pytest.mark.parametrize("document", sorted({name for name, _ in blocks("python")}))
def test_every_python_snippet_runs(document, tiny_everywhere):
    namespace: dict = {}  # the snippets of one document run in order, as a reader would type them
    for name, code in blocks("python"):
        if name != document:
            continue
        compiled = compile(code, name, "exec")
        if "..." in code:  # a placeholder (your own rows): everything it imports must exist
            for module, names in re.findall(r"^from ([\w.]+) import (.+)$", code, re.M):
                imported = __import__(module, fromlist=["_"])
                assert all(hasattr(imported, n.strip()) for n in names.split("#")[0].split(",")), (name, module, names)
            continue
        exec(compiled, namespace)
    if document == "architecture.md":  # the method it writes works as a method
        stream = retain.load_stream("runs/stream")
        model, tokenizer = retain.load_model("tiny")
        args = retain.ContinualTrainingArguments(output_dir="out", report_to="none", learning_rate=1e-2)
        trainer = retain.ContinualTrainer(model, args, method=build_method("l2", {"strength": "10"}), processing_class=tokenizer)
        assert trainer.fit(stream).complete
