"""The comparison's charts as PNG bytes: F1 and training time per model, F1 against prediction and training cost
(seconds, peak memory), confusion matrices and precision-recall curves, drawn on matplotlib `Figure` objects (Agg
canvas, no display and no pyplot state). A module of its own because matplotlib takes half a second to import, which the processes that only train,
predict or serve (compare's spawned members, torchrun's ranks, sweep workers) should not pay.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay
from sklearn.preprocessing import label_binarize

from lorabench.core.storage import safe_dir_name
from lorabench.workflows.results import ModelResult
from lorabench.workflows.verdict import pareto_front


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _bar_chart(names: list[str], series: dict[str, list[float]], title: str, xlabel: str, digits: int) -> bytes:
    """Horizontal bars, one group per model (top to bottom in comparison order), values written on the bars."""
    figure = Figure(figsize=(5.2, 1.0 + 0.45 * len(names) * len(series)))
    axes = figure.subplots()
    height = 0.8 / len(series)
    positions = np.arange(len(names))
    for i, (label, values) in enumerate(series.items()):
        bars = axes.barh(positions + i * height, values, height, label=label)
        axes.bar_label(bars, fmt=f"%.{digits}f", padding=3)
    axes.set_yticks(positions + height * (len(series) - 1) / 2, names)
    axes.invert_yaxis()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_xlim(0, max(max(v) for v in series.values()) * 1.18 or 1)
    if len(series) > 1:
        axes.legend(loc="lower right")
    return _png(figure)


def _confusion_chart(result: ModelResult) -> bytes:
    labels, probabilities = result.scores("val")
    names = [str(name) for name in result.summary.label_names]
    figure = Figure(figsize=(3.4, 3.0))
    axes = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        labels,
        probabilities.argmax(axis=1),
        labels=list(range(len(names))),
        display_labels=names,
        ax=axes,
        colorbar=False,
        cmap="Blues",
    )
    axes.set_title(result.name)
    return _png(figure)


def _pr_chart(results: list[ModelResult]) -> bytes:
    """Precision-recall on validation: of the positive class for two classes, else micro-averaged over classes."""
    figure = Figure(figsize=(6.0, 4.6))
    axes = figure.subplots()
    names = results[0].summary.label_names
    for result in results:
        labels, probabilities = result.scores("val")
        if len(names) == 2:
            PrecisionRecallDisplay.from_predictions(labels, probabilities[:, 1], pos_label=1, name=result.name, ax=axes)
        else:
            binary = label_binarize(labels, classes=list(range(len(names))))
            PrecisionRecallDisplay.from_predictions(binary.ravel(), probabilities.ravel(), name=result.name, ax=axes)
    what = f"positive class '{names[1]}'" if len(names) == 2 else "micro-average over classes"
    axes.set_title(f"Precision-recall on validation ({what})")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.legend(loc="lower left")
    return _png(figure)


@dataclass(frozen=True)
class CostAxis:
    """A cost that val F1 is plotted against: its results column, what it is, its axis label, and whether more of
    it is cheaper (throughput) or dearer (seconds, memory)."""

    column: str
    title: str
    label: str
    more_is_cheaper: bool


# chart file -> its cost: what using a model costs, then what training it cost
COST_CHARTS = {
    "cost.png": CostAxis("predict_texts_per_s", "prediction throughput",
                         "texts per second, bulk prediction (log scale; right is cheaper)", True),
    "cost_train_seconds.png": CostAxis("train_seconds", "training time",
                                       "training seconds (log scale; left is cheaper)", False),
    "cost_train_memory.png": CostAxis("peak_memory_mb", "training peak memory",
                                      "peak memory while training, MB (log scale; left is cheaper)", False),
}  # fmt: skip


def _cost_chart(table: pd.DataFrame, cost: CostAxis) -> bytes | None:
    """Val F1 (mean over seeds, with the 95% interval's extent) against a cost (log scale); the models no other
    beats on both are filled and joined. None when no model's cost was measured."""
    rows = table[(table["status"] == "ok") & (table[cost.column].astype(float) > 0)]
    if rows.empty:
        return None
    f1, amount = rows["val_f1_mean"].to_numpy(float), rows[cost.column].to_numpy(float)
    below = (rows["val_f1"] - rows["val_f1_low"]).to_numpy(float)
    above = (rows["val_f1_high"] - rows["val_f1"]).to_numpy(float)
    cheapness = amount if cost.more_is_cheaper else -amount
    front = pareto_front(list(zip(f1, cheapness, strict=True)))
    figure = Figure(figsize=(6.4, 4.4))
    axes = figure.subplots()
    for i, name in enumerate(rows["model"]):
        on_front = i in front
        axes.errorbar(amount[i], f1[i], yerr=[[below[i]], [above[i]]], fmt="o", capsize=4,
                      color="C0" if on_front else "0.55", markerfacecolor="C0" if on_front else "white")  # fmt: skip
        axes.annotate(name, (amount[i], f1[i]), textcoords="offset points", xytext=(7, 5), fontsize=8)
    ordered = sorted(front, key=lambda i: amount[i])
    axes.plot(amount[ordered], f1[ordered], "--o", color="C0", linewidth=1, label="no other model beats it on both")
    axes.set_xscale("log")
    if np.log10(amount.max() / amount.min()) < 2:  # a decade or two shows one or two powers of ten: add 2x and 5x
        axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.6g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide within a decade or two
    axes.margins(x=0.25, y=0.15)
    axes.set_title(f"Val F1 against {cost.title}")
    axes.set_xlabel(cost.label)
    axes.set_ylabel("val F1 (mean over seeds)")
    axes.legend(loc="lower left", fontsize=8)
    return _png(figure)


def draw_charts(results: list[ModelResult], table: pd.DataFrame) -> dict[str, bytes]:
    """PNG bytes by file name; models that failed have no bars or curves."""
    trained = [result for result in results if result.ok]
    if not trained:
        return {}
    names = [result.name for result in trained]
    f1 = {"validation": [result.summary.val.f1 for result in trained]}
    if all(result.summary.test for result in trained):
        f1["test"] = [result.summary.test.f1 for result in trained]
    charts = {
        "f1.png": _bar_chart(names, f1, "F1 (higher is better)", "F1", 3),
        "train_time.png": _bar_chart(
            names,
            {"train": [result.summary.train_seconds for result in trained]},
            "Training time (lower is better)",
            "seconds",
            1,
        ),
        "pr_curves.png": _pr_chart(trained),
    }
    for name, cost in COST_CHARTS.items():
        png = _cost_chart(table, cost)
        if png is not None:
            charts[name] = png
    for result in trained:
        charts[f"confusion_{safe_dir_name(result.name)}.png"] = _confusion_chart(result)
    return charts
