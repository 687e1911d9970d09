"""`retain export`: a run's model as a folder that transformers (and PEFT) load, with a model card.

    from retain import recipes
    recipes.export("runs/cmp/lora", "out/lora-adapter", format="adapter")

Formats, by what the run's model is:
- `merged`: a plain `save_pretrained` folder (full_ft, ewc, replay; lora with its adapter merged into the weights).
- `adapter`: a PEFT adapter folder for the run's base model (lora).
- `retain`: the model with the layers retain added (SMF's and CASM's sparse feed-forward memory, ARIA's gated
  pathways and task adapters), loaded with `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`
  through the modeling code shipped in the folder (`modeling_retain.py`; retain need not be installed), which also
  routes inputs as the method does (ARIA's adapter per input, CASM's memory version per query time). Folding
  these layers into dense weights would change every token's output (the memory is read top-k per token, the
  pathways mixed by a per-token gate): `merged` is refused for them. CASM with `as_of` exports that one period's
  version, read by every input.
A layer the modeling code does not carry (a product-key memory) is refused by name.

Every export writes `retain-export.json` (what was exported, and the files written), so `overwrite` replaces only a
folder an export made.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import HfApi, is_offline_mode
from peft import PeftModel
from torch import nn
from transformers import AutoModelForCausalLM, GenerationConfig

from retain.models import load_model
from retain.methods.base import Exported
from retain.nn.adapters import BottleneckAdapter, TaskAdapters
from retain.nn.feed_forward_memory import MemoryProjection
from retain.nn.gated_mlp import LowRankDelta, PlasticityGatedMLP
from retain.recipes import LoadedRun, load_run
from retain.runstate import atomic_write, check_output

Format = Literal["merged", "adapter", "retain"]
FORMATS: tuple[str, ...] = ("merged", "adapter", "retain")
MARKER = "retain-export.json"
MODELING = Path(__file__).parent / "assets" / "modeling_retain.py"
# Retain's own modules the modeling code imports, shipped unchanged beside it (they import nothing else of retain).
SHIPPED = tuple(Path(__file__).parent / name for name in ("knowledge.py", "text.py", "relations.py"))


PARTS = (BottleneckAdapter, LowRankDelta)  # modules of retain's inside the layers the modeling code rebuilds


class ExportError(ValueError):
    """A run that cannot be exported in the format asked for, or an output that cannot be written."""


def export(run_dir: str | Path, output: str | Path, format: Format | None = None, as_of: str | None = None,
           overwrite: bool = False) -> Path:
    """Write `run_dir`'s model (its last checkpoint) to `output` as `format` (None: the run's natural format:
    adapter for lora, retain for a memory, merged otherwise); `as_of` picks a versioned method's period."""
    if format is not None and format not in FORMATS:
        raise ExportError(f"--format {format}: expected one of {', '.join(FORMATS)}")
    output = Path(output)
    _check_output(output, overwrite)
    run = load_run(run_dir)
    exported = run.method.export(as_of)
    model = run.model
    layers = _layers(_base(model), run.result.method)
    natural = "adapter" if isinstance(model, PeftModel) else "retain" if layers else "merged"
    format = format or natural
    _check_format(run, format, natural)
    if format == "merged":
        model = model.merge_and_unload() if isinstance(model, PeftModel) else model
    if format == "adapter":
        _check_adapter(model, Path(run_dir))
    elif format == "merged":
        _check_plain(model, run.result.method)
    staging = output.with_name(f".{output.name}.export")
    shutil.rmtree(staging, ignore_errors=True)  # a killed export's (the name is ours)
    staging.mkdir(parents=True)
    try:
        if format == "retain":
            _save_retain(model, layers, exported, staging)
        else:
            model.save_pretrained(staging)
        run.tokenizer.save_pretrained(staging)
        GenerationConfig.from_model_config(_base(model).config).save_pretrained(staging)
        (staging / "README.md").write_text(model_card(Path(run_dir), format, exported), encoding="utf-8")
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        record = {"run": str(Path(run_dir).resolve()), "method": run.result.method, "format": format, "period": exported.period,
                  "files": files}
        atomic_write(staging / MARKER, json.dumps(record, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)  # an earlier export (checked above), replaced only now that the new one is whole
    staging.rename(output)
    return output


def check_push(repo: str, folder: Path) -> None:
    """Refuse `--push-to-hub` offline, before anything is exported."""
    if is_offline_mode():
        raise ExportError(f"--push-to-hub {repo}: the Hugging Face Hub is offline here (HF_HUB_OFFLINE); export without "
                          f"it, then upload when online: hf upload {repo} {folder}")


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload an exported folder, as `push_to_hub` would; returns the repository's URL."""
    api = HfApi()
    url = api.create_repo(repo, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=folder, commit_message="retain export")
    return str(url)


def _check_output(output: Path, overwrite: bool) -> None:
    check_output(output)
    if not output.exists() or not any(output.iterdir()):
        return
    if not (output / MARKER).is_file():
        raise ExportError(f"--output {output}: holds files that an export did not write; choose an empty folder")
    if not overwrite:
        raise ExportError(f"--output {output}: already holds an export (replace it with --overwrite)")
    listed = set(json.loads((output / MARKER).read_text())["files"]) | {MARKER}
    if others := sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()
                        and str(p.relative_to(output)) not in listed):
        raise ExportError(f"--output {output}: holds files the export there did not write ({others[0]}); "
                          "--overwrite replaces only an export's own files")


