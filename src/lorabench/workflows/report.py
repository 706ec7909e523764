"""Render a comparison from its records: results.csv, results.md, charts/*.png and one self-contained report.html.

Everything is read back from `compare.json` and each model's run directory, so `lorabench report DIR` re-renders
the same page without training. Charts are drawn on matplotlib `Figure` objects (Agg canvas, no display and no
pyplot state) and embedded in the HTML as data URIs, so the page is one file that opens anywhere offline.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay
from sklearn.preprocessing import label_binarize

from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.schemas import CompareManifest, RunSummary
from lorabench.core.storage import MANIFEST_FILE, RunDir, read_record, replace_dir, safe_dir_name, write_atomic

CHARTS_DIR = "charts"
METRICS = ("f1", "precision", "recall", "accuracy")
COLUMNS = [
    "model",
    "status",
    *[f"val_{m}" for m in METRICS],
    *[f"test_{m}" for m in METRICS],
    "best_epoch",
    "epochs",
    "train_rows",
    "train_seconds",
    "wall_seconds",
    "peak_memory_mb",
    "trainable_params",
    "total_params",
    "trainable_percent",
    "device",
    "error",
]
SUMMARY_COLUMNS = ("best_epoch", "epochs", "train_seconds", "peak_memory_mb", "trainable_params", "total_params",
                   "trainable_percent", "device")  # fmt: skip
INTEGER_COLUMNS = ("best_epoch", "epochs", "train_rows", "trainable_params", "total_params")


@dataclass
class ModelResult:
    name: str
    run_dir: Path
    status: str
    error: str
    wall_seconds: float | None
    summary: RunSummary | None = None
    validation: pd.DataFrame | None = None  # val_predictions.csv

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def validation_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """True class ids and the class probabilities (columns in label order) on validation."""
        names = self.summary.label_names
        probabilities = self.validation[[f"prob_{name}" for name in names]].to_numpy(dtype=np.float64)
        return self.validation["label"].to_numpy(dtype=np.int64), probabilities


def load_results(out_dir: str | Path) -> tuple[CompareManifest, list[ModelResult]]:
    """The comparison's manifest and one result per model; a finished model whose record is gone counts as failed."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise LorabenchError(f"{out_dir} holds no comparison (no {MANIFEST_FILE}); run `lorabench compare` first")
    manifest = read_record(manifest_path, CompareManifest, "comparison record")
    results = []
    for entry in manifest.models:
        result = ModelResult(entry.name, out_dir / entry.run_dir, entry.status, entry.error, entry.wall_seconds)
        if result.ok:
            try:
                result.summary = RunDir(result.run_dir).summary()
                result.validation = pd.read_csv(result.run_dir / "val_predictions.csv", dtype={"id": str})
            except (LorabenchError, OSError, ValueError) as err:
                result.status, result.error = "failed", f"run record unreadable: {first_line(err)}"
        results.append(result)
    return manifest, results


def results_table(results: list[ModelResult]) -> pd.DataFrame:
    rows = []
    for result in results:
        row = {
            "model": result.name,
            "status": result.status,
            "error": result.error,
            "wall_seconds": result.wall_seconds,
        }
        if result.ok:
            summary = result.summary
            for split in ("val", "test"):
                metrics = getattr(summary, split)
                for metric in METRICS:
                    row[f"{split}_{metric}"] = getattr(metrics, metric) if metrics else None
            row.update(summary.model_dump(include=set(SUMMARY_COLUMNS)))
            row["train_rows"] = summary.rows["train"]
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({column: "Int64" for column in INTEGER_COLUMNS})  # failed rows leave gaps, not 1.0 floats


