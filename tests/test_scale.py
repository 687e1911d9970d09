"""Two processes (torchrun, gloo on CPU) learn exactly what one does, for every method, and resume after a kill."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retain.cli import main

pytestmark = pytest.mark.scale

METHODS = ["full_ft", "lora", "ewc", "replay", "aria", "smf", "casm", "rag"]
OPTIONS = ["smf.k=8", "smf.top_t=8", "casm.k=8", "casm.top_t=8", "aria.adapter_dim=8", "aria.fisher_samples=4",
           "ewc.fisher_samples=4", "replay.ratio=0.5", "replay.buffer_size=8"]
# Adam at 1e-3 for 2 epochs: a step small enough that float rounding (padding differs between one batch of 2 and two
# of 1) stays at rounding's size instead of being amplified, as a large step on a random tiny model would.
TRAINING = ["--model", "tiny", "--num_train_epochs", "2", "--learning_rate", "1e-3", "--max_new_tokens", "6", "--fact_questions", "1",
            "--disable_tqdm", "true", "--seed", "0"]
WEIGHT_TOLERANCE = 1e-3  # max |Δw| between 1 and 2 processes (measured: ≤ 4e-4, EWC's λ=1e6 magnifying Fisher rounding)
PPL_TOLERANCE = 1e-4  # relative
# DeepSpeed sums gradients in its own buckets and order (below), so its perplexity drifts further from DDP's: measured
# 1.5e-4 relative with seven fact-question wordings (2.3e4 perplexity of the random model, 1.5e-4 nats of loss).
ZERO_PPL_TOLERANCE = 1e-3


def torchrun(*args: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "retain.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    # The global batch (2) divides every task's examples, so no epoch ends on a batch that one process would leave
    # short and two would complete with repeated examples (accelerate's even_batches). Two tasks: the second trains on
    # what the first left, which is all that data parallelism, a kill and a resume can get wrong between tasks.
    assert main(["generate", "temporal-facts", "--preset", "small", "--facts", "6", "--periods", "2018,2020",
                 "--output", str(root / "stream")]) == 0
    return root / "stream"


@pytest.fixture(scope="module")
def runs(stream):
    root = stream.parent
    common = ["--methods", ",".join(METHODS), "--stream", str(stream), *TRAINING, "--method-arg", *OPTIONS]
    two = torchrun("compare", *common, "--per_device_train_batch_size", "1", "--output", str(root / "two"))
    assert main(["compare", *common, "--per_device_train_batch_size", "2", "--output", str(root / "one")]) == 0
    output, _ = two.communicate(timeout=900)
    assert two.returncode == 0, output[-3000:]
    return root / "one", root / "two"


def outcome(run: Path) -> tuple[dict, list[dict], dict[str, torch.Tensor]]:
    result = json.loads((run / "result.json").read_text())
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    return result, predictions, load_file(run / "checkpoints" / "task-002" / "model.safetensors")


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_learn_what_one_does(runs, method):
    (one, one_predictions, one_weights), (two, two_predictions, two_weights) = (outcome(r / method) for r in runs)
    assert two["complete"] and two["config"]["processes"] == 2
    assert [t["optimizer_steps"] for t in two["timings"]] == [t["optimizer_steps"] for t in one["timings"]]
    assert [t["train_tokens"] for t in two["timings"]] == [t["train_tokens"] for t in one["timings"]]  # all processes'
    assert two["matrix"] == one["matrix"] and two["by_form"] == one["by_form"]
    # Every probe scored once and gathered in order: the same generations, word for word.
    assert [p["prediction"] for p in two_predictions] == [p["prediction"] for p in one_predictions]
    assert [p.get("route") for p in two_predictions] == [p.get("route") for p in one_predictions]
    for a, b in zip(one["summary"]["general_ppl"], two["summary"]["general_ppl"]):
        assert b == pytest.approx(a, rel=PPL_TOLERANCE)
    assert max((one_weights[k] - two_weights[k]).abs().max().item() for k in one_weights) <= WEIGHT_TOLERANCE
    initial = {p["prompt"]: p["prediction"] for p in one_predictions if p["row"] == "initial"}
    last = [p for p in one_predictions if p["row"] == one["tasks"][-1]]
    assert any(p["prediction"] != initial[p["prompt"]] for p in last), "the runs compared learned nothing"

def test_a_killed_process_stops_the_job_and_resume_continues_it(runs, stream, tmp_path):
    out = tmp_path / "killed"
    args = ["run", "--method", "full_ft", "--stream", str(stream), *TRAINING, "--per_device_train_batch_size", "1",
            "--output", str(out)]
    job = torchrun(*args, start_new_session=True)
    latest = out / "checkpoints" / "LATEST"
    deadline = time.time() + 600
    while not (latest.is_file() and latest.read_text() == "task-001") and job.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    assert job.poll() is None and len(workers) == 2, "the job ended before a worker could be killed"
    os.kill(int(workers[-1]), signal.SIGKILL)
    job.communicate(timeout=120)
    assert job.returncode != 0, "killing one process must stop the job"
    assert not json.loads((out / "result.json").read_text())["complete"]
    assert main(["run", "--method", "full_ft", "--stream", str(stream), *TRAINING, "--per_device_train_batch_size", "2",
                 "--output", str(out), "--resume"]) == 2, "a resume on another number of processes is refused"
    resumed = torchrun(*args, "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    (whole, whole_predictions, whole_weights), (again, again_predictions, again_weights) = \
        outcome(runs[1] / "full_ft"), outcome(out)
    assert again["complete"] and again["matrix"] == whole["matrix"]
    assert [p["prediction"] for p in again_predictions] == [p["prediction"] for p in whole_predictions]
    assert all(torch.equal(whole_weights[k], again_weights[k]) for k in whole_weights)


def test_accelerate_launch_runs_the_same_job(runs, stream, tmp_path):
    config = Path(__file__).parent.parent / "examples" / "accelerate" / "ddp.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--mixed_precision", "no",
               "-m", "retain.cli", "run", "--method", "replay", "--stream", str(stream), *TRAINING,
               "--per_device_train_batch_size", "1", "--method-arg", "ratio=0.5", "buffer_size=8", "--output", str(tmp_path / "r")]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (by_torchrun, torchrun_predictions, _), (launched, launched_predictions, _) = outcome(runs[1] / "replay"), outcome(tmp_path / "r")
    assert launched["config"]["processes"] == 2 and launched["matrix"] == by_torchrun["matrix"]
    assert [p["prediction"] for p in launched_predictions] == [p["prediction"] for p in torchrun_predictions]


# The methods whose state DeepSpeed's partitions leave where they read it (full_ft, lora, replay), each under a stage
# where it could break: lora's adapters are parameters ZeRO-3 partitions; replay only adds examples, which ZeRO-2's
# partitioned optimizer and gradients see as full_ft's do.
DEEPSPEED = {2: ["full_ft", "replay"], 3: ["full_ft", "lora"]}


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_two_processes_learns_what_data_parallel_does(runs, stream, tmp_path, stage):
    # DeepSpeed runs on CPUs through its CPU accelerator, with gloo. ZeRO-2 partitions optimizer state and gradients,
    # ZeRO-3 the parameters too: checkpoints gather them whole, and every process scores every probe.
    config = Path(__file__).parent.parent / "examples" / "deepspeed" / f"zero{stage}.json"
    methods = DEEPSPEED[stage]
    options = [o for o in OPTIONS if o.split(".")[0] in methods]
    job = torchrun("compare", "--methods", ",".join(methods), "--stream", str(stream), *TRAINING,
                   *(["--method-arg", *options] if options else []), "--per_device_train_batch_size", "1", "--deepspeed", str(config), "--output", str(tmp_path / "r"))
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output[-3000:]
    for method in methods:
        (ddp, ddp_predictions, ddp_weights), (zero, zero_predictions, zero_weights) = \
            outcome(runs[1] / method), outcome(tmp_path / "r" / method)
        assert zero["config"]["processes"] == 2 and zero["matrix"] == ddp["matrix"]
        assert [p["prediction"] for p in zero_predictions] == [p["prediction"] for p in ddp_predictions]
        for a, b in zip(ddp["summary"]["general_ppl"], zero["summary"]["general_ppl"]):
            assert b == pytest.approx(a, rel=ZERO_PPL_TOLERANCE)
        # DeepSpeed sums gradients in its own buckets and order, so float rounding differs from DDP's; Adam's normalised
        # step turns a rounding difference on a near-zero gradient into a step of up to the learning rate (1e-3). So a
        # handful of weights may differ by a few steps, every other one by rounding (measured: 7 of 3.2M above 1e-4).
        assert zero_weights.keys() == ddp_weights.keys()
        difference = torch.cat([(ddp_weights[k] - zero_weights[k]).abs().flatten() for k in ddp_weights])
        assert difference.max() <= 5e-3 and (difference > 1e-4).sum() <= 1e-5 * difference.numel()


def test_a_method_deepspeed_would_partition_the_state_of_is_refused(stream, tmp_path):
    config = Path(__file__).parent.parent / "examples" / "deepspeed" / "zero2.json"
    job = torchrun("run", "--method", "ewc", "--stream", str(stream), *TRAINING, "--deepspeed", str(config),
                   "--output", str(tmp_path / "r"))
    output, _ = job.communicate(timeout=300)
    assert job.returncode != 0 and "ewc keeps state per whole parameter that DeepSpeed would shard" in output
    assert not (tmp_path / "r" / "config.json").exists()


def test_fsdp_that_would_not_shard_is_refused(stream, tmp_path):
    # One process: transformers refuses FSDP itself. Several on CPUs: accelerate would quietly not shard.
    job = torchrun("run", "--method", "full_ft", "--stream", str(stream), *TRAINING, "--fsdp", "full_shard",
                   "--output", str(tmp_path / "r"))
    output, _ = job.communicate(timeout=300)
    assert job.returncode != 0 and "--fsdp: accelerate shards with FSDP only on GPUs" in output
    assert not (tmp_path / "r" / "config.json").exists()  # refused before the run directory was opened


def test_an_accelerate_fsdp_config_that_would_not_shard_is_refused(stream, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp.yaml` sets
    assert main(["run", "--method", "full_ft", "--stream", str(stream), *TRAINING, "--output", str(tmp_path / "r")]) == 2
    assert "--fsdp: accelerate shards with FSDP only on GPUs" in capsys.readouterr().err
    assert not (tmp_path / "r" / "config.json").exists()


def test_under_fsdp_checkpoints_are_whole_and_ewc_smf_casm_and_aria_follow_the_shards(tmp_path):
    # FSDP2 shards on gloo too; accelerate applies it only on GPUs, so the worker drives torch's fully_shard directly.
    script = Path(__file__).parent / "sharded_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(tmp_path / "checkpoint")]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    for check in ("checkpoint: weights equal", "ewc: fisher, anchors, penalty and gradients equal",
                  "smf: selected slots, gradients and step equal", "casm: versions, routed logits and rollback equal",
                  "aria: gradients, fisher, prototypes, routes and routed logits equal, isolated too; adapters not added "
                  "after sharding"):
        assert check in done.stdout, done.stdout


# (method, runs under FSDP, runs under DeepSpeed)
SHARDING = [("full_ft", True, True), ("lora", True, True), ("replay", True, True), ("ewc", True, False),
            ("replay+ewc", True, False), ("smf", True, False), ("smf+replay", True, False), ("casm", True, False),
            ("aria", True, False), ("aria+replay", True, False)]


@pytest.mark.parametrize("method, fsdp, deepspeed", SHARDING)
def test_a_method_runs_under_the_sharding_its_state_follows(method, fsdp, deepspeed):
    from retain.methods import MethodError, build_method
    from retain.methods.base import check_sharding

    for backend, runs in (("fsdp", fsdp), ("deepspeed", deepspeed)):
        check = lambda: check_sharding(build_method(method), fsdp_asked=backend == "fsdp", fsdp=backend == "fsdp",
                                       deepspeed=backend == "deepspeed")
        if runs:
            check()
        else:
            with pytest.raises(MethodError, match="keeps state per whole parameter"):
                check()
    check_sharding(build_method(method), fsdp_asked=False, fsdp=False, deepspeed=False)  # data parallel: every method


def test_a_retrofitted_product_key_memory_is_not_run_sharded():
    from retain.methods import MethodError, build_method
    from retain.methods.base import check_sharding

    for method in ("smf", "casm"):
        with pytest.raises(MethodError, match=f"{method} keeps state per whole parameter that FSDP would shard"):
            check_sharding(build_method(method, {"memory": "product_key"}), fsdp_asked=True, fsdp=True, deepspeed=False)


SBATCH = Path(__file__).parent.parent / "examples" / "slurm" / "retain.sbatch"


def dry_run(env: dict[str, str], *retain_args: str) -> list[str]:
    done = subprocess.run(["bash", str(SBATCH), *retain_args], env={**os.environ, **env, "DRY_RUN": "1",
                                                                   "PYTHON": sys.executable},
                          capture_output=True, text=True, check=True)
    return shlex.split(done.stdout)


def test_the_slurm_script_launches_one_node_and_its_command_runs_here(runs, stream, tmp_path):
    out = tmp_path / "slurm"
    command = dry_run({"SLURM_NNODES": "1", "SLURM_GPUS_ON_NODE": "2", "SLURM_CPUS_PER_TASK": "2"},
                      "run", "--method", "lora", "--stream", str(stream), *TRAINING, "--per_device_train_batch_size", "1",
                      "--output", str(out))
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, capture_output=True,
                          text=True, timeout=600)  # the printed command itself, on this machine's CPUs
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (reference, reference_predictions, _), (result, predictions, _) = outcome(runs[1] / "lora"), outcome(out)
    assert result["config"]["processes"] == 2 and result["matrix"] == reference["matrix"]
    assert [p["prediction"] for p in predictions] == [p["prediction"] for p in reference_predictions]


def test_the_slurm_script_rendezvous_several_nodes():
    command = dry_run({"SLURM_NNODES": "4", "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_ID": "4242", "MASTER_ADDR": "node017"},
                      "compare", "--methods", "full_ft,ewc", "--stream", "S", "--output", "R")
    assert command[:2] == ["srun", "--kill-on-bad-exit=1"]
    launch = command[command.index("torch.distributed.run") + 1 : command.index("retain.cli") - 1]
    assert launch == ["--nnodes", "4", "--rdzv_id", "4242", "--rdzv_backend", "c10d", "--rdzv_endpoint", "node017:29500",
                      "--nproc_per_node", "8"]
    assert command[command.index("retain.cli") + 1 :] == ["compare", "--methods", "full_ft,ewc", "--stream", "S", "--output", "R"]


def test_the_accelerate_configs_are_valid_for_the_embedded_model():
    from accelerate.commands.config.config_args import load_config_from_file
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    examples = Path(__file__).parent.parent / "examples" / "accelerate"
    ddp, fsdp = (load_config_from_file(str(examples / name)) for name in ("ddp.yaml", "fsdp.yaml"))
    assert ddp.distributed_type == "MULTI_GPU" and ddp.num_processes == 2
    assert fsdp.distributed_type == "FSDP" and fsdp.fsdp_config["fsdp_version"] == 2
    # It wraps the embedded model's decoder layers, and checkpoints whole tensors as one process writes them.
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == LlamaDecoderLayer.__name__
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
