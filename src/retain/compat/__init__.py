"""Layers that let code written for other continual-learning packages run on retain (see docs/migrating-from-aria-trl.md)."""