def _number(value, digits: int = 4) -> str:
    if value is None or pd.isna(value):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The human table of results.md and report.html: test columns only when some test split had labels."""
    has_test = table["test_f1"].notna().any()
    metric_columns = [(f"val_{m}", f"val {m}") for m in METRICS]
    if has_test:
        metric_columns += [(f"test_{m}", f"test {m}") for m in METRICS]
    columns = [
        ("model", "model"),
        *metric_columns,
        ("best_epoch", "best epoch"),
        ("train_rows", "train rows"),
        ("train_seconds", "train s"),
        ("wall_seconds", "total s"),
        ("peak_memory_mb", "peak memory MB"),
        ("trainable_params", "trainable params"),
        ("trainable_percent", "trainable %"),
        ("status", "status"),
    ]
    rows = []
    for values in table.to_dict("records"):
        cells = []
        for key, _ in columns:
            value = values[key]
            if key in ("model", "status"):
                cells.append(str(value) if key == "model" or not values["error"] else f"{value}: {values['error']}")
            elif key in ("train_seconds", "wall_seconds", "peak_memory_mb"):
                cells.append(_number(value, 1))
            elif key in ("best_epoch", "train_rows", "trainable_params"):
                cells.append(_number(value))
            else:
                cells.append(_number(value))
        rows.append(cells)
    return [label for _, label in columns], rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    # Written out: pandas.DataFrame.to_markdown needs the tabulate package for these few lines.
    def line(cells):
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *[line(row) for row in rows]]) + "\n"


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
    labels, probabilities = result.validation_scores()
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
        labels, probabilities = result.validation_scores()
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


def draw_charts(results: list[ModelResult]) -> dict[str, bytes]:
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
    for result in trained:
        charts[f"confusion_{safe_dir_name(result.name)}.png"] = _confusion_chart(result)
    return charts


def split_check(results: list[ModelResult]) -> str:
    """A sentence saying whether every trained model was scored on the same validation rows (ids and labels)."""
    trained = [result for result in results if result.ok]
    if not trained:
        return "no model finished training"
    keys = ["id", "label"] if "id" in trained[0].validation.columns else ["label"]
    reference = trained[0].validation[keys]
    differing = [
        result.name
        for result in trained[1:]
        if list(result.validation.columns[: len(keys)]) != keys or not result.validation[keys].equals(reference)
    ]
    if differing:
        return f"WARNING: {', '.join(differing)} scored other validation rows than {trained[0].name}"
    if len(trained) == 1:
        return f"The one trained model was scored on {len(reference)} validation rows"
    return f"All {len(trained)} trained models were scored on the same {len(reference)} validation rows"


# The look shared by the comparison report and the sweep page (sweep/report.py).
BASE_CSS = """body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1180px;
       color: #1d2330; background: #fff; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 2px solid #e3e7ee; }
