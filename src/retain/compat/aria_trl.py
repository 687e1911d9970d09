"""aria-trl's API on retain: change `from aria_trl import …` to `from retain.compat.aria_trl import …`.

A thin layer over retain's own code, not a second trainer: `ContinualSFTTrainer` is retain's
ContinualSFTTrainer (ARIA by default) with aria-trl's calling conventions — `tokenizer=`, `train()` on
`train_dataset` as the current task, `add_task(task_id=…)`, `consolidate_task(task_id=…)`, datasets of
`text` + integer `label` (or already tokenized), and `evaluate_all_tasks(list of eval datasets)` — and
`ARIAConfig`, `compute_continual_metrics`, `FisherConsolidator`, `PlasticityGatedMLP` and
`TaskFastAdapter` keep aria-trl's signatures. Where aria-trl's definitions are wrong, these follow
retain's, and docs/migrating-from-aria-trl.md says what differs and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments
from transformers.trainer_utils import TrainOutput

from retain import metrics
from retain.fisher import FisherAnchor, diagonal_fisher
from retain.methods.aria import ARIAConfig as RetainARIAConfig
from retain.nn.adapters import BottleneckAdapter
from retain.nn.gated_mlp import PlasticityGatedMLP as RetainGatedMLP
from retain.stream import Probe, Task
from retain.sft import ContinualSFTTrainer as RetainSFTTrainer

__all__ = ["ARIAConfig", "ContinualSFTTrainer", "FisherConsolidator", "PlasticityGatedMLP", "TaskFastAdapter",
           "compute_continual_metrics"]


@dataclass
class ARIAConfig:
    """aria-trl's ARIAConfig: its fields, defaults and meanings.

    `warmup_steps`: optimizer steps, counted from the start of training, before the gate regulariser
    applies. `consolidation_steps_per_task`: examples per task for the SPC Fisher; None: all of them.
    """

    plasticity_lambda: float = 0.01
    spc_lambda: float = 100.0
    adapter_dim: int = 64
    slow_lr_ratio: float = 0.5
    warmup_steps: int = 500
    consolidation_steps_per_task: int | None = None

    def to_retain(self) -> RetainARIAConfig:
        return RetainARIAConfig(plasticity_lambda=self.plasticity_lambda, spc_lambda=self.spc_lambda,
                                adapter_dim=self.adapter_dim, slow_lr_ratio=self.slow_lr_ratio,
                                warmup_steps=self.warmup_steps, warmup_scope="run",
                                fisher_samples=self.consolidation_steps_per_task or 0)


def compute_continual_metrics(task_accuracies: dict[int, dict[int, float]],
                              initial_accuracies: dict[int, float] | None = None) -> dict[str, float | None]:
    """aria-trl's metrics from `{trained_through_task: {eval_task: accuracy}}`, with retain's definitions.

    - avg_accuracy: the mean accuracy over all tasks after the last one (aria-trl averaged every row's
      lower triangle, mixing in scores from before later tasks could cause any forgetting);
    - forgetting: Chaudhry et al.'s, the best earlier accuracy on a task minus its final one (aria-trl used
      the accuracy right after the task, not the best one);
    - bwt: backward transfer, final minus right-after accuracy (negative = forgetting);
    - forward_transfer: accuracy on a task just before training it minus the untrained model's
      (`initial_accuracies`); None without them (aria-trl subtracted 0.5, right only for balanced binary tasks).
    """
    if not task_accuracies:
        raise ValueError("compute_continual_metrics: no accuracies given")
    size = max(max(task_accuracies), *(max(row) for row in task_accuracies.values() if row)) + 1
    matrix = [[task_accuracies.get(i, {}).get(j) for j in range(size)] for i in range(size)]
    last = max(task_accuracies)
    matrix = matrix[: last + 1]
    final = [matrix[last][j] for j in range(last + 1)]
    square = [row[: last + 1] for row in matrix]
    initial = [None if initial_accuracies is None else initial_accuracies.get(j) for j in range(last + 1)]
    return {"avg_accuracy": metrics.mean(final), "forgetting": metrics.forgetting(square), "bwt": metrics.bwt(square),
            "forward_transfer": metrics.fwt(square, initial) if initial_accuracies is not None else None}


class TaskFastAdapter(BottleneckAdapter):
    """aria-trl's TaskFastAdapter(d_model, adapter_dim): x + up(relu(down(x))), `up` zero-initialised."""

    def __init__(self, d_model: int, adapter_dim: int = 64) -> None:
        super().__init__(d_model, adapter_dim)
        self.d_model, self.adapter_dim = d_model, adapter_dim
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)

    def freeze(self) -> None:
        self.requires_grad_(False)

    def unfreeze(self) -> None:
        self.requires_grad_(True)


