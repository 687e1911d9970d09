"""RunResult: every evaluation row of a run, with the matrices, per-kind views and summary derived from them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from retain import metrics


@dataclass
class EvalRow:
    """Scores of every task's probes at one point of a run (per task: mean EM and token F1)."""

    label: str
    em: list[float | None]
    f1: list[float | None]
    by_kind: dict[str, dict[str, list[float | None]]]
    general_ppl: float | None
    eval_seconds: float
    predictions: list[dict[str, Any]] = field(repr=False, default_factory=list)
    routing_accuracy: float | None = None  # share of probes a routing method sent to the task that taught the answer
    # form → kind ("" for all kinds) → {"em": per task, "f1": per task}, for probes that name their form
    by_form: dict[str, dict[str, dict[str, list[float | None]]]] = field(default_factory=dict)


@dataclass
class RunResult:
    """Row 0 is the untrained model ("initial"); row i+1 follows training on task i."""

    method: str
    model: str
    seed: int
    tasks: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[EvalRow] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)

    @property
    def completed_tasks(self) -> int:
        return max(len(self.rows) - 1, 0)

    @property
    def complete(self) -> bool:
        return self.completed_tasks == len(self.tasks)

    def matrix(self, metric: str = "em") -> list[list[float | None]]:
        return [getattr(row, metric) for row in self.rows[1:]]

    def summary(self, metric: str = "em") -> dict[str, Any]:
        """Metrics over the tasks trained so far (the leading square of the matrix)."""
        k = self.completed_tasks
        if k == 0:
            return {}
        square = [row[:k] for row in self.matrix(metric)]
        summary = metrics.summarize(square, getattr(self.rows[0], metric)[:k])
        summary |= self._temporal(lambda row: row.by_kind, self.rows[-1].predictions, metric)
        forms = sorted({form for row in self.rows for form in row.by_form})
        if forms:
            summary["by_form"] = {}
            for form in forms:
                last = [p for p in self.rows[-1].predictions if p.get("form") == form]
                scores = self._temporal(lambda row: row.by_form.get(form, {}), last, metric)
                overall = [row.by_form.get(form, {}).get("", {}).get(metric, [None] * k)[:k] for row in self.rows[1:]]
                summary["by_form"][form] = {"acc": metrics.acc(overall), **scores}
        return summary

    def _temporal(self, kinds_of: Callable[[EvalRow], dict[str, dict[str, list[float | None]]]],
                  last_predictions: list[dict[str, Any]], metric: str) -> dict[str, float | None]:
        """Plasticity, stability and historical score from each row's per-kind scores (`kinds_of(row)`)."""
        k = self.completed_tasks
        if not {"changed", "unchanged"} & {kind for row in self.rows for kind in kinds_of(row)}:
            return {}

        def kind_square(kind: str) -> list[list[float | None]]:
            return [kinds_of(row).get(kind, {}).get(metric, [None] * k)[:k] for row in self.rows[1:]]

        return {
            "plasticity": metrics.diagonal_mean(kind_square("changed")),
            "stability": metrics.diagonal_mean(kind_square("unchanged")),
            "historical": metrics.historical(last_predictions, self.tasks[k - 1], "correct" if metric == "em" else "f1"),
        }

    def to_json(self) -> dict[str, Any]:
        kinds = sorted({kind for row in self.rows for kind in row.by_kind})
        ppl = [row.general_ppl for row in self.rows]
        return {
            "method": self.method,
            "model": self.model,
            "seed": self.seed,
            "tasks": self.tasks,
            "complete": self.complete,
            "initial": {"em": self.rows[0].em, "f1": self.rows[0].f1} if self.rows else None,
            "matrix": {"em": self.matrix("em"), "f1": self.matrix("f1")},
            "by_kind": {
                kind: {
                    "initial": self.rows[0].by_kind.get(kind) if self.rows else None,
                    "em": [row.by_kind.get(kind, {}).get("em") for row in self.rows[1:]],
                    "f1": [row.by_kind.get(kind, {}).get("f1") for row in self.rows[1:]],
                }
                for kind in kinds
            },
            "summary": {
                **self.summary("em"),
                "f1": self.summary("f1"),
                "general_ppl": ppl,
                "general_ppl_change": (ppl[-1] / ppl[0] - 1) if ppl and ppl[0] and ppl[-1] else None,
                "routing_accuracy": metrics.mean([row.routing_accuracy for row in self.rows[1:]]),
            },
            "by_form": {
                form: {kind: {m: [row.by_form.get(form, {}).get(kind, {}).get(m) for row in self.rows[1:]] for m in ("em", "f1")}
                       for kind in sorted({kind for row in self.rows for kind in row.by_form.get(form, {})})}
                for form in sorted({form for row in self.rows for form in row.by_form})
            },
            "routing_accuracy": [row.routing_accuracy for row in self.rows],
            "timings": self.timings,
            "eval_seconds": [row.eval_seconds for row in self.rows],
            "config": self.config,
        }

    def predictions(self) -> list[dict[str, Any]]:
        return [p for row in self.rows for p in row.predictions]

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild this object (checkpointed with the run)."""
        return {
            "method": self.method, "model": self.model, "seed": self.seed, "tasks": self.tasks,
            "config": self.config, "rows": [asdict(row) for row in self.rows], "timings": self.timings,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunResult:
        rows = [EvalRow(**row) for row in state["rows"]]
        return cls(**{**state, "rows": rows})
