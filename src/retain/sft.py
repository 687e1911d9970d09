"""ContinualSFTTrainer: TRL's SFTTrainer with the continual task lifecycle (ARIA unless another method is given)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments
from transformers.trainer_utils import TrainOutput
from trl import SFTTrainer

from retain.arguments import ContinualSFTConfig
from retain.methods.aria import ARIA, ARIAConfig
from retain.methods.base import Method
from retain.stream import Probe, Task
from retain.trainer import ContinualTrainer


class ContinualSFTTrainer(ContinualTrainer, SFTTrainer):
    """TRL's SFTTrainer with the continual task lifecycle; ARIA unless another method is given.

        trainer = ContinualSFTTrainer(model, args=ContinualSFTConfig(...), aria_config=ARIAConfig(...),
                                      processing_class=tokenizer)
        for task in stream.tasks:
            trainer.add_task(task)          # a Task, or a datasets.Dataset of text / prompt+completion rows
            trainer.consolidate_task()
        trainer.evaluate_all_tasks()

    SFTTrainer insists on a dataset when it is built; the first task's is given to it if passed as
    `train_dataset`, and each `add_task` brings its own. A sequence classification model (the aria-trl
    Quick Start's `AutoModelForSequenceClassification`) trains on prompt + completion rows whose
    completion is one of its labels, with its own classification loss.
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        args: TrainingArguments | None = None,
        aria_config: ARIAConfig | None = None,
        method: Method | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        train_dataset: Dataset | None = None,
        **kwargs: Any,
    ) -> None:
        if method is not None and aria_config is not None:
            raise ValueError("ContinualSFTTrainer: give aria_config= or method=, not both")
        method = method if method is not None else ARIA(aria_config)
        args = args if args is not None else ContinualSFTConfig(output_dir="retain_output")
        if train_dataset is None:
            train_dataset = Dataset.from_list([{"text": "placeholder"}])
        super().__init__(model, args, method=method, processing_class=processing_class, train_dataset=train_dataset, **kwargs)

    def _model_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool, num_items_in_batch: Any):
        if not self.encoding.generative:  # SFTTrainer's loss is a language model's; a classifier's is its own
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        return super()._model_loss(model, inputs, return_outputs, num_items_in_batch)

    def add_task(  # type: ignore[override]
        self, task: Task | Dataset, name: str | None = None, probes: Sequence[Probe | dict[str, Any]] = ()
    ) -> TrainOutput:
        """Train on `task`: a Task, or a Dataset of training rows with the `probes` that will measure it."""
        if isinstance(task, Dataset):
            task = Task(name=name or f"task-{len(self.tasks) + 1}", train=task, probes=list(probes))
        return super().add_task(task)
