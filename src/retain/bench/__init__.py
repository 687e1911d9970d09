"""Deterministic, offline benchmark streams: temporal facts, a sequential task suite and tasks whose rules contradict.
Each registers the summary metrics it defines (`retain.result.register_summary`) when imported, which `import retain` does."""

from retain.bench import conflicting_rules, task_suite, temporal_facts

__all__ = ["conflicting_rules", "task_suite", "temporal_facts"]