def _check_format(run: LoadedRun, format: str, natural: str) -> None:
    name = run.result.method
    allowed = {"adapter": ("adapter", "merged"), "merged": ("merged",), "retain": ("retain",)}[natural]
    if format in allowed:
        return
    reasons = {
        "retain": f"{name}'s layers are read per token (a memory's top-k units, a gate between pathways, an adapter per "
                  "input), so folding them into dense weights would change every token's output; --format retain keeps "
                  "them exact",
        "merged": f"{name}'s model is a plain model: --format merged",
        "adapter": f"{name} trained a LoRA adapter: --format adapter, or merged",
    }
    raise ExportError(f"--format {format}: not available for {name}: {reasons[natural]}")


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


Layer = tuple[str, str, dict[str, int]]


def _layers(model: nn.Module, run_name: str) -> list[Layer]:
    """The layers retain added to `model`, outer ones first, as (module name, kind, options) for the modeling code.
    Any other module of retain's is refused by name: the modeling code would not rebuild it."""
    layers: list[Layer] = []
    for name, module in model.named_modules():
        if isinstance(module, MemoryProjection):
            layers.append((name, "memory", {"units": len(module.delta), "k": module.memory.k}))
        elif isinstance(module, PlasticityGatedMLP):
            rank = 0 if module.fast_delta is None else module.fast_delta.down.out_features
            layers.append((name, "gated", {"rank": rank}))
        elif isinstance(module, TaskAdapters):
            layers.append((name, "adapters", {"dim": module.dim, "count": len(module.adapters)}))
        elif type(module).__module__.startswith("retain.") and not isinstance(module, PARTS):
            raise ExportError(f"{run_name}: its model holds a {type(module).__name__} ({name}), which an export cannot "
                              "carry yet: it runs only inside retain (`retain ask`)")
    return layers


def _check_plain(model: nn.Module, run_name: str) -> None:
    """Refuse a model holding weights its architecture lacks: a plain reload would drop them silently."""
    with torch.device("meta"):
        reference = AutoModelForCausalLM.from_config(model.config)
    if extra := sorted(set(model.state_dict()) - set(reference.state_dict())):
        raise ExportError(f"{run_name}: its model holds weights that {type(reference).__name__} does not ({extra[0]}, "
                          f"{len(extra)} in all): it runs only inside retain (`retain ask`); no export yet")


def _check_adapter(model: PeftModel, run_dir: Path) -> None:
    """An adapter alone is the run's model only over the untouched base weights (lora per_task merges into them)."""
    config = json.loads((run_dir / "config.json").read_text())
    pristine = load_model(config["model"], seed=config["seed"])[0].state_dict()
    base = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v for k, v in model.state_dict().items()
            if "lora_" not in k}
    if any(k in pristine and not torch.equal(v, pristine[k]) for k, v in base.items()):
        raise ExportError("--format adapter: the run merged adapters into the base weights (lora per_task), so an "
                          "adapter alone is not its model: --format merged")


