"""Every registered method, and a composition, through `retain run` on the tiny model: what `make test-min` runs
against the lowest versions pyproject.toml allows, so a floor that cannot run a method is caught."""

import json

import pytest

from retain.cli import main
from retain.methods import METHODS

OPTIONS = {"smf": ["k=8", "top_t=8"], "casm": ["k=8", "top_t=8"], "aria": ["adapter_dim=4", "fisher_samples=2"],
           "ewc": ["fisher_samples=2"], "replay": ["buffer_size=4"], "lora": ["r=2"]}


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    path = tmp_path_factory.mktemp("smoke") / "stream"
    assert main(["generate", "temporal-facts", "--preset", "small", "--facts", "3", "--output", str(path)]) == 0
    return path


@pytest.mark.parametrize("method", [*sorted(METHODS), "replay+ewc"])
def test_every_method_runs_through_the_command_line(method, stream, tmp_path):
    out = tmp_path / "run"
    options = [o for part in method.split("+") for o in OPTIONS.get(part, [])]
    assert main(["run", "--method", method, "--stream", str(stream), "--output", str(out), "--model", "tiny",
                 "--num_train_epochs", "1", "--learning_rate", "0.01", "--max_new_tokens", "4", "--disable_tqdm", "true",
                 "--fact_questions", "1", *(["--method-arg", *options] if options else [])]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["complete"] and len(result["matrix"]["em"]) == 3
    trained = sum(t["optimizer_steps"] for t in result["timings"])
    assert trained > 0 if method != "rag" else trained == 0  # rag learns nothing by gradient: no training loop
    ppl = result["summary"]["general_ppl"]
    # A method that trains must change the model; rag, CASM and snapshot (scope=facts) leave general text as it was.
    assert (ppl[-1] == pytest.approx(ppl[0], rel=1e-6)) == (method in ("rag", "casm", "snapshot")), ppl


def test_a_query_is_read_in_a_persons_words():
    """The readers of time (dateparser) and of spelling (rapidfuzz), at whatever versions are installed."""
    from retain.knowledge import FactRegistry
    from retain.text import query_time

    assert [query_time(t, clock="2021-12") for t in ("in '18", "as of Sept. 2021", "two years ago", "now")] == \
        ["2018", "2021-09", "2019", "2021-12"]
    registry = FactRegistry()
    registry.observe("Velmora Port", "harbour master", "Ilse Brandvik", "2018")
    assert registry.find("Who is Velmora Prot's harbourmaster?").object == "Ilse Brandvik"