class _FeedForward(nn.Module):
    """A GPT-2-layout block (c_fc → activation → c_proj) built from sizes, for the standalone PlasticityGatedMLP."""

    def __init__(self, d_model: int, d_ff: int, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.c_fc, self.c_proj, self.act = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class PlasticityGatedMLP(RetainGatedMLP):
    """aria-trl's PlasticityGatedMLP(d_model, d_ff, …) on retain's: out = π·fast(x) + (1−π)·slow(x).

    The slow pathway is a new feed-forward block of these sizes and the fast one starts as its copy, so
    the mix computes the slow block exactly until training moves them apart (aria-trl drew the two at
    random, independently). `last_plasticity_loss` is plasticity_lambda · mean π(1−π), which pulls π
    toward 0 or 1 (aria-trl's λ / mean π(1−π) pushed it toward ½). It applies once `warmup_steps`
    forward passes have run, as in aria-trl.
    """

    def __init__(self, d_model: int, d_ff: int, plasticity_lambda: float = 0.01, warmup_steps: int = 500,
                 dropout: float = 0.1, activation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__(_FeedForward(d_model, d_ff, activation or nn.functional.gelu), d_model)
        self.dropout = nn.Dropout(dropout)
        self.plasticity_lambda, self.warmup_steps = plasticity_lambda, warmup_steps
        self.step, self.mean_gate = 0, 0.5
        self.last_plasticity_loss = torch.tensor(0.0)

    def forward(self, x: torch.Tensor, force_slow: bool = False) -> torch.Tensor:  # type: ignore[override]
        self.force_slow = force_slow
        out = self.dropout(super().forward(x))
        pi = self.plasticity if self.plasticity is not None else torch.zeros(x.shape[:-1], device=x.device)
        self.mean_gate = float(pi.detach().mean())
        active = self.step >= self.warmup_steps and not force_slow
        self.last_plasticity_loss = self.plasticity_lambda * (pi * (1 - pi)).mean() if active else x.new_zeros(())
        self.step += 1
        return out

    def slow_parameters(self) -> list[nn.Parameter]:
        return list(self.slow.parameters())

    def slow_grad_multiplier(self) -> float:
        """Gradient dampening multiplier of the slow pathway: 1 − mean π of the last forward."""
        return 1.0 - self.mean_gate

    def reset_step(self) -> None:
        self.step = 0


class FisherConsolidator:
    """aria-trl's FisherConsolidator(model, device) on retain's diagonal Fisher and anchor.

    `consolidate(task_id, loader, max_steps=None)` estimates the diagonal Fisher of every trainable weight
    outside ARIA's fast pathways and gates (aria-trl's choice of protected weights) from per-example
    gradients: each batch is split into single examples, since squaring a batch-mean gradient measures
    the gradient's mean, not its second moment. `max_steps` limits the batches read. Tasks are merged
    into one (F, θ*) pair (`retain.fisher.FisherAnchor`), exact for the penalty's gradient, so memory
    does not grow with tasks. `compute_spc_loss(global_step)` is Σ F(θ−θ*)² (0 before the first task).
    """

    def __init__(self, model: nn.Module, device: torch.device | str) -> None:
        self.model, self.device = model, torch.device(device)
        self.anchor = FisherAnchor()
        self.tasks: list[int] = []

    def _protected_params(self) -> dict[str, nn.Parameter]:
        fast = {id(p) for m in self.model.modules() if isinstance(m, RetainGatedMLP)
                for part in (m.fast, m.fast_delta, m.gate) if part is not None for p in part.parameters()}
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in fast}

    def consolidate(self, task_id: int, eval_loader: Iterable[dict[str, torch.Tensor]], max_steps: int | None = None) -> None:
        params = self._protected_params()
        fisher = diagonal_fisher(self.model, _single_examples(eval_loader, max_steps), params)
        self.anchor.add(params, fisher)
        self.tasks.append(task_id)

    def compute_spc_loss(self, current_step: int = 0) -> torch.Tensor:
        penalty = self.anchor.penalty(self.model)
        return penalty if penalty is not None else torch.zeros((), device=self.device)

    def reset(self) -> None:
        self.anchor, self.tasks = FisherAnchor(), []


def _single_examples(loader: Iterable[dict[str, torch.Tensor]], max_steps: int | None) -> Iterable[dict[str, torch.Tensor]]:
    for index, batch in enumerate(loader):
        if max_steps is not None and index >= max_steps:
            return
        batch = dict(batch)
        if "label" in batch and "labels" not in batch:  # datasets name it label; models want labels
            batch["labels"] = batch.pop("label")
        for row in range(len(next(iter(batch.values())))):
            yield {k: v[row : row + 1] for k, v in batch.items()}


class ContinualSFTTrainer(RetainSFTTrainer):
    """retain's ContinualSFTTrainer with aria-trl's calling conventions (see the module docstring).

        trainer = ContinualSFTTrainer(model=model, tokenizer=tokenizer, args=args, train_dataset=task1_train,
                                      eval_dataset=task1_eval, aria_config=aria_config)
        trainer.train()                      # the current task: train_dataset
        trainer.consolidate_task(task_id=0)
        trainer.add_task(task_id=1)
        trainer.train_dataset, trainer.eval_dataset = task2_train, task2_eval
        trainer.train()
        trainer.consolidate_task(task_id=1)
        metrics = trainer.evaluate_all_tasks([task1_eval, task2_eval])

    After each consolidation every eval dataset seen so far is scored, so `evaluate_all_tasks` can
    return the accuracy matrix and the continual metrics (`compute_continual_metrics`).
    """

    def __init__(self, model: PreTrainedModel | nn.Module, args: TrainingArguments | None = None,
                 train_dataset: Dataset | None = None, eval_dataset: Dataset | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None, aria_config: ARIAConfig | dict | Any = None,
                 processing_class: PreTrainedTokenizerBase | None = None, consolidate_after_task: bool = True,
                 freeze_old_adapters: bool = True, **kwargs: Any) -> None:
        if isinstance(aria_config, dict):
            aria_config = ARIAConfig(**aria_config)
        if isinstance(aria_config, ARIAConfig):
            aria_config = aria_config.to_retain()
        super().__init__(model, args, aria_config=aria_config, processing_class=processing_class or tokenizer, **kwargs)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.task_id = 0
        self.accuracies: dict[int, dict[int, float]] = {}  # after task i: {eval set j: accuracy}
        self._eval_sets: dict[int, Dataset] = {}

    def train(self, *args: Any, **kwargs: Any) -> TrainOutput:  # type: ignore[override]
        """Train the current task (task_id) on `train_dataset`, as aria-trl does."""
        if self.train_dataset is None:
            raise ValueError("train: set trainer.train_dataset to the current task's data first")
        if self.eval_dataset is not None:
            self._eval_sets[self.task_id] = self.eval_dataset
        probes = self._probes(self.eval_dataset if self.eval_dataset is not None else self.train_dataset)
        task = Task(name=f"task-{self.task_id}", train=self._examples(self.train_dataset), probes=probes)
        return super().add_task(task)

    def add_task(self, task: Task | Dataset | None = None, name: str | None = None, probes: Sequence[Any] = (),
                 task_id: int | None = None) -> TrainOutput | int:  # type: ignore[override]
        """aria-trl's `add_task(task_id=…)`: the next `train()` trains task `task_id` (returned). Given a Task or
        a Dataset, retain's: train on it now."""
        if task is not None:
            return super().add_task(task, name=name, probes=probes)
        self.task_id = len(self.tasks) if task_id is None else task_id
        return self.task_id

    def consolidate_task(self, task_id: int | None = None) -> None:  # type: ignore[override]
        """End the current task (Fisher, adapter frozen, prototype), then score every eval set seen so far."""
        if task_id is not None and task_id != self.task_id:
            raise ValueError(f"consolidate_task: task {task_id} is not the one just trained ({self.task_id})")
        super().consolidate_task()
        self.accuracies[self.task_id] = {j: self._accuracy(data) for j, data in sorted(self._eval_sets.items())}

    def evaluate_all_tasks(self, tasks: Sequence[Any] | None = None, general: Sequence[str] = (),
                           label: str = "") -> Any:  # type: ignore[override]
        """With a list of eval datasets (aria-trl's `all_tasks`): their accuracies now, the accuracy matrix and the
        continual metrics. With Tasks or nothing: retain's EvalRow."""
        if not tasks or not isinstance(tasks[0], Dataset):
            return super().evaluate_all_tasks(tasks, general, label)
        final = {j: self._accuracy(data) for j, data in enumerate(tasks)}
        self.accuracies[self.task_id] = final
        return {"task_accuracies": final, "accuracy_matrix": dict(self.accuracies),
                **compute_continual_metrics(self.accuracies)}

    # -- aria-trl's datasets as retain's examples -----------------------------------------------------------

    def _pairs(self, data: Dataset) -> list[tuple[str, str]]:
        """(input, answer) per row: a classifier's `text` (or tokenized `input_ids`, decoded back to text) and
        the name of its integer `label`; a language model's `prompt` and `completion`."""
        labels = self.encoding.labels
        if labels is None:
            if not {"prompt", "completion"} <= set(data.column_names):
                raise ValueError(f"a causal language model's datasets need 'prompt' and 'completion' columns to be "
                                 f"trained and scored, got {data.column_names}")
            return [(row["prompt"], row["completion"]) for row in data]
        pairs = []
        for row in data:
            if "text" in row:
                text = row["text"]
            elif "input_ids" in row:
                mask = row.get("attention_mask") or [1] * len(row["input_ids"])
                text = self.processing_class.decode([i for i, m in zip(row["input_ids"], mask) if m], skip_special_tokens=True)
            else:
                raise ValueError(f"a classifier's dataset rows need 'text' or 'input_ids', got {sorted(row)}")
            label = row.get("label", row.get("labels"))
            pairs.append((text, self._label_name(label[0] if isinstance(label, list) else label)))
        return pairs

    def _label_name(self, label: Any) -> str:
        labels = self.encoding.labels
        if isinstance(label, str) and label in labels:
            return label
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(labels):
            raise ValueError(f"label {label!r} is not a class of the model ({len(labels)} classes: "
                             f"0 … {len(labels) - 1} or {labels})")
        return labels[label]

    def _examples(self, data: Dataset) -> list[dict[str, str]]:
        return [{"prompt": text, "completion": answer} for text, answer in self._pairs(data)]

    def _probes(self, data: Dataset) -> list[Probe]:
        return [Probe(prompt=text, answer=answer.strip()) for text, answer in self._pairs(data)]

    def _accuracy(self, data: Dataset) -> float:
        scores = self.evaluator.score(self.model, self._probes(data))
        return sum(s.em for s in scores) / len(scores)
