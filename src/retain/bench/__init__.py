"""Deterministic, offline benchmark streams: temporal facts and a sequential task suite. Each registers the summary
metrics it defines (`retain.result.register_summary`) when imported, which `import retain` does."""

from retain.bench import task_suite, temporal_facts

__all__ = ["task_suite", "temporal_facts"]
