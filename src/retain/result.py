"""RunResult: every evaluation row of a run, with the matrices, per-kind views and summary derived from them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from retain import metrics
from retain.stream import Task
from retain.text import first_statement, normalize_answer

if TYPE_CHECKING:
    from retain.evaluation import ProbeScore


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
    # A fact router's (fact, period) against each probe's: of the probes it named a fact for, the share right
    # (precision), and of all probes, the share it named right (recall); None for a method that names no facts.
    router_precision: float | None = None
    router_recall: float | None = None
    # form → kind ("" for all kinds) → {"em": per task, "f1": per task}, for probes that name their form
    by_form: dict[str, dict[str, dict[str, list[float | None]]]] = field(default_factory=dict)
    locality: list[str] = field(default_factory=list)  # the answers to the stream's locality prompts

    @classmethod
    def from_scores(cls, label: str, tasks: Sequence[Task], scores: Sequence[ProbeScore], trained: set[str],
                    general_ppl: float | None = None, eval_seconds: float = 0.0, locality: Sequence[str] = ()) -> EvalRow:
        """The row of `scores`, one per probe of `tasks` in order: means per task, per kind and per form, the
        predictions, and routing accuracy over probes whose answer a task in `trained` taught."""
        def by_task() -> dict[str, dict[str, list[float]]]:
            return {t.name: defaultdict(list) for t in tasks}

        per_task: dict[str, dict[str, list[float]]] = by_task()
        per_kind: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(by_task)
        per_form: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = defaultdict(lambda: defaultdict(by_task))
        predictions = []
        probes = [(task, index, probe) for task in tasks for index, probe in enumerate(task.probes)]
        for (task, index, probe), score in zip(probes, scores, strict=True):
            buckets = [per_task[task.name], per_kind[probe.kind][task.name]]
            for form in forms_of(probe.form):
                buckets += [per_form[form][""][task.name], per_form[form][probe.kind][task.name]]
            for bucket in buckets:
                bucket["em"].append(score.em)
                bucket["f1"].append(score.f1)
            predictions.append({
                "row": label, "task": task.name, "probe": index, "kind": probe.kind, "key": probe.key, "form": probe.form,
                "prompt": probe.prompt, "answer": probe.answer, "prediction": score.prediction, "correct": bool(score.em),
                "f1": score.f1, **({"route": score.route, "learned_in": probe.learned_in or task.name}
                                   if score.route is not None else {}),
                **({"fact": score.fact} if score.fact is not None else {}),
            })
        # A route is right when it is the task that taught the answer (not merely the one the probe names);
        # a probe whose answer no trained task has taught yet is not counted.
        routed = [p["route"] == p["learned_in"] for p in predictions if "route" in p and p["learned_in"] in trained]
        # The router's (fact, period) is right when it names the probe's fact and the period that taught its answer.
        asked = [p for p in predictions if "fact" in p and p["key"] and p["learned_in"] in trained]
        named = [p for p in asked if p["fact"]]
        # A key is "subject | relation" (generated streams) or "subject | relation | object" (imported ones).
        right = sum(normalize_answer(p["fact"]) == normalize_answer(" | ".join(p["key"].split(" | ")[:2]))
                    and p["route"] == p["learned_in"] for p in named)

        def means(buckets: dict[str, dict[str, list[float]]], metric: str) -> list[float | None]:
            return [metrics.mean(buckets[t.name][metric]) for t in tasks]

        return cls(
            label=label, em=means(per_task, "em"), f1=means(per_task, "f1"),
            by_kind={kind: {"em": means(b, "em"), "f1": means(b, "f1")} for kind, b in sorted(per_kind.items()) if kind},
            by_form={form: {kind: {"em": means(b, "em"), "f1": means(b, "f1")} for kind, b in sorted(kinds.items())}
                     for form, kinds in sorted(per_form.items())},
            general_ppl=general_ppl, eval_seconds=eval_seconds, predictions=predictions,
            routing_accuracy=metrics.mean(routed),
            router_precision=right / len(named) if named else None, router_recall=right / len(asked) if asked else None,
            locality=[first_statement(answer) for answer in locality],
        )


def forms_of(form: str) -> list[str]:
    """The forms a probe's scores count toward: its own, and for a template of a split family ("test/q-last", see
    `retain.bench.probe_templates`) its half as a whole ("test/*")."""
    if not form:
        return []
    half, slash, _ = form.partition("/")
    return [form, f"{half}/*"] if slash else [form]


KindsOf = Callable[[EvalRow], dict[str, dict[str, list[float | None]]]]  # a row → its scores per probe kind
# A benchmark's own summary metrics: (result, each row's scores per kind, the last row's predictions, "em" or "f1")
# → named numbers, or {} when the result is not of that benchmark. Registered with `register_summary` by the
# benchmark that defines them (retain.bench.temporal_facts: plasticity, stability, historical); RunResult.summary
# adds them overall and per probe form.
Summary = Callable[["RunResult", KindsOf, list[dict[str, Any]], str], dict[str, Any]]
SUMMARIES: list[Summary] = []


def register_summary(summary: Summary) -> Summary:
    SUMMARIES.append(summary)
    return summary


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
        summary |= self._registered(lambda row: row.by_kind, self.rows[-1].predictions, metric)
        forms = sorted({form for row in self.rows for form in row.by_form})
        if forms:
            summary["by_form"] = {}
            for form in forms:
                last = [p for p in self.rows[-1].predictions if form in forms_of(p.get("form", ""))]
                scores = self._registered(lambda row: row.by_form.get(form, {}), last, metric)
                overall = [row.by_form.get(form, {}).get("", {}).get(metric, [None] * k)[:k] for row in self.rows[1:]]
                summary["by_form"][form] = {"acc": metrics.acc(overall), **scores}
        return summary

    def locality(self) -> float | None:
        """Of the stream's locality prompts, the share answered after the last task as the untrained model answered
        them (their first statements, normalised); None without locality prompts."""
        if len(self.rows) < 2 or not self.rows[0].locality or len(self.rows[-1].locality) != len(self.rows[0].locality):
            return None
        pairs = zip(self.rows[0].locality, self.rows[-1].locality)
        return metrics.mean([float(normalize_answer(a) == normalize_answer(b)) for a, b in pairs])

    def _registered(self, kinds_of: KindsOf, last_predictions: list[dict[str, Any]], metric: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for summarize in SUMMARIES:
            found |= summarize(self, kinds_of, last_predictions, metric)
        return found

    def logs(self) -> dict[str, float]:
        """The latest row as the Trainer's loggers take it: EM on each task, the summary metrics so far (per probe
        form too), general perplexity, routing accuracy and the task's training cost. Keys start with `eval_`, which
        the integrations file under eval/."""
        row, summary = self.rows[-1], self.summary("em")
        logs: dict[str, float] = {f"eval_em/{name}": value for name, value in zip(self.tasks, row.em) if value is not None}
        logs |= {f"eval_{key}": value for key, value in summary.items() if isinstance(value, (int, float))}
        logs |= {f"eval_{form}/{key}": value for form, scores in summary.get("by_form", {}).items()
                 for key, value in scores.items() if isinstance(value, (int, float))}
        if row.general_ppl is not None:
            logs["eval_general_ppl"] = row.general_ppl
        logs |= {f"eval_{key}": value for key in ("routing_accuracy", "router_precision", "router_recall")
                 if (value := getattr(row, key)) is not None}
        if self.timings and row.label != "initial":
            timing = self.timings[-1]
            logs |= {f"eval_{key}": timing[key] for key in ("train_seconds", "train_tokens", "optimizer_steps") if key in timing}
        return logs

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
                "router_precision": metrics.mean([row.router_precision for row in self.rows[1:]]),
                "router_recall": metrics.mean([row.router_recall for row in self.rows[1:]]),
                "locality": self.locality(),
            },
            "by_form": {
                form: {kind: {m: [row.by_form.get(form, {}).get(kind, {}).get(m) for row in self.rows[1:]] for m in ("em", "f1")}
                       for kind in sorted({kind for row in self.rows for kind in row.by_form.get(form, {})})}
                for form in sorted({form for row in self.rows for form in row.by_form})
            },
            "routing_accuracy": [row.routing_accuracy for row in self.rows],
            "router_precision": [row.router_precision for row in self.rows],
            "router_recall": [row.router_recall for row in self.rows],
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