.meta { color: #555e6e; }
table { border-collapse: collapse; margin: 12px 0; font-size: 0.92em; }
th, td { border: 1px solid #d5dae3; padding: 5px 9px; text-align: right; }
th { background: #eef2f8; } td:first-child, th:first-child { text-align: left; font-weight: 600; }
"""

PAGE = (
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lorabench comparison</title>
<style>
"""
    + BASE_CSS
    + """tr.failed td { background: #fdecec; color: #8a1f1f; } tr.best td { background: #eaf7ea; }
td.status { text-align: left; } .charts { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.charts img { max-width: 100%; border: 1px solid #e3e7ee; } .charts.pair img { width: calc(50% - 10px); box-sizing: border-box; }
table.info td, table.info th { text-align: left; font-weight: normal; }
</style></head><body>
<h1>lorabench comparison</h1>
<p class="meta">Data <code>{{ data.source }}</code>: {{ rows.train }} training rows, {{ rows.validation }} validation
rows (split {{ (data.train_size * 100) | round | int }}/{{ 100 - (data.train_size * 100) | round | int }}, seed
{{ data.split_seed }}){% if rows.test %}, {{ rows.test }} test rows{% endif %}. {{ split_check }}.
Created {{ created }}.{% if best %} Best validation F1: <strong>{{ best }}</strong>.{% endif %}</p>

<h2>Results</h2>
<table id="results"><thead><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row, status in rows_and_status %}<tr class="{{ status }}">{% for cell in row %}<td{% if loop.last %} class="status"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
<p class="meta">F1, precision and recall are those of the positive class for two classes and macro averages
for more, at the arg-max decision, for each model's best epoch (chosen by validation F1). Train s counts the
training loop only; total s includes loading and scoring. Peak memory is GPU memory on CUDA, else the training
process's peak resident memory.{% if rows.test and not has_test %} The test split has no labels: its predictions are in each
run's test_predictions.csv, unscored.{% endif %}</p>

{% if charts %}<h2>Charts</h2>
<div class="charts pair">
<img alt="F1 per model" src="{{ charts['f1.png'] }}">
<img alt="training time per model" src="{{ charts['train_time.png'] }}">
</div>
<h2>Confusion matrices (validation)</h2>
<div class="charts">{% for name, key in confusions %}<img alt="confusion matrix of {{ name }}" src="{{ charts[key] }}">{% endfor %}</div>
<h2>Precision-recall curves (validation)</h2>
<div class="charts"><img alt="precision-recall curves" src="{{ charts['pr_curves.png'] }}"></div>{% endif %}

<h2>Runs</h2>
<table class="info"><thead><tr><th>model</th><th>run directory</th><th>device</th><th>precision</th><th>notes</th></tr></thead><tbody>
{% for run in runs %}<tr><td>{{ run.name }}</td><td><code>{{ run.dir }}</code></td><td>{{ run.device }}</td><td>{{ run.precision }}</td><td>{{ run.notes }}</td></tr>
{% endfor %}</tbody></table>

<h2>Hardware and versions</h2>
<table class="info"><tbody>
<tr><th>CPU</th><td>{{ hardware.cpu }} ({{ hardware.cpu_cores }} cores)</td></tr>
<tr><th>memory</th><td>{{ hardware.memory_gb }} GiB</td></tr>
<tr><th>GPU</th><td>{{ hardware.gpus | join(", ") if hardware.gpus else "none" }}</td></tr>
<tr><th>system</th><td>{{ hardware.os }}, Python {{ hardware.python }}</td></tr>
{% if hardware.get("load_average") is not none %}<tr><th>CPU load at start</th><td>{{ hardware.load_average }}
(1-minute load average; above {{ hardware.cpu_cores }}, other work competed for the cores and times are longer
than on an idle machine)</td></tr>{% endif %}
{% for package, number in versions.items() %}<tr><th>{{ package }}</th><td>{{ number }}</td></tr>
{% endfor %}</tbody></table>
</body></html>
"""
)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(
    manifest: CompareManifest, results: list[ModelResult], table: pd.DataFrame, charts: dict[str, bytes]
) -> str:
    headers, rows = display_rows(table)
    trained = table[table["status"] == "ok"]
    best = trained.loc[trained["val_f1"].idxmax(), "model"] if len(trained) else None
    statuses = [
        "best" if name == best else ("failed" if status != "ok" else "")
        for name, status in zip(table["model"], table["status"], strict=True)
    ]
    runs = [
        {
            "name": result.name,
            "dir": str(result.run_dir.relative_to(result.run_dir.parents[1])),
            "device": result.summary.device if result.ok else "–",
            "precision": result.summary.precision if result.ok else "–",
            "notes": "; ".join(result.summary.notes) if result.ok else result.error,
        }
        for result in results
    ]
    page = Environment(autoescape=True).from_string(PAGE)
    return page.render(
        data=manifest.data,
        rows=manifest.rows,
        created=manifest.created,
        split_check=split_check(results),
        best=best,
        headers=headers,
        rows_and_status=list(zip(rows, statuses, strict=True)),
        has_test=table["test_f1"].notna().any(),
        charts={name: _data_uri(png) for name, png in charts.items()},
        confusions=[(r.name, f"confusion_{safe_dir_name(r.name)}.png") for r in results if r.ok],
        runs=runs,
        hardware=manifest.hardware,
        versions=manifest.versions,
    )


def render(out_dir: str | Path) -> pd.DataFrame:
    """(Re)write every output of a comparison from its records; returns the results table."""
    out_dir = Path(out_dir)
    manifest, results = load_results(out_dir)
    table = results_table(results)
    charts = draw_charts(results)

    def write_charts(directory: Path) -> None:
        for name, png in charts.items():
            (directory / name).write_bytes(png)

    replace_dir(write_charts, out_dir / CHARTS_DIR)
    write_atomic(out_dir / "results.csv", table.to_csv(index=False))
    write_atomic(out_dir / "results.md", markdown_table(*display_rows(table)))
    write_atomic(out_dir / "report.html", render_html(manifest, results, table, charts))
    return table