def _save_retain(model: nn.Module, layers: list[Layer], exported: Exported, folder: Path) -> None:
    """`save_pretrained` with the method's routing tensors, plus the modeling code and config that rebuild its layers
    around the weights."""
    for key, tensor in exported.tensors.items():
        model.register_buffer(f"retain_{key}", tensor.to(next(model.parameters()).device))
    model.save_pretrained(folder)
    config_file = folder / "config.json"
    config: dict[str, Any] = json.loads(config_file.read_text())
    config |= {"architectures": ["RetainForCausalLM"],
               "auto_map": {"AutoModelForCausalLM": "modeling_retain.RetainForCausalLM"},
               "retain": {"modules": [list(layer) for layer in layers], **exported.routing}}
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    (folder / "modeling_retain.py").write_text(MODELING.read_text().replace("__BASE__", type(model).__name__))
    for source in SHIPPED:
        shutil.copyfile(source, folder / source.name)


KEEPS = {
    "merged": "Everything the run's model computes: it is a plain model of its architecture.",
    "adapter": "Everything the run's model computes, as a LoRA adapter on the run's base model (PEFT).",
    "retain": "Every layer retain added, computed as retain computes it (the memory's top-k feed-forward units of each "
              "token, the gate between fast and slow pathways), and the routing of inputs: each input's task adapter "
              "(ARIA), each query's memory version by the time it names and the fact it asks about (CASM, in `generate`; "
              "`as_of=` dates queries that name no time, as `retain ask --as-of` does).",
}


def model_card(run_dir: Path, format: str, exported: Exported) -> str:
    """The folder's README.md: base model, method and options, the stream's periods, the run's results (its
    result.json), and what the export keeps and loses."""
    period = exported.period
    result = json.loads((run_dir / "result.json").read_text())
    config, summary = result["config"], result["summary"]
    library = "peft" if format == "adapter" else "transformers"
    lines = ["---", f"library_name: {library}", "tags: [retain, continual-learning]", "---", "",
             f"# {result['method']} on {result['model']}, exported by retain", "",
             "| | |", "|---|---|", f"| base model | `{result['model']}` |", f"| method | `{result['method']}` |",
             f"| method options | `{json.dumps(config.get('method_args', {}))}` |", f"| seed | {result['seed']} |",
             f"| periods (tasks, in order) | {', '.join(result['tasks'])} |", f"| format | `{format}` |"]
    if period is not None:
        lines.append(f"| memory version | {period} (every input reads it) |")
    lines += ["", "## Results (exact match, from result.json)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {_number(summary.get(key))} |" for key in ("acc", "bwt", "plasticity", "stability", "historical",
                                                                       "general_ppl_change") if key in summary]
    forms = summary.get("by_form", {})
    if forms:
        keys = ("acc", "plasticity", "stability", "historical")
        lines += ["", "Per probe form:", "", f"| form | {' | '.join(keys)} |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {form} | {' | '.join(_number(scores.get(k)) for k in keys)} |" for form, scores in forms.items()]
    lines += ["", "Exact match on each task's probes (rows: after training on each task):", "",
              f"| after | {' | '.join(result['tasks'])} |", "|---" * (len(result["tasks"]) + 1) + "|"]
    lines += [f"| {task} | {' | '.join(_number(v) for v in row)} |" for task, row in zip(result["tasks"], result["matrix"]["em"])]
    lines += ["", "## What this export keeps and loses", "", KEEPS[format]]
    if period is not None:
        lines.append(f"This folder holds one memory version, {period}'s. Lost: the choice of version by the time a query "
                     "names, and the rewriting of its time into the period that taught the fact. Every input reads the "
                     f"{period} version, as `retain ask --as-of {period}` does for a query whose fact the run does not "
                     "know. Export without --as-of to keep every version and the routing.")
    load = ("model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), FOLDER)" if format == "adapter"
            else "model = AutoModelForCausalLM.from_pretrained(FOLDER" + (", trust_remote_code=True)" if format == "retain" else ")"))
    lines += ["", "## Loading", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              *(["from peft import PeftModel"] if format == "adapter" else []), load,
              "tokenizer = AutoTokenizer.from_pretrained(FOLDER)", "```", ""]
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}"
