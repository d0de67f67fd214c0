"""The eval report's figures: reliability diagrams and confusion matrices per classification
task, training loss and task weights per step, and throughput bars, each drawn on matplotlib's
Agg canvas (no pyplot, so no global figure state) and returned as an HTML ``<figure>`` holding
an inline base64 PNG, for ``distill.report.html`` to place."""

from __future__ import annotations

import base64
import html as html_lib
import io
from typing import Any

import numpy as np

TEACHER_COLOR, STUDENT_COLOR = "#4C72B0", "#DD8452"
COLORS = {"teacher": TEACHER_COLOR, "student": STUDENT_COLOR}


def _number(value: Any) -> str:
    """A metric as report's tables print it: 3 decimals, n/a when missing."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _figure(width: float, height: float, panels: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(1, panels)))


def _png_base64(fig: Any) -> str:
    buf = io.BytesIO()
    # Figure.savefig renders PNG with the Agg backend; "tight" keeps long tick labels in the image.
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_html(fig: Any, title: str) -> str:
    """``fig`` titled ``title`` (drawn in the image; the <img>'s alt text too)."""
    fig.suptitle(title, fontsize=12, fontweight="bold")
    src = f"data:image/png;base64,{_png_base64(fig)}"
    return f'<figure><img src="{src}" alt="{html_lib.escape(title)}"></figure>'


def _reliability_panel(ax: Any, who: str, node: dict[str, Any]) -> None:
    """Accuracy per confidence bin as bars, each bin's mean confidence as a dot at that accuracy:
    on the diagonal when calibrated, right of it when over-confident."""
    rel = node["reliability"]
    edges = np.array(rel["edges"])
    full = [i for i, c in enumerate(rel["count"]) if c]
    accuracy = [rel["accuracy"][i] for i in full]
    ax.bar(edges[full], accuracy, width=np.diff(edges)[full], align="edge", color=COLORS[who],
           alpha=0.6, edgecolor="white", label="accuracy in bin")  # fmt: skip
    ax.plot([rel["mean_confidence"][i] for i in full], accuracy, "o", color="black", ms=4,
            label="mean confidence in bin")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    for i, a in zip(full, accuracy):
        ax.text((edges[i] + edges[i + 1]) / 2, a + 0.02, str(rel["count"][i]), ha="center", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.1), xlabel="confidence (top-label probability)", ylabel="accuracy")
    ax.set_title(f"{who}: ECE {_number(node.get('ece'))}, {sum(rel['count'])} rows (count above bar)")
    ax.legend(loc="upper left", fontsize=8)


def _confusion_panel(ax: Any, who: str, counts: list[list[int]], labels: list[str]) -> None:
    """Counts in the cells; colour = share of the gold row, so rare labels show their errors too."""
    matrix = np.array(counts, dtype=float)
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (g, p), n in np.ndenumerate(matrix):
        ax.text(p, g, str(int(n)), ha="center", va="center", fontsize=11,
                color="white" if share[g, p] > 0.6 else "black")  # fmt: skip
    ticks = range(len(labels))
    ax.set_xticks(
        ticks, labels, rotation=45 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center"
    )
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted", ylabel="gold", title=who)


def classification_figures(name: str, m: dict[str, Any]) -> list[str]:
    """The task's reliability diagrams and confusion matrices (teacher, student), as HTML; none
    for a report.json written before eval recorded them."""
    if "reliability" not in m["student"]:
        return []
    fig, axes = _figure(11, 4.2, 2)
    for ax, who in zip(axes, ("teacher", "student")):
        _reliability_panel(ax, who, m[who])
    out = [_figure_html(fig, f"{name}: reliability diagram, teacher and student")]
    side = 2.6 + 0.45 * len(m["labels"])  # inches per matrix: room for the label names
    fig, axes = _figure(2 * side + 1, side + 0.6, 2)
    for ax, who in zip(axes, ("teacher", "student")):
        _confusion_panel(ax, who, m[who]["confusion"], m["labels"])
    out.append(
        _figure_html(fig, f"{name}: confusion matrix (rows gold, columns predicted), teacher and student")
    )
    return out


def _series(log: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the log records that hold a number under ``key``."""
    points = [(r["step"], r[key]) for r in log if isinstance(r.get(key), (int, float)) and "step" in r]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points], dtype=float)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (fewer at the start), same length as ``values``."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    lo = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (sums[1:] - sums[lo]) / (np.arange(1, len(values) + 1) - lo)


def training_figures(tasks: list[str], log: list[dict[str, Any]]) -> list[str]:
    """Per-task loss (faint: per step; solid: trailing mean) and task weights over the steps."""
    lossy = [t for t in tasks if len(_series(log, t)[0])]
    out = []
    if lossy:
        fig, (ax,) = _figure(11, 4)
        for task in lossy:
            i = tasks.index(task)  # one colour per task in both figures
            steps, loss = _series(log, task)
            window = max(1, len(steps) // 20)
            ax.plot(steps, loss, color=f"C{i}", alpha=0.25, lw=1)
            ax.plot(
                steps, _moving_average(loss, window), color=f"C{i}", lw=2, label=f"{task} (mean of {window})"
            )
        low, high = (f(f(_series(log, t)[1]) for t in lossy) for f in (min, max))
        if 0 < 20 * low < high:
            ax.set_yscale("log")  # token losses and class losses sit on different scales
            ax.yaxis.set_major_formatter("{x:g}")
        ax.set(xlabel="step", ylabel="task loss")
        ax.legend(fontsize=8)
        out.append(_figure_html(fig, "training loss per task: " + ", ".join(lossy)))
    weighted = [t for t in tasks if len(_series(log, f"weight/{t}")[0])]
    if weighted:
        fig, (ax,) = _figure(11, 3.2)
        for i, task in enumerate(weighted):
            # Equal weights draw over each other: a dash pattern per task keeps each one visible.
            style = ("-", "--", ":", "-.")[i % 4]
            ax.plot(*_series(log, f"weight/{task}"), style, color=f"C{tasks.index(task)}", lw=2, label=task)
        ax.set_ylim(bottom=0)
        ax.set(xlabel="step", ylabel="weight")
        ax.legend(fontsize=8)
        out.append(_figure_html(fig, "task weights per step: " + ", ".join(weighted)))
    return out


def speed_figure(models: dict[str, Any]) -> str:
    """Batched items/s of student and teacher per task (log scale), the speed-up under each task."""
    tasks = list(dict.fromkeys([*models["student"]["speed"], *models["teacher"]["speed"]]))
    fig, (ax,) = _figure(max(8.0, 1.4 * len(tasks) + 3), 3.8)
    x = np.arange(len(tasks))
    for offset, who in ((-0.2, "teacher"), (0.2, "student")):
        speed = models[who]["speed"]
        rate = [speed[t]["items_per_s"] if t in speed else np.nan for t in tasks]
        bars = ax.bar(x + offset, rate, width=0.4, color=COLORS[who], label=who)
        ax.bar_label(bars, labels=["" if np.isnan(r) else f"{r:g}" for r in rate], fontsize=8)
    ticks = []
    for task in tasks:
        t, s = (models[who]["speed"].get(task, {}).get("items_per_s") for who in ("teacher", "student"))
        ticks.append(f"{task}\nstudent ×{s / t:.1f}" if t and s else task)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter("{x:g}")  # 0.1, 1, 10 rather than 10^-1, 10^0, 10^1
    ax.margins(y=0.15)
    ax.set_xticks(x, ticks)
    ax.set(ylabel="items/s (batched)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _figure_html(fig, "throughput per task (items/s), student vs teacher")
