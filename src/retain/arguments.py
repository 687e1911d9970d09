"""Training arguments of the continual trainers: transformers' and TRL's, with the defaults continual runs need."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments
from trl import SFTConfig

from retain.fact_questions import DEFAULT_WORDINGS, WORDINGS as FACT_WORDINGS

_GPU = torch.cuda.is_available()
_ANSWER_SLOTS = [i + 1 for i, wording in enumerate(FACT_WORDINGS) if "\n" in wording]


@dataclass
class _ContinualDefaults:
    """Defaults shared by the continual trainers' argument classes; listed first among their bases, so they win."""

    save_strategy: str = field(default="no", metadata={"help": "Trainer checkpoints; runs checkpoint per task."})
    logging_strategy: str | None = field(default=None, metadata={
        "help": "When the Trainer logs the training loss: 'steps' (every --logging_steps optimizer steps of the run), "
                "'epoch' or 'no' (default: 'steps' when --logging_steps is given, else 'epoch')."})
    logging_steps: float | None = field(default=None, metadata={
        "help": "Log every N optimizer steps of the run (a float below 1: that share of each task's steps); default 500."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the tokenized fields as they are."})
    dataloader_pin_memory: bool = field(
        default=torch.cuda.is_available(), metadata={"help": "Pin batches in page-locked memory (helps only on GPU)."}
    )
    max_length: int = field(default=256, metadata={"help": "Training examples are truncated to this many tokens."})
    max_new_tokens: int = field(default=24, metadata={"help": "Generation budget per probe (capped near the answer's length)."})
    fact_questions: int = field(default=DEFAULT_WORDINGS, metadata={
        "help": "Each new or changed fact of a task's facts.jsonl is also trained as a question in the first N of the "
                f"{len(FACT_WORDINGS)} training wordings (0: passages only; wordings "
                f"{_ANSWER_SLOTS[0]} to {_ANSWER_SLOTS[-1]} end in an answer slot after a line break), for every method alike."})
    # fp32 on CPUs, where bf16 is many times slower; bf16 where a GPU supports it.
    bf16: bool | None = field(default=_GPU and torch.cuda.is_bf16_supported(),
                              metadata={"help": "bf16 mixed precision (default: on GPUs that support it)."})
    # Without a GPU, several processes (torchrun, accelerate launch) are data parallel on CPU only when told so.
    use_cpu: bool = field(default=not (_GPU or torch.backends.mps.is_available()),
                          metadata={"help": "Train on CPU (default when there is no GPU)."})

    def __post_init__(self) -> None:
        if self.logging_strategy is None:  # asking for --logging_steps asks for logging by steps, as in the Trainer
            self.logging_strategy = "epoch" if self.logging_steps is None else "steps"
        if self.logging_steps is None:
            self.logging_steps = 500
        if not 0 <= self.fact_questions <= len(FACT_WORDINGS):
            raise ValueError(f"--fact_questions {self.fact_questions}: expected 0 to {len(FACT_WORDINGS)} training wordings")
        super().__post_init__()


@dataclass
class ContinualTrainingArguments(_ContinualDefaults, TrainingArguments):
    """TrainingArguments with defaults for continual runs (checkpoints are per task, by the run directory)."""

    _argument_group_name = "transformers TrainingArguments, with retain's defaults and additions"


@dataclass
class ContinualSFTConfig(_ContinualDefaults, SFTConfig):
    """TRL's SFTConfig with the defaults of continual runs: bf16 only where a GPU has it (CPUs run fp32),
    activation checkpointing off unless asked for."""

    # SFTConfig turns checkpointing on through the deprecated name; off here: small models train faster without it.
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "Deprecated: use --activation_checkpointing."})
