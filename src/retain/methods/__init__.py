"""Continual-learning methods: one file each, registered by name."""

from retain.methods.aria import ARIA, ARIAConfig
from retain.methods.base import METHODS, Method, MethodError, TaskData, build_method, method_options
from retain.methods.casm import CASM, CASMConfig
from retain.methods.ewc import EWC, EWCConfig
from retain.methods.full_ft import FullFineTuning, FullFTConfig
from retain.methods.lora import LoRA, LoRAConfig
from retain.methods.rag import RAG, RAGConfig
from retain.methods.replay import Replay, ReplayConfig
from retain.methods.smf import SMFConfig, SparseMemoryFinetuning

__all__ = [
    "ARIA", "ARIAConfig", "CASM", "CASMConfig", "EWC", "METHODS", "EWCConfig", "FullFTConfig", "FullFineTuning", "LoRA", "LoRAConfig", "Method", "MethodError",
    "RAG", "RAGConfig", "Replay", "ReplayConfig", "SMFConfig", "SparseMemoryFinetuning", "TaskData", "build_method", "method_options",
]
