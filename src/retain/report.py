"""Tables and plots from the run directories of a comparison: report.md, report.html and PNG figures."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from retain.runstate import atomic_write  # noqa: E402

_COLUMNS = [  # (summary key, header)
    ("acc", "ACC"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forget"),
    ("plasticity", "plast"), ("stability", "stab"), ("historical", "hist"), ("locality", "local"),
]
LEGEND = ("ACC: final mean score; BWT/FWT: backward/forward transfer; forget: Chaudhry forgetting; "
          "plast: changed facts right after their period; stab: unchanged facts, as of each period; "
          "hist: superseded facts asked about the past, after the last period; local: questions no task teaches "
          "answered as before training; ppl: general-text perplexity "
          "before → after; train s / tokens: total training time and tokens over the stream (fact questions "
          "included); time×: training seconds per token relative to the baseline method in the same comparison.")


def load_results(directory: str | Path) -> dict[str, dict[str, Any]]:
    """result.json of each method's run directory under `directory`, in the order they were run."""
    directory = Path(directory)
    order = json.loads((directory / "compare.json").read_text())["methods"] if (directory / "compare.json").is_file() else None
    found = {p.parent.name: json.loads(p.read_text()) for p in sorted(directory.glob("*/result.json"))}
    if not found:
        raise FileNotFoundError(f"{directory}: no */result.json to report on")
    names = [m for m in order if m in found] if order else sorted(found)
    return {name: found[name] for name in names}


def baseline_of(directory: str | Path, results: dict[str, dict[str, Any]], baseline: str | None = None) -> str:
    """The method others' cost is measured against: `baseline`, else the comparison's (compare.json), else full_ft
    when it ran, else the first method."""
    if baseline is None and (Path(directory) / "compare.json").is_file():
        baseline = json.loads((Path(directory) / "compare.json").read_text()).get("baseline")
    if baseline is not None and baseline not in results:
        raise ValueError(f"--baseline {baseline}: not one of the methods {list(results)}")
    return baseline or ("full_ft" if "full_ft" in results else next(iter(results)))


def summary_rows(results: dict[str, dict[str, Any]], baseline: str | None = None) -> tuple[list[str], list[list[str]]]:
    present = [c for c in _COLUMNS if any(r["summary"].get(c[0]) is not None for r in results.values())]
    baseline = baseline or next(iter(results))
    headers = ["method", *[c[1] for c in present], "ppl", "Δppl", "train s", "tokens", f"time× {baseline}"]
    base = seconds_per_token(results.get(baseline))
    rows = []
    for method, result in results.items():
        summary, ppl = result["summary"], result["summary"].get("general_ppl") or []
        cells = [method + ("" if result.get("complete") else " (partial)")]
        cells += ["–" if summary.get(key) is None else f"{summary[key]:.3f}" for key, _ in present]
        cells.append(f"{ppl[0]:.1f}→{ppl[-1]:.1f}" if ppl and ppl[0] is not None else "–")
        change = summary.get("general_ppl_change")
        cells.append("–" if change is None else f"{100 * change:+.1f}%")
        timings = result.get("timings") or []
        cells.append(f"{sum(t['train_seconds'] for t in timings):.0f}" if timings else "–")
        cells.append(f"{sum(t['train_tokens'] for t in timings):,}" if timings else "–")
        own = seconds_per_token(result)
        cells.append(f"{own / base:.2f}" if own and base else "–")
        rows.append(cells)
    return headers, rows


