"""Deterministic, offline benchmark streams: temporal facts and a sequential task suite."""
