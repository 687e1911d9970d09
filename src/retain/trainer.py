"""ContinualTrainer: a transformers.Trainer that learns a stream of tasks and measures what it keeps."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object, reduce
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.integrations.integration_utils import TensorBoardCallback, default_logdir
from transformers.trainer_utils import IntervalStrategy, TrainOutput

from retain.arguments import ContinualTrainingArguments
from retain.encoding import encoding_for
from retain.evaluation import Evaluator, perplexity
from retain.fact_questions import DEFAULT_WORDINGS, fact_questions, new_or_changed
from retain.methods.base import Features, Method, StreamData, TaskData, TrainingContext, check_sharding
from retain.methods.full_ft import FullFineTuning
from retain.metrics import mean
from retain.result import EvalRow, RunResult
from retain.runstate import RunDirectory, RunDirectoryError, model_weights, read_verified, verify_checkpoint, write_checkpoint
from retain.stream import Probe, Stream, Task

logger = logging.getLogger(__name__)


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
        # FSDP is asked for by --fsdp, or by an accelerate config (accelerate launch sets ACCELERATE_USE_FSDP).
        fsdp_asked = bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        check_sharding(self.method, fsdp_asked=fsdp_asked, fsdp=self.is_fsdp_enabled, deepspeed=self.is_deepspeed_enabled)
        self.encoding = encoding_for(self.model, processing_class, getattr(args, "max_length", 256))
        self.evaluator = Evaluator(
            processing_class, args.per_device_eval_batch_size, getattr(args, "max_new_tokens", 24),
            progress=not args.disable_tqdm, route=self.method.route, class_labels=self.encoding.labels,
        )
        self.context = TrainingContext(learning_rate=args.learning_rate)
        self.add_callback(_CountSteps(self.context))
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                # Where its first training would put it, so that the untrained model's row, logged before, lands there.
                callback.logging_dir = os.path.join(args.output_dir, default_logdir())
        self.tasks: list[Task] = []
        self.last_timing: dict[str, float] = {}
        self._pending: TaskData | None = None
        self._train_tokens = 0

    # -- data ---------------------------------------------------------------------------------------

    def tokenize(self, examples: Sequence[dict[str, str]]) -> list[Features]:
        """Examples as model inputs (see `retain.encoding`)."""
        return self.encoding.tokenize(examples)

    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        return self.encoding.collate(features)

    def _collate_training(self, features: list[Features]) -> dict[str, torch.Tensor]:
        batch = self.collate(self.method.extend_batch(features))
        self._train_tokens += int(batch["attention_mask"].sum())
        return batch

    def fact_questions(self, task: Task) -> list[dict[str, str]]:
        """`task`'s new or changed facts (against the tasks before it) as training questions, the same for every method."""
        if not self.encoding.generative or not task.facts:
            return []
        earlier = [t.facts for t in self.tasks if t is not task]
        wordings = getattr(self.args, "fact_questions", DEFAULT_WORDINGS)  # plain TrainingArguments: the default
        return fact_questions(new_or_changed(task.facts, earlier), task.period, wordings)

    # -- training hooks ---------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        computed = self._model_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = computed[0] if return_outputs else computed
        # Hooks see the model itself, not a distributed wrapper of it (whose parameter names carry "module.").
        penalty = self.method.after_forward(self.model, inputs, self.context)
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
            chosen = self.method.optimizer(self.model, self.context)
            if isinstance(chosen, torch.optim.Optimizer):
                self.optimizer = chosen
            elif chosen is not None:
                # The optimizer TrainingArguments ask for, with the method's groups split by weight decay as Trainer does.
                decay = set(self.get_decay_parameter_names(self.model))
                names = {id(p): n for n, p in self.model.named_parameters()}
                split = [
                    {**group, "params": params, "weight_decay": self.args.weight_decay if decayed else 0.0}
                    for group in chosen
                    for decayed in (True, False)
                    if (params := [p for p in group["params"] if (names[id(p)] in decay) == decayed])
                ]
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                self.optimizer = optimizer_cls(split, **optimizer_kwargs)
        return super().create_optimizer(model)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logs (loss, learning rate, grad norm…) on one step axis for the whole stream: each task's
        `Trainer.train()` counts its steps from 0, the run's steps go on; `task` marks which task a point is of."""
        offset = self.context.run_step - self.context.step
        self.state.global_step += offset
        try:
            super().log({**logs, "task": self.context.task_index + 1}, start_time)
        finally:
            self.state.global_step -= offset

    def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[override]
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.method.after_backward(self.model, self.context)
        return loss

    # -- the task lifecycle -------------------------------------------------------------------------

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
        self.context.task, self.context.task_index, self.context.step = task, index, 0
        self.context.learning_rate = self.args.learning_rate
        chosen = self.method.before_task(self.model, self.context)
        self.tasks.append(task)
        questions = self.fact_questions(task)
        features = self.tokenize((task.train if chosen is None else chosen) + questions)
        complete = self._complete_unrouted if self.encoding.generative else None  # a classifier completes nothing
        self._pending = TaskData(task=task, features=features, collate=self.collate, complete=complete)
        self.train_dataset = features
        self.optimizer, self.lr_scheduler = None, None
        if not self.is_fsdp_enabled:
            # A fresh data-parallel wrapper per task: which parameters train changes between tasks (ARIA's adapters).
            self.model_wrapped = self.model
        self._train_tokens = 0
        start = time.perf_counter()
        # The Trainer's loop, not a subclass's train() (the aria-trl layer trains tasks there); none for a method
        # that learns nothing by gradient.
        output = super().train() if self.method.trains else TrainOutput(0, 0.0, {})
        seconds = time.perf_counter() - start
        self._train_tokens = int(reduce(torch.tensor(self._train_tokens, device=PartialState().device), "sum"))
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

    def _complete_unrouted(self, prompts: Sequence[str]) -> list[str]:
        plain = Evaluator(self.processing_class, self.evaluator.batch_size, self.evaluator.max_new_tokens)
        return plain.complete(self.model, prompts)

    def consolidate_task(self) -> None:
        """Run the method's end-of-task work (Fisher, buffers, merges) for the task just trained."""
        if self._pending is None:
            raise RuntimeError("consolidate_task: no task was trained since the last consolidation")
        start = time.perf_counter()
        report = self.method.after_task(self.model, self._pending, self.context)
        self.last_timing["consolidate_seconds"] = time.perf_counter() - start
        self.last_timing |= report
        self._pending = None

    def evaluate_all_tasks(
        self, tasks: Sequence[Task] | None = None, general: Sequence[str] = (), label: str = "",
        locality: Sequence[str] = (),
    ) -> EvalRow:
        """Score every probe of `tasks` (default: the tasks added so far), the perplexity of `general` and the answers
        to `locality` prompts (compared with the untrained model's in the summary)."""
        tasks = list(tasks) if tasks is not None else self.tasks
        start = time.perf_counter()
        # Data parallel, each process scores its share of the probes and of the general text, and every process gets
        # the whole row. Sharded (FSDP, DeepSpeed ZeRO-3), every forward is collective: every process scores
        # everything, so the same prompts take the same number of forwards everywhere.
        state, sharded = PartialState(), self.is_fsdp_enabled or is_deepspeed_zero3_enabled()
        split = nullcontext if sharded else state.split_between_processes
        with split([p for t in tasks for p in t.probes]) as mine:
            scores = self.evaluator.score(self.model, mine)
        scores = scores if sharded else gather_object(scores)
        ppl = None
        if general and self.encoding.generative:
            with split(list(general)) as texts:
                sums = self.evaluator.loss_sum(self.model, texts) if texts else (0.0, 0)
            if not sharded:
                sums = reduce(torch.tensor(sums, dtype=torch.float64, device=state.device), reduction="sum").tolist()
            ppl = perplexity(float(sums[0]), int(sums[1]))
        answers = []
        if locality and self.encoding.generative:
            with split([Probe(prompt=p, answer=p) for p in locality]) as mine:  # the answer only sizes the budget
                answers = [s.prediction for s in self.evaluator.score(self.model, mine)]
            answers = answers if sharded else gather_object(answers)
        return EvalRow.from_scores(label, tasks, scores, trained={t.name for t in self.tasks}, general_ppl=ppl,
                                   eval_seconds=time.perf_counter() - start, locality=answers)

    def log_evaluation(self, result: RunResult) -> None:
        """Report the latest row of `result` through the Trainer's callbacks (`--report_to tensorboard`, wandb,
        mlflow, trackio …) at the run's optimizer step, the axis of the training logs (`eval/tasks_learned` says how
        many tasks it follows; a method that trains nothing logs at step = tasks learned). See `RunResult.logs`."""
        step = max(self.context.run_step, result.completed_tasks)
        state = dataclasses.replace(self.state, global_step=step)
        logs = {**result.logs(), "eval_tasks_learned": result.completed_tasks}
        self.control = self.callback_handler.on_log(self.args, state, self.control, logs)

    def _finish_trackers(self) -> None:
        """Close the tracker runs the Trainer's callbacks opened (W&B's stays open across a stream's many
        `Trainer.train()` calls, and the Trainer never finishes it), so that the run is complete and its summary written."""
        for callback in self.callback_handler.callbacks:
            tracker = getattr(callback, "_wandb", None)
            if tracker is not None and getattr(callback, "_initialized", False) and tracker.run is not None:
                tracker.finish()
                callback._initialized = False

    def save_continual_state(self, directory: str | Path) -> Path:
        """Save the model, the method's state (Fisher anchors, adapters, prototypes, buffers…) and the tasks
        learned so far, for `load_continual_state` to continue the stream: a checkpoint of safetensors and
        JSON (no pickle), with a manifest of its files' hashes. The directory is replaced whole. With several
        processes, every process calls it and the main process writes."""
        if self._pending is not None:
            raise RuntimeError(f"save_continual_state: call consolidate_task() for task {self._pending.task.name!r} first")
        weights, state = model_weights(self.model), self.method.state_dict()
        if not PartialState().is_main_process:
            return Path(directory)
        return write_checkpoint(Path(directory), weights, self.method.name, state,
                                {"tasks": [task.to_record() for task in self.tasks], "run_step": self.context.run_step})

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
        self.context.run_step = int(saved.get("run_step", 0))

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
            self.context.run_step = sum(int(t.get("optimizer_steps", 0)) for t in result.timings)
            logger.info("Resuming after task %d/%d", result.completed_tasks, len(stream))
        if not result.rows:
            logger.info("Evaluating the untrained model on %d tasks", len(stream))
            result.rows.append(self.evaluate_all_tasks(stream.tasks, stream.general, "initial", stream.locality))
            self.log_evaluation(result)
        for index in range(result.completed_tasks, len(stream)):
            task = stream.tasks[index]
            logger.info("Task %d/%d %r: training", index + 1, len(stream), task.name)
            self.add_task(task)
            self.consolidate_task()
            row = self.evaluate_all_tasks(stream.tasks, stream.general, task.name, stream.locality)
            result.rows.append(row)
            result.timings.append({"task": task.name, **self.last_timing, "eval_seconds": row.eval_seconds})
            self.log_evaluation(result)
            logger.info("Task %d/%d %r: trained on %d examples; EM on it %.3f, mean so far %.3f", index + 1, len(stream),
                        task.name, len(self.train_dataset), row.em[index] or 0.0, mean(row.em[: index + 1]) or 0.0)
            if run_dir is not None:
                run_dir.save_checkpoint(model_weights(self.model), self.method.state_dict(), result, self.method.name)
        if run_dir is not None:
            run_dir.write_results(result)
        self._finish_trackers()
        return result


class _CountSteps(TrainerCallback):
    """Keeps the training context's step counts (of the task, and of the run), and logs every `logging_steps` steps of
    the run, as one long `Trainer.train()` would (the Trainer's own count restarts with each task)."""

    def __init__(self, context: TrainingContext) -> None:
        self.context = context

    def on_optimizer_step(self, args, state, control, **kwargs):  # type: ignore[override]
        self.context.step += 1
        self.context.run_step += 1

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[override]
        # A float below 1 is a share of each task's steps, which the Trainer already counts per task.
        if args.logging_strategy == IntervalStrategy.STEPS and args.logging_steps >= 1:
            step = self.context.run_step
            control.should_log = step % int(args.logging_steps) == 0 or (args.logging_first_step and step == 1)


def _state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    if optimizer is None:
        return 0
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))
