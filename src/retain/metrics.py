"""Continual-learning metrics from a result matrix R, where R[i][j] is the score on task j after task i.

With T tasks, b the untrained model's row, and rows/columns counted from 0:

- ACC = (1/T) Σ_j R[T−1][j]                                   final average score
- BWT = (1/(T−1)) Σ_{j<T−1} (R[T−1][j] − R[j][j])              backward transfer (negative = forgetting)
- FWT = (1/(T−1)) Σ_{j≥1} (R[j−1][j] − b[j])                   forward transfer to not-yet-trained tasks
- forgetting = (1/(T−1)) Σ_{j<T−1} (max_{j≤l<T−1} R[l][j] − R[T−1][j])   (Chaudhry et al. 2018)

BWT, FWT and forgetting need two tasks and are None for one. A None cell (a task with no probe
of some kind) is left out of every mean.

For streams of time-scoped facts, with probes of kind `changed` / `unchanged` and keys naming
each question across periods:

- plasticity = mean over i ≥ 1 of R_changed[i][i]: what period i changed, right after period i
- stability  = mean over i ≥ 1 of R_unchanged[i][i]: facts learned earlier, still true and not
  retrained in period i, asked as of period i right after it
- historical = after the last period, the score on earlier periods' probes whose answer is no
  longer the current one (asking about the past after the world moved on)
"""

from __future__ import annotations

from collections.abc import Sequence

Row = Sequence[float | None]


def mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def acc(matrix: Sequence[Row]) -> float | None:
    return mean(matrix[-1])


def acc_curve(matrix: Sequence[Row]) -> list[float | None]:
    """Mean score over the tasks trained so far, after each task."""
    return [mean(row[: i + 1]) for i, row in enumerate(matrix)]


def bwt(matrix: Sequence[Row]) -> float | None:
    last = len(matrix) - 1
    return mean([_diff(matrix[last][j], matrix[j][j]) for j in range(last)]) if last else None


def fwt(matrix: Sequence[Row], initial: Row) -> float | None:
    if len(matrix) < 2:
        return None
    return mean([_diff(matrix[j - 1][j], initial[j]) for j in range(1, len(matrix))])


def forgetting(matrix: Sequence[Row]) -> float | None:
    last = len(matrix) - 1
    if not last:
        return None
    drops = []
    for j in range(last):
        earlier = [matrix[l][j] for l in range(j, last) if matrix[l][j] is not None]
        drops.append(_diff(max(earlier), matrix[last][j]) if earlier else None)
    return mean(drops)


def diagonal_mean(matrix: Sequence[Row], start: int = 1) -> float | None:
    return mean([matrix[i][i] for i in range(start, len(matrix))])


def historical(last_row: Sequence[dict], current_task: str, score: str = "correct",
               reference: Sequence[dict] | None = None) -> float | None:
    """Mean `score` of the earlier tasks' probes, in the last evaluation, whose key now has another answer (the
    current task's answer for it among `reference`, by default `last_row` itself: a subset of the probes, one probe
    form's, is scored against every current answer)."""
    current = {p["key"]: p["answer"] for p in reference or last_row if p["task"] == current_task and p.get("key")}
    past = [float(p[score]) for p in last_row
            if p["task"] != current_task and p.get("key") in current and p["answer"] != current[p["key"]]]
    return mean(past)


def summarize(matrix: Sequence[Row], initial: Row) -> dict[str, float | list[float | None] | None]:
    """ACC, BWT, FWT and forgetting of a square result matrix (rows = after each task)."""
    if any(len(row) != len(matrix) for row in matrix) or len(initial) != len(matrix):
        raise ValueError("summarize: the result matrix must be square, with one initial score per task")
    return {
        "acc": acc(matrix),
        "bwt": bwt(matrix),
        "fwt": fwt(matrix, initial),
        "forgetting": forgetting(matrix),
        "acc_curve": acc_curve(matrix),
    }
