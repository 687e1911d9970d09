"""ContinualTrainer: a transformers.Trainer that learns a stream of tasks and measures what it keeps."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
from transformers.trainer_utils import TrainOutput
from trl import SFTConfig, SFTTrainer

from retain.evaluation import Evaluator
from retain.fact_questions import WORDINGS as FACT_WORDINGS, fact_questions, new_or_changed
from retain.methods.aria import ARIA, ARIAConfig
from retain.methods.base import IGNORE_INDEX, Features, Method, StreamData, TaskData
from retain.methods.full_ft import FullFineTuning
from retain.metrics import mean
from retain.result import EvalRow, RunResult
from retain.runstate import RunDirectory, RunDirectoryError, read_verified, verify_checkpoint, write_checkpoint
from retain.stream import Probe, Stream, Task

logger = logging.getLogger(__name__)


@dataclass
class _ContinualDefaults:
    """Defaults shared by the continual trainers' argument classes; listed first among their bases, so they win."""

    save_strategy: str = field(default="no", metadata={"help": "Trainer checkpoints; runs checkpoint per task."})
    logging_strategy: str = field(default="epoch", metadata={"help": "When the Trainer logs the training loss."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the tokenized fields as they are."})
    dataloader_pin_memory: bool = field(
        default=torch.cuda.is_available(), metadata={"help": "Pin batches in page-locked memory (helps only on GPU)."}
    )
    max_length: int = field(default=256, metadata={"help": "Training examples are truncated to this many tokens."})
    max_new_tokens: int = field(default=24, metadata={"help": "Generation budget per probe (capped near the answer's length)."})
    fact_questions: int = field(default=len(FACT_WORDINGS), metadata={
        "help": "Each new or changed fact of a task's facts.jsonl is also trained as a question in this many training "
                f"wordings (0 to {len(FACT_WORDINGS)}; 0: passages only), for every method alike."})


@dataclass
class ContinualTrainingArguments(_ContinualDefaults, TrainingArguments):
    """TrainingArguments with defaults for continual runs (checkpoints are per task, by the run directory)."""


class ContinualTrainer(Trainer):
    """Trains on tasks one after another through a `Method`'s hooks, evaluating every task after each.

    Use `fit(stream)` for the whole loop, or drive it step by step:
    `add_task(task)` (train), `consolidate_task()` (the method's end-of-task work), `evaluate_all_tasks()`.
    Each task gets a fresh optimizer and learning-rate schedule, and its own seed (`args.seed + index`),
    so a run resumed at a task boundary continues exactly as an uninterrupted run would.
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        args: TrainingArguments | None = None,
        method: Method | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        **kwargs: Any,
    ) -> None:
        if processing_class is None:
            raise ValueError("ContinualTrainer needs the tokenizer as processing_class=")
        self.method = method if method is not None else FullFineTuning()
        args = args if args is not None else ContinualTrainingArguments(output_dir="retain_output")
        set_seed(args.seed)  # before prepare: methods draw random weights there (LoRA's A, SMF's keys)
        super().__init__(
            model=self.method.prepare(model),
            args=args,
            processing_class=processing_class,
            data_collator=self._collate_training,
            **kwargs,
        )
        self.max_length: int = getattr(args, "max_length", 256)
        self.class_labels = _class_labels(self.model)
        self.evaluator = Evaluator(
            processing_class, args.per_device_eval_batch_size, getattr(args, "max_new_tokens", 24),
            progress=not args.disable_tqdm, route=self.method.route, class_labels=self.class_labels,
            prompt_text=self.method.prompt_text,
        )
        self.add_callback(_OptimizerStepHook(self))
        self.tasks: list[Task] = []
        self.last_timing: dict[str, float] = {}
        self._pending: TaskData | None = None
        self._train_tokens = 0

    # -- data ---------------------------------------------------------------------------------------

    def tokenize(self, examples: Sequence[dict[str, str]]) -> list[Features]:
        """`text` trains on every token; `prompt`+`completion` trains on the completion only. A sequence
        classification model reads the prompt and learns the completion as its class label."""
        tokenizer, eos = self.processing_class, self.processing_class.eos_token_id
        features = []
        for example in examples:
            if self.class_labels is not None:
                label = example.get("completion", "").strip()
                if label not in self.class_labels:
                    raise ValueError(f"completion {label!r} is not one of the model's labels {self.class_labels} "
                                     "(a classification model trains on prompt + completion rows whose completion is a label)")
                ids = tokenizer(example["prompt"]).input_ids[: self.max_length]
                features.append({"input_ids": ids, "labels": [self.class_labels.index(label)]})
                continue
            if "text" in example:
                ids = tokenizer(example["text"]).input_ids + [eos]
                labels = list(ids)
            else:
                prompt = tokenizer(example["prompt"]).input_ids
                completion = tokenizer(example["completion"], add_special_tokens=False).input_ids + [eos]
                ids, labels = prompt + completion, [IGNORE_INDEX] * len(prompt) + completion
            features.append({"input_ids": ids[: self.max_length], "labels": labels[: self.max_length]})
        return features

    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        pad = self.processing_class.pad_token_id

        def padded(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (width - len(values))

        labels = [f["labels"][0] for f in features] if self.class_labels is not None else \
            [padded(f["labels"], IGNORE_INDEX) for f in features]
        return {
            "input_ids": torch.tensor([padded(f["input_ids"], pad) for f in features]),
            "attention_mask": torch.tensor([padded([1] * len(f["input_ids"]), 0) for f in features]),
            "labels": torch.tensor(labels),
        }

    def _collate_training(self, features: list[Features]) -> dict[str, torch.Tensor]:
        batch = self.collate(self.method.extend_batch(features))
        self._train_tokens += int(batch["attention_mask"].sum())
        return batch

    # -- training hooks ---------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        computed = self._model_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = computed[0] if return_outputs else computed
        self.method.after_forward(model, inputs)
        penalty = self.method.penalty(model, inputs)
        if penalty is not None:
            # When the Trainer will not divide this micro-batch's loss by the accumulation steps, divide
            # the penalty here, so that it counts once per optimizer step whatever the accumulation.
            scaled = self.loss_is_scaled_for_ga
            if scaled is None:
                scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
            loss = loss + (penalty / self.current_gradient_accumulation_steps if scaled else penalty)
        return (loss, computed[1]) if return_outputs else loss

    def _model_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool, num_items_in_batch: Any):
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def create_optimizer(self, model=None):  # type: ignore[override]
        if self.optimizer is None:
            self.optimizer = self.method.create_optimizer(self.model, self.args.learning_rate)
        if self.optimizer is None:
            groups = self.method.param_groups(self.model, self.args.learning_rate)
            if groups is not None:
                # The optimizer TrainingArguments ask for, with the method's groups split by weight decay as Trainer does.
                decay = set(self.get_decay_parameter_names(self.model))
                names = {id(p): n for n, p in self.model.named_parameters()}
                split = [
                    {**group, "params": params, "weight_decay": self.args.weight_decay if decayed else 0.0}
                    for group in groups
                    for decayed in (True, False)
                    if (params := [p for p in group["params"] if (names[id(p)] in decay) == decayed])
                ]
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                self.optimizer = optimizer_cls(split, **optimizer_kwargs)
        return super().create_optimizer(model)

    def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[override]
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.method.after_backward(model)
        return loss

    # -- the task lifecycle -------------------------------------------------------------------------

    def fact_questions(self, task: Task) -> list[dict[str, str]]:
        """`task`'s new or changed facts (against the tasks before it) as training questions, the same for every method."""
        if self.class_labels is not None or not task.facts:
            return []
        earlier = [t.facts for t in self.tasks if t is not task]
        wordings = getattr(self.args, "fact_questions", len(FACT_WORDINGS))  # plain TrainingArguments: the default
        return fact_questions(new_or_changed(task.facts, earlier), task.period, wordings)

    def _complete_unrouted(self, prompts: Sequence[str]) -> list[str]:
        if self.class_labels is not None:
            raise ValueError("a sequence classification model cannot complete prompts")
        plain = Evaluator(self.processing_class, self.evaluator.batch_size, self.evaluator.max_new_tokens)
        return plain.complete(self.model, prompts)

    def start_stream(self, stream: Stream) -> None:
        """Show the method the whole stream before its first task (`fit` does this; call it when driving
        `add_task` yourself with a method that needs it, such as SMF's background statistics)."""
        self.method.check(stream)
        self.method.before_stream(self.model, StreamData(stream=stream, tokenize=self.tokenize, collate=self.collate))

    def add_task(self, task: Task) -> TrainOutput:
        """Train on `task` with a fresh optimizer; call `consolidate_task()` after it."""
        if self._pending is not None:
            raise RuntimeError(f"add_task: call consolidate_task() for task {self._pending.task.name!r} first")
        index = len(self.tasks)
        set_seed(self.args.seed + index)  # before before_task, which may draw new weights (ARIA's adapters)
        self.method.before_task(self.model, task)
        self.tasks.append(task)
        questions = self.fact_questions(task)
        features = self.tokenize(self.method.training_examples(task) + questions)
        self._pending = TaskData(task=task, features=features, collate=self.collate, complete=self._complete_unrouted)
        self.train_dataset = features
        self.optimizer, self.lr_scheduler = None, None
        self._train_tokens = 0
        start = time.perf_counter()
        # The Trainer's loop, not a subclass's train() (the aria-trl layer trains tasks there); none for a method
        # that learns nothing by gradient.
        output = super().train() if self.method.trains else TrainOutput(0, 0.0, {})
        seconds = time.perf_counter() - start
        self.last_timing = {
            "train_examples": len(features),
            "fact_questions": len(questions),
            "train_seconds": seconds,
            "train_tokens": self._train_tokens,
            "optimizer_steps": output.global_step,
            "tokens_per_second": self._train_tokens / seconds if seconds else 0.0,
            "seconds_per_step": seconds / max(output.global_step, 1),
            "optimizer_state_bytes": _state_bytes(self.optimizer),
            "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
        }
        return output

    def consolidate_task(self) -> None:
        """Run the method's end-of-task work (Fisher, buffers, merges) for the task just trained."""
        if self._pending is None:
            raise RuntimeError("consolidate_task: no task was trained since the last consolidation")
        start = time.perf_counter()
        self.method.after_task(self.model, self._pending)
        self.last_timing["consolidate_seconds"] = time.perf_counter() - start
        self.last_timing |= self.method.task_report()
        self._pending = None

    def evaluate_all_tasks(
        self, tasks: Sequence[Task] | None = None, general: Sequence[str] = (), label: str = ""
    ) -> EvalRow:
        """Score every probe of `tasks` (default: the tasks added so far) and the perplexity of `general`."""
        tasks = list(tasks) if tasks is not None else self.tasks
        start = time.perf_counter()
        probes = [(t, i, p) for t in tasks for i, p in enumerate(t.probes)]
        scores = self.evaluator.score(self.model, [p for _, _, p in probes])
        per_task: dict[str, dict[str, list[float]]] = {t.name: defaultdict(list) for t in tasks}

        def by_task() -> dict[str, dict[str, list[float]]]:
            return {t.name: defaultdict(list) for t in tasks}

        per_kind: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(by_task)
        per_form: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = defaultdict(lambda: defaultdict(by_task))
        predictions = []
        for (task, index, probe), score in zip(probes, scores):
            buckets = [per_task[task.name], per_kind[probe.kind][task.name]]
            if probe.form:
                buckets += [per_form[probe.form][""][task.name], per_form[probe.form][probe.kind][task.name]]
            for bucket in buckets:
                bucket["em"].append(score.em)
                bucket["f1"].append(score.f1)
            predictions.append({
                "row": label, "task": task.name, "probe": index, "kind": probe.kind, "key": probe.key, "form": probe.form,
                "prompt": probe.prompt, "answer": probe.answer, "prediction": score.prediction, "correct": bool(score.em),
                "f1": score.f1, **({"route": score.route, "learned_in": probe.learned_in or task.name}
                                   if score.route is not None else {}),
            })
        # A route is right when it is the task that taught the answer (not merely the one the probe names);
        # a probe whose answer no trained task has taught yet is not counted.
        trained = {t.name for t in self.tasks}
        routed = [p["route"] == p["learned_in"] for p in predictions if "route" in p and p["learned_in"] in trained]

        def means(buckets: dict[str, dict[str, list[float]]], metric: str) -> list[float | None]:
            return [mean(buckets[t.name][metric]) for t in tasks]

        return EvalRow(
            label=label,
            em=means(per_task, "em"),
            f1=means(per_task, "f1"),
            by_kind={kind: {"em": means(b, "em"), "f1": means(b, "f1")} for kind, b in sorted(per_kind.items()) if kind},
            by_form={form: {kind: {"em": means(b, "em"), "f1": means(b, "f1")} for kind, b in sorted(kinds.items())}
                     for form, kinds in sorted(per_form.items())},
            general_ppl=self.evaluator.perplexity(self.model, general) if general and self.class_labels is None else None,
            eval_seconds=time.perf_counter() - start,
            predictions=predictions,
            routing_accuracy=mean(routed),
        )

    def save_continual_state(self, directory: str | Path) -> Path:
        """Save the model, the method's state (Fisher anchors, adapters, prototypes, buffers…) and the tasks
        learned so far, for `load_continual_state` to continue the stream: a checkpoint of safetensors and
        JSON (no pickle), with a manifest of its files' hashes. The directory is replaced whole."""
        if self._pending is not None:
            raise RuntimeError(f"save_continual_state: call consolidate_task() for task {self._pending.task.name!r} first")
        return write_checkpoint(Path(directory), self.model, self.method.name, self.method.state_dict(),
                                {"tasks": [task.to_record() for task in self.tasks]})

    def load_continual_state(self, directory: str | Path) -> None:
        """Restore what `save_continual_state` saved into this trainer's model and method (same method and config)."""
        path = Path(directory)
        if not (path / "progress.json").is_file() and not (path / "continual.pt").is_file():
            raise FileNotFoundError(f"{path}: not saved by save_continual_state (no progress.json)")
        verify_checkpoint(path)  # before the method name is read from it
        saved = json.loads((path / "progress.json").read_text(encoding="utf-8"))
        if saved["method"] != self.method.name:
            raise ValueError(f"{path}: saved by method {saved['method']!r}, this trainer runs {self.method.name!r}")
        read_verified(path, self.model, self.method.load_state_dict)
        self.tasks = [Task(**record) for record in saved["tasks"]]

    def fit(self, stream: Stream, run_dir: RunDirectory | None = None, model_name: str = "") -> RunResult:
        """Train through `stream`, evaluating every task after each one; resumes from `run_dir`'s checkpoint."""
        result = RunResult(
            method=self.method.name, model=model_name, seed=self.args.seed, tasks=stream.task_names,
            config=run_dir.config if run_dir else {},
        )
        self.start_stream(stream)
        restored = run_dir.load_checkpoint(self.model, self.method.load_state_dict) if run_dir else None
        if restored is not None:
            result = restored[1]
            if result.tasks != stream.task_names:
                raise RunDirectoryError(f"--resume: the run was trained on tasks {result.tasks}, the stream now has "
                                        f"{stream.task_names}")
            self.tasks = list(stream.tasks[: result.completed_tasks])
            logger.info("Resuming after task %d/%d", result.completed_tasks, len(stream))
        if not result.rows:
            logger.info("Evaluating the untrained model on %d tasks", len(stream))
            result.rows.append(self.evaluate_all_tasks(stream.tasks, stream.general, label="initial"))
        for index in range(result.completed_tasks, len(stream)):
            task = stream.tasks[index]
            logger.info("Task %d/%d %r: training", index + 1, len(stream), task.name)
            self.add_task(task)
            self.consolidate_task()
            row = self.evaluate_all_tasks(stream.tasks, stream.general, label=task.name)
            result.rows.append(row)
            result.timings.append({"task": task.name, **self.last_timing, "eval_seconds": row.eval_seconds})
            logger.info("Task %d/%d %r: trained on %d examples; EM on it %.3f, mean so far %.3f", index + 1, len(stream),
                        task.name, len(self.train_dataset), row.em[index] or 0.0, mean(row.em[: index + 1]) or 0.0)
            if run_dir is not None:
                run_dir.save_checkpoint(self.model, self.method.state_dict(), result, self.method.name)
        if run_dir is not None:
            run_dir.write_results(result)
        return result


def _class_labels(model: nn.Module) -> list[str] | None:
    """The label names of a sequence classification model, in index order; None for a language model."""
    if type(model).__name__ not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values():
        return None
    id2label = model.config.id2label
    return [id2label[i] for i in range(model.config.num_labels)]


class _OptimizerStepHook(TrainerCallback):
    def __init__(self, trainer: ContinualTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):  # type: ignore[override]
        self.trainer.method.after_optimizer_step(self.trainer.model)


def _state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    if optimizer is None:
        return 0
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


@dataclass
class ContinualSFTConfig(_ContinualDefaults, SFTConfig):
    """TRL's SFTConfig with the defaults of continual runs: bf16 only where a GPU has it (CPUs run fp32),
    activation checkpointing off unless asked for."""

    bf16: bool | None = field(default=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
                              metadata={"help": "bf16 mixed precision (default: on GPUs that support it)."})
    # SFTConfig turns checkpointing on through the deprecated name; off here: small models train faster without it.
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "Deprecated: use --activation_checkpointing."})


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

    def _model_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool, num_items_in_batch: Any):
        if self.class_labels is not None:  # SFTTrainer's loss is a language model's; a classifier's is its own
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        return super()._model_loss(model, inputs, return_outputs, num_items_in_batch)

    def add_task(  # type: ignore[override]
        self, task: Task | Dataset, name: str | None = None, probes: Sequence[Probe | dict[str, Any]] = ()
    ) -> TrainOutput:
        """Train on `task`: a Task, or a Dataset of training rows with the `probes` that will measure it."""
        if isinstance(task, Dataset):
            task = Task(name=name or f"task-{len(self.tasks) + 1}", train=task, probes=list(probes))
        return super().add_task(task)