def form_rows(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Plasticity, stability and historical score per probe form (wording), one row per method and form."""
    headers = ["method", "form", "plast", "stab", "hist", "ACC"]
    rows = []
    for method, result in results.items():
        for form, scores in (result["summary"].get("by_form") or {}).items():
            rows.append([method, form, *["–" if scores.get(k) is None else f"{scores[k]:.3f}"
                                         for k in ("plasticity", "stability", "historical", "acc")]])
    return headers, rows


def cost_rows(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per method and task: examples trained on (fact questions among them), tokens, seconds, seconds per step."""
    headers = ["method", "task", "examples", "fact questions", "tokens", "train s", "s/step"]
    rows = []
    for method, result in results.items():
        for t in result.get("timings") or []:
            rows.append([method, str(t["task"]), str(t.get("train_examples", "–")), str(t.get("fact_questions", "–")),
                         f"{t['train_tokens']:,}", f"{t['train_seconds']:.1f}", f"{t['seconds_per_step']:.3f}"])
    return headers, rows


def seconds_per_token(result: dict[str, Any] | None) -> float | None:
    """Training seconds per training token over a run's tasks (None without timings)."""
    if not result or not result.get("timings"):
        return None
    tokens = sum(t["train_tokens"] for t in result["timings"])
    return sum(t["train_seconds"] for t in result["timings"]) / tokens if tokens else None


def _heatmap(result: dict[str, Any], method: str, path: Path) -> None:
    tasks = result["tasks"]
    labels = ["initial", *tasks[: len(result["matrix"]["em"])]]
    matrix = [result["initial"]["em"], *result["matrix"]["em"]]
    values = [[float("nan") if v is None else v for v in row] for row in matrix]
    size = max(3.2, 0.7 * len(tasks) + 1.8)
    fig, ax = plt.subplots(figsize=(size + 0.8, size * len(labels) / (len(tasks) + 1) + 0.6))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45 if len(tasks) > 6 else 0, ha="right" if len(tasks) > 6 else "center")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("score on task")
    ax.set_ylabel("after training on")
    ax.set_title(f"{method}: exact match")
    if len(tasks) <= 12:
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(results: dict[str, dict[str, Any]], path: Path) -> None:
    keys = [c for c in ("plasticity", "stability", "historical", "acc", "forgetting")
            if any(r["summary"].get(c) is not None for r in results.values())]
    if {"plasticity", "stability"} <= set(keys):
        keys = [k for k in keys if k in ("plasticity", "stability", "historical")]
    methods = list(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 1.4]})
    width = 0.8 / max(len(methods), 1)
    for m, method in enumerate(methods):
        values = [results[method]["summary"].get(k) or 0.0 for k in keys]
        bars = left.bar([i + (m - (len(methods) - 1) / 2) * width for i in range(len(keys))], values, width, label=method)
        left.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    left.set_xticks(range(len(keys)), keys)
    left.set_ylim(0, 1.1)
    left.set_ylabel("exact match")
    left.legend(fontsize=8, ncols=min(len(methods), 4), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    left.set_title("what was learned and kept (higher is better)")
    changes = [100 * (results[m]["summary"].get("general_ppl_change") or 0.0) for m in methods]
    bars = right.bar(methods, changes, color=[f"C{i}" for i in range(len(methods))])
    right.bar_label(bars, fmt="%+.1f%%", fontsize=8, padding=1)
    low, high = min(changes + [0.0]), max(changes + [0.0])
    right.set_ylim(low - 0.15 * (high - low or 1), high + 0.15 * (high - low or 1))
    right.set_ylabel("%")
    right.set_title("general-text perplexity change\n(lower is better)")
    right.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curves(results: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    first = next(iter(results.values()))["tasks"][0]
    for method, result in results.items():
        scores = [result["initial"]["em"][0], *[row[0] for row in result["matrix"]["em"]]]
        labels = ["initial", *result["tasks"][: len(scores) - 1]]
        ax.plot(labels, [float("nan") if s is None else s for s in scores], marker="o", label=method)
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel(f"exact match on task {first!r}")
    ax.set_xlabel("after training on")
    ax.set_title(f"forgetting of the first task ({first})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def method_groups(directory: Path, results: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Runs of a comparison grouped by the method they run (variants NAME=METHOD join their METHOD)."""
    variants = json.loads((directory / "compare.json").read_text()).get("variants", {}) \
        if (directory / "compare.json").is_file() else {}
    groups: dict[str, list[str]] = {}
    for name in results:
        groups.setdefault(variants.get(name, name), []).append(name)
    return groups


TRADEOFF_KEPT = ("stability", "historical", "general_ppl_change")


def tradeoff_points(results: dict[str, dict[str, Any]], groups: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """Per method, one point per run: its name, plasticity and what it kept (`TRADEOFF_KEPT`)."""
    return {method: [{"run": r, **{k: results[r]["summary"].get(k) for k in ("plasticity", *TRADEOFF_KEPT)}} for r in runs]
            for method, runs in groups.items()}


def tradeoff_figure(curves: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """What was learned (plasticity) against what was kept, one curve per method over its points (e.g. a learning-rate
    sweep), as the SMF paper compares methods at matched learning. A value is a number or, over seeds, a
    {"mean", "sd"} pair, drawn with error bars. Drawn when some method has several points."""
    if not any(len(points) > 1 for points in curves.values()):
        return False

    def value(point: dict[str, Any], key: str) -> tuple[float, float] | None:
        v = point.get(key)
        return None if v is None else (v["mean"], v["sd"]) if isinstance(v, dict) else (v, 0.0)

    labels = {"stability": "stability", "historical": "historical", "general_ppl_change": "general ppl change (%)"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    for color, (method, points) in enumerate(curves.items()):
        for ax, key in zip(axes, TRADEOFF_KEPT):
            scale = 100 if key == "general_ppl_change" else 1
            drawn = sorted((x, y, p["run"]) for p in points
                           if (x := value(p, "plasticity")) is not None and (y := value(p, key)) is not None)
            if not drawn:
                continue
            xs, xerr = zip(*[x for x, _, _ in drawn])
            ys, yerr = zip(*[(scale * y[0], scale * y[1]) for _, y, _ in drawn])
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", color=f"C{color}", label=method, capsize=2)
            for x, y, (_, _, name) in zip(xs, ys, drawn):
                ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel("plasticity (learned)")
            ax.set_ylabel(labels[key])
            ax.grid(alpha=0.3)
    axes[2].set_yscale("symlog")
    axes[0].legend(fontsize=8)
    fig.suptitle("trade-off: learned against kept, one curve per method")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _speed(results: dict[str, dict[str, Any]], path: Path, baseline: str) -> bool:
    base = seconds_per_token(results.get(baseline))
    if not base:
        return False
    methods = [m for m in results if seconds_per_token(results[m])]
    ratios = [seconds_per_token(results[m]) / base for m in methods]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bars = ax.barh(methods, ratios, color=[f"C{i}" for i in range(len(methods))])
    ax.bar_label(bars, fmt="%.2f×", fontsize=8, padding=2)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"training seconds per token, relative to {baseline} (measured in one run)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(directory: str | Path, baseline: str | None = None) -> dict[str, Path]:
    """Write report.md, report.html and the PNGs for the comparison in `directory`; return their paths. Costs are
    relative to `baseline` (see `baseline_of`)."""
    directory = Path(directory)
    results = load_results(directory)
    baseline = baseline_of(directory, results, baseline)
    figures: list[tuple[str, Path]] = []
    _bars(results, directory / "summary.png")
    figures.append(("Summary across methods", directory / "summary.png"))
    _curves(results, directory / "forgetting.png")
    figures.append(("Forgetting curves", directory / "forgetting.png"))
    if _speed(results, directory / "speed.png", baseline):
        figures.append(("Training time per token", directory / "speed.png"))
    if tradeoff_figure(tradeoff_points(results, method_groups(directory, results)), directory / "tradeoff.png"):
        figures.append(("Trade-off: learned against kept", directory / "tradeoff.png"))
    for method, result in results.items():
        _heatmap(result, method, directory / f"heatmap_{method}.png")
        figures.append((f"Result matrix: {method}", directory / f"heatmap_{method}.png"))

    headers, rows = summary_rows(results, baseline)
    first = next(iter(results.values()))
    title = f"retain comparison: {', '.join(results)} on {first['model']}"
    md = [f"# {title}", "", f"Stream tasks: {', '.join(first['tasks'])}. Seed {first['seed']}. "
          "Scores are exact match; R[i][j] is the score on task j after training through task i.", "",
          _markdown_table(headers, rows), "", LEGEND, ""]
    if (forms := form_rows(results))[1]:
        md += ["## Scores per probe form", "", "Each form is a wording no method trained on.", "", _markdown_table(*forms), ""]
    md += ["## Training cost per task", "", _markdown_table(*cost_rows(results)), ""]
    for caption, path in figures:
        md += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
    for method, result in results.items():
        md += [f"## {method}: result matrix", "", _matrix_table(result), ""]
    outputs = {"md": directory / "report.md", "html": directory / "report.html"}
    atomic_write(outputs["md"], "\n".join(md))
    atomic_write(outputs["html"], _html(title, first, headers, rows, figures, results))
    return outputs | {path.stem: path for _, path in figures}


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _matrix_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["after \\ on", *result["tasks"]]
    rows = []
    for label, row in zip(["initial", *result["tasks"]], [result["initial"]["em"], *result["matrix"]["em"]]):
        rows.append([label, *["–" if v is None else f"{v:.2f}" for v in row]])
    return headers, rows


def _matrix_table(result: dict[str, Any]) -> str:
    return _markdown_table(*_matrix_rows(result))


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(title: str, first: dict[str, Any], headers: list[str], rows: list[list[str]],
          figures: list[tuple[str, Path]], results: dict[str, dict[str, Any]]) -> str:
    images = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for caption, path in figures
    )
    matrices = "".join(f"<h3>{html.escape(m)}</h3>{_html_table(*_matrix_rows(r))}" for m, r in results.items())
    forms = form_rows(results)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .35rem .7rem; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
thead th {{ background: #f4f4f6; }}
figure {{ display: inline-block; margin: .5rem 1rem .5rem 0; vertical-align: top; }}
figure img {{ max-width: 100%; }}
figcaption, .legend {{ color: #666; font-size: .9rem; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Stream tasks: {html.escape(", ".join(first["tasks"]))}. Seed {first["seed"]}. Scores are exact match;
R[i][j] is the score on task j after training through task i.</p>
{_html_table(headers, rows)}
<p class="legend">{html.escape(LEGEND)}</p>
{f"<h2>Scores per probe form</h2><p>Each form is a wording no method trained on.</p>{_html_table(*forms)}" if forms[1] else ""}
<h2>Training cost per task</h2>
{_html_table(*cost_rows(results))}
{images}
<h2>Result matrices</h2>
{matrices}
</body></html>
"""
