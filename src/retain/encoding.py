"""How examples become model inputs: one encoding for language models, one for sequence classifiers.

A stream's examples are `{"text"}` (every token trained) or `{"prompt", "completion"}` (the completion
trained). A causal LM reads them as tokens with next-token labels; a sequence classifier reads the
prompt and learns the completion as its class label. The trainer picks the encoding once, from the
model, and never asks again which kind it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from retain.methods.base import IGNORE_INDEX, Features


@dataclass
class TextEncoding:
    """A causal LM: `text` trains on every token; `prompt`+`completion` on the completion only."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int = 256
    labels: None = None  # no class labels
    generative = True  # completes prompts, has a perplexity, can learn fact questions

    def tokenize(self, examples: Sequence[dict[str, str]]) -> list[Features]:
        tokenizer, eos = self.tokenizer, self.tokenizer.eos_token_id
        features = []
        for example in examples:
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
        batch = _padded_inputs(features, width, self.tokenizer.pad_token_id)
        batch["labels"] = torch.tensor([f["labels"] + [IGNORE_INDEX] * (width - len(f["labels"])) for f in features])
        return batch


@dataclass
class LabelEncoding:
    """A sequence classifier: reads the prompt, learns the completion as the index of one of its `labels`."""

    tokenizer: PreTrainedTokenizerBase
    labels: list[str]
    max_length: int = 256
    generative = False

    def tokenize(self, examples: Sequence[dict[str, str]]) -> list[Features]:
        features = []
        for example in examples:
            label = example.get("completion", "").strip()
            if label not in self.labels:
                raise ValueError(f"completion {label!r} is not one of the model's labels {self.labels} "
                                 "(a classification model trains on prompt + completion rows whose completion is a label)")
            ids = self.tokenizer(example["prompt"]).input_ids[: self.max_length]
            features.append({"input_ids": ids, "labels": [self.labels.index(label)]})
        return features

    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        batch = _padded_inputs(features, max(len(f["input_ids"]) for f in features), self.tokenizer.pad_token_id)
        batch["labels"] = torch.tensor([f["labels"][0] for f in features])
        return batch


Encoding = TextEncoding | LabelEncoding


def encoding_for(model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_length: int = 256) -> Encoding:
    """The encoding `model` trains with: a classifier's when it is a sequence classification model."""
    if type(model).__name__ not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values():
        return TextEncoding(tokenizer, max_length)
    id2label = model.config.id2label
    return LabelEncoding(tokenizer, [id2label[i] for i in range(model.config.num_labels)], max_length)


def _padded_inputs(features: list[Features], width: int, pad: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor([f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]),
        "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]),
    }
