"""retain: continual fine-tuning of causal language models, with the measurements to prove what they kept."""

from retain import bench  # noqa: F401  (its benchmarks register their summary metrics)
from retain.arguments import ContinualSFTConfig, ContinualTrainingArguments
from retain.evaluation import Evaluator, exact_match, token_f1
from retain.methods import METHODS, Method, TaskData, build_method
from retain.methods.aria import ARIAConfig
from retain.models import EMBEDDED_DEFAULT, TINY, ModelLoadError, load_model
from retain.result import EvalRow, RunResult
from retain.runstate import RunDirectory, RunDirectoryError
from retain.sft import ContinualSFTTrainer
from retain.stream import Probe, Stream, StreamError, Task, load_stream, save_stream
from retain.text import normalize_answer
from retain.trainer import ContinualTrainer

__version__ = "0.1.0"

__all__ = [
    "ARIAConfig", "ContinualSFTConfig", "ContinualSFTTrainer", "EMBEDDED_DEFAULT", "METHODS", "TINY", "ContinualTrainer", "ContinualTrainingArguments", "EvalRow",
    "Evaluator", "Method", "ModelLoadError", "Probe", "RunDirectory", "RunDirectoryError", "RunResult",
    "Stream", "StreamError", "Task", "TaskData", "build_method", "exact_match", "load_model", "load_stream",
    "normalize_answer", "save_stream", "token_f1",
]
