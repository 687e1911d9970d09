"""Continual-learning methods: one file each, registered by name; several join as one with "+" (`Composed`)."""

from retain.methods.aria import ARIA, ARIAConfig
from retain.methods.base import METHODS, ConfigError, Method, MethodConfig, MethodError, TaskData, TrainingContext
from retain.methods.casm import CASM, CASMConfig
from retain.methods.composed import Composed
from retain.methods.ewc import EWC, EWCConfig
from retain.methods.full_ft import FullFineTuning, FullFTConfig
from retain.methods.lora import LoRA, LoRAConfig
from retain.methods.options import build_method, method_options
from retain.methods.rag import RAG, RAGConfig
from retain.methods.replay import Replay, ReplayConfig
from retain.methods.smf import SMFConfig, SparseMemoryFinetuning
from retain.methods.snapshot import Snapshot, SnapshotConfig

__all__ = [
    "ARIA", "ARIAConfig", "CASM", "CASMConfig", "Composed", "ConfigError", "EWC", "EWCConfig", "FullFTConfig",
    "FullFineTuning", "LoRA", "LoRAConfig", "METHODS", "Method", "MethodConfig", "MethodError", "RAG", "RAGConfig",
    "Replay", "ReplayConfig", "SMFConfig", "Snapshot", "SnapshotConfig", "SparseMemoryFinetuning", "TaskData", "TrainingContext", "build_method",
    "method_options",
]
