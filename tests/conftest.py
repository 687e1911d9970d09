import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from retain import ContinualTrainingArguments, Probe, Stream, Task  # noqa: E402
from retain.models import load_tokenizer, tiny_model  # noqa: E402

# `make test` runs two pytest workers on two cores: one thread each, or they fight over the cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
# As in `retain`'s command line: the imported libraries' objects are kept out of every gc.collect() the Trainer runs.
gc.freeze()


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer("tiny")


@pytest.fixture
def make_model(tokenizer):
    def make(seed: int = 0):
        return tiny_model(tokenizer, seed=seed)

    return make


def fact_task(name: str, facts: list[tuple[str, str]], repeats: int = 2) -> Task:
    train = [{"text": f"{prompt} {answer}."} for prompt, answer in facts] * repeats
    probes = [Probe(prompt=prompt, answer=answer, kind="recall") for prompt, answer in facts]
    return Task(name=name, train=train, probes=probes)


@pytest.fixture
def small_stream() -> Stream:
    return Stream(
        name="small",
        tasks=[
            fact_task("one", [("The harbour master of Velmora is", "Ilse Brandvik"), ("The capital of Quessary is", "Tolvane")]),
            fact_task("two", [("The director of Sablewood is", "Oona Terrelle"), ("The currency of Marrow is", "the vell")]),
            fact_task("three", [("The conductor of Vessany is", "Ruben Haldane"), ("The lake of Ostmark is", "Lake Corrow")]),
        ],
        general=["The water cycle moves water between the sea, the air and the land.", "Plants turn light into sugar."],
        background=["Sound travels faster through water than through air.", "Bread rises when yeast feeds on sugar.",
                    "Glaciers carve wide valleys as they slide downhill."],
    )


@pytest.fixture
def training_args(tmp_path):
    def make(**overrides):
        values = dict(
            output_dir=str(tmp_path / "trainer"), learning_rate=1e-2, num_train_epochs=3,
            per_device_train_batch_size=2, per_device_eval_batch_size=8, max_new_tokens=8,
            disable_tqdm=True, seed=0, report_to="none", logging_strategy="no",
        )
        return ContinualTrainingArguments(**(values | overrides))

    return make


# The options of `finished_run`'s run (tests/test_sandbox.py resumes it with the same).
FINISHED_OPTIONS = ["--model", "tiny", "--num_train_epochs", "1", "--max_new_tokens", "4", "--disable_tqdm", "true",
                    "--learning_rate", "0.01", "--method", "ewc", "--method-arg", "fisher_samples=4"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """ROOT with a small temporal-facts stream (ROOT/stream) and a finished ewc run on it (ROOT/run), made once per
    test process: copy what a test changes."""
    from retain.cli import main

    root = tmp_path_factory.mktemp("finished")
    assert main(["generate", "temporal-facts", "--preset", "small", "--facts", "3", "--output", str(root / "stream")]) == 0
    assert main(["run", "--stream", str(root / "stream"), *FINISHED_OPTIONS, "--output", str(root / "run")]) == 0
    return root
