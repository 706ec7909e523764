"""Render a comparison from its records: results.csv, results.md, charts/*.png and one self-contained report.html.

Everything is read back from `compare.json` and each model's run directory, so `lorabench report DIR` re-renders
the same page without training. Charts (lorabench.workflows.charts) are embedded in the HTML as data URIs, so the
page is one file that opens anywhere offline.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment
from markupsafe import Markup
from sklearn.metrics import precision_recall_fscore_support

from lorabench.core.errors import LorabenchError
from lorabench.core.schemas import CompareManifest
from lorabench.core.storage import replace_dir, safe_dir_name, write_atomic
from lorabench.workflows.grid import build_grid, grid_markdown, member_method
from lorabench.workflows.label_issues import TOP_ROWS, read_issues
from lorabench.workflows.results import ModelResult, load_results, same_rows
from lorabench.workflows.scoring import RESAMPLES, uncertainty_columns
from lorabench.workflows.verdict import f1_name, verdict_of

CHARTS_DIR = "charts"
PAGE_TEMPLATE = Path(__file__).with_name("report.html.j2")  # the page's HTML, a Jinja template
METRICS = ("f1", "precision", "recall", "accuracy")
COST_COLUMNS = ("predict_texts_per_s", "latency_p50_ms", "latency_p95_ms", "inference_peak_mb", "gpu_peak_mb",
                "size_mb", "merged_size_mb")  # fmt: skip


def split_columns(split: str) -> list[str]:
    """A split's columns: the first seed's metrics, their 95% intervals, the paired test against the best model,
    and mean and sd over seeds."""
    return [
        *[f"{split}_{m}" for m in METRICS],
        *[f"{split}_{m}_{end}" for m in METRICS for end in ("low", "high")],
        f"{split}_tied_with_best",
        f"{split}_prob_worse",
        *[f"{split}_{m}_{statistic}" for m in METRICS for statistic in ("mean", "sd")],
    ]


COLUMNS = [
    "model",
    "method",
    "status",
    "rank",
    "seeds",
    "classes",
    *split_columns("val"),
    *split_columns("test"),
    "best_epoch",
    "epochs",
    "train_rows",
    "train_seconds",
    "wall_seconds",
    "peak_memory_mb",
    *COST_COLUMNS,
    "trainable_params",
    "total_params",
    "trainable_percent",
    "device",
    "error",
]
SUMMARY_COLUMNS = ("best_epoch", "epochs", "train_seconds", "peak_memory_mb", "trainable_params", "total_params",
                   "trainable_percent", "device")  # fmt: skip
INTEGER_COLUMNS = ("rank", "seeds", "classes", "best_epoch", "epochs", "train_rows", "trainable_params", "total_params")
# (group, column, header, digits) of the human table after the metrics; integers ignore digits. Cost comes right
# after the scores, so the two things a reader weighs against each other sit side by side.
DISPLAYED_NUMBERS = [
    ("inference", "predict_texts_per_s", "predict texts/s", 1),
    ("inference", "latency_p50_ms", "latency p50 ms", 2),
    ("inference", "latency_p95_ms", "latency p95 ms", 2),
    ("inference", "inference_peak_mb", "inference MB", 1),
    ("inference", "size_mb", "size MB", 2),
    ("training", "best_epoch", "best epoch", 0),
    ("training", "train_rows", "train rows", 0),
    ("training", "train_seconds", "train s", 1),
    ("training", "wall_seconds", "total s", 1),
    ("training", "peak_memory_mb", "peak memory MB", 1),
    ("training", "trainable_params", "trainable params", 0),
    ("training", "trainable_percent", "trainable %", 4),
]


def _model_columns(result: ModelResult, statistics: dict[str, float | bool]) -> dict:
    """A trained model's numbers: its first run's summary, the statistics over its runs, its inference cost."""
    summary = result.summary
    row = {f"{split}_{m}": getattr(getattr(summary, split), m) for split in result.labelled_splits() for m in METRICS}
    row.update(summary.model_dump(include=set(SUMMARY_COLUMNS)))
    row["train_rows"] = summary.rows["train"]
    row["seeds"] = len(result.summaries)
    row["classes"] = len(summary.label_names)
    row.update(statistics)
    if result.cost is not None:
        row.update(result.cost.model_dump(include=set(COST_COLUMNS)))
    return row


def results_table(results: list[ModelResult]) -> pd.DataFrame:
    """One row per model; `rank` orders the trained ones by mean validation F1 (1 = best, the first of equals)."""
    statistics = uncertainty_columns(results)
    rows = []
    for result in results:
        row = {
            "model": result.name,
            "method": member_method(result.name, result.summary.method if result.ok else None)[1],
            "status": result.status,
            "error": result.error,
            "wall_seconds": result.wall_seconds,
        }
        if result.ok:
            row.update(_model_columns(result, statistics[result.name]))
        rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["rank"] = table["val_f1_mean"].rank(ascending=False, method="first")
    types = {column: "Int64" for column in INTEGER_COLUMNS}  # failed rows leave gaps, not 1.0 floats
    types.update({f"{split}_tied_with_best": "boolean" for split in ("val", "test")})
    return table.astype(types)


def _number(value, digits: int = 4) -> str:
    if value is None or pd.isna(value):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def _f1_cell(values: dict, split: str, several_seeds: bool) -> str:
    mean, sd = values[f"{split}_f1_mean"], values[f"{split}_f1_sd"]
    if several_seeds and not pd.isna(mean):
        return f"{mean:.4f} ± {sd:.4f}"
    return _number(values[f"{split}_f1"])


def _is_best(rank) -> bool:
    return not pd.isna(rank) and rank == 1


def _interval_cell(values: dict, key: str) -> str:
    low, high = values[f"{key}_low"], values[f"{key}_high"]
    return "–" if pd.isna(low) else f"[{low:.4f}, {high:.4f}]"


def _tied_cell(values: dict, split: str) -> str:
    tied = values[f"{split}_tied_with_best"]
    if pd.isna(tied):
        return "–"
    if _is_best(values["rank"]):
        return "best"
    return f"{'yes' if tied else 'no'} ({values[f'{split}_prob_worse']:.2f})"


def grouped_rows(table: pd.DataFrame) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """The human table as (group, header) pairs and rows of cells: test columns only when some test split had
    labels, F1 as mean ± sd when a model trained with several seeds, 'macro' scores for more than two classes."""
    splits = ["val", "test"] if table["test_f1"].notna().any() else ["val"]
    several_seeds = bool((table["seeds"].fillna(1) > 1).any())
    macro = "macro " if f1_name(table) == "macro-F1" else ""
    headers = [("", "model")]
    for split in splits:
        headers += [(split, f"{macro}f1{' (mean ± sd)' if several_seeds else ''}"), (split, f"{macro}f1 95% interval"),
                    (split, f"{macro}f1 tied with best (P worse)"),
                    *[(split, f"{macro if m != 'accuracy' else ''}{m}") for m in METRICS[1:]]]  # fmt: skip
    headers += [(group, header) for group, _, header, _ in DISPLAYED_NUMBERS] + [("", "status")]
    rows = []
    for values in table.to_dict("records"):
        cells = [str(values["model"])]
        for split in splits:
            cells += [_f1_cell(values, split, several_seeds), _interval_cell(values, f"{split}_f1"),
                      _tied_cell(values, split), *[_number(values[f"{split}_{m}"]) for m in METRICS[1:]]]  # fmt: skip
        cells += [_number(values[key], digits) for _, key, _, digits in DISPLAYED_NUMBERS]
        cells.append(f"{values['status']}: {values['error']}" if values["error"] else str(values["status"]))
        rows.append(cells)
    return headers, rows


def display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The human table of results.md and the terminal, one header line: 'val f1', 'predict texts/s'."""
    headers, rows = grouped_rows(table)
    return [f"{group} {header}" if group in ("val", "test") else header for group, header in headers], rows


def results_markdown(table: pd.DataFrame) -> str:
    """results.md, which compare and report also print: the results table, then the grid when there is one."""
    return markdown_table(*display_rows(table)) + grid_markdown(build_grid(table), f1_name(table))


GROUP_TITLES = {"val": "validation", "test": "test", "inference": "inference cost", "training": "training"}


def header_groups(headers: list[tuple[str, str]]) -> list[tuple[str, int]]:
    """The first header row of report.html: each run of equal groups as (group, columns spanned)."""
    groups: list[tuple[str, int]] = []
    for group, _ in headers:
        if groups and groups[-1][0] == group:
            groups[-1] = (group, groups[-1][1] + 1)
        else:
            groups.append((group, 1))
    return groups


def per_class_table(results: list[ModelResult]) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class on validation, per trained model (first seed, arg-max)."""
    rows = []
    for result in results:
        if not result.ok:
            continue
        labels, decisions = result.decisions("val")
        names = result.summary.label_names
        precision, recall, f1, support = precision_recall_fscore_support(
            labels, decisions, labels=list(range(len(names))), average=None, zero_division=0
        )
        for i, name in enumerate(names):
            rows.append({"model": result.name, "class": name, "precision": float(precision[i]),
                         "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])})  # fmt: skip
    return pd.DataFrame(rows, columns=["model", "class", "precision", "recall", "f1", "support"])


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    # Written out: pandas.DataFrame.to_markdown needs the tabulate package for these few lines.
    def line(cells):
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *[line(row) for row in rows]]) + "\n"


def split_check(results: list[ModelResult]) -> str:
    """A sentence saying whether every trained model was scored on the same validation rows (ids and labels)."""
    trained = [result for result in results if result.ok]
    if not trained:
        return "no model finished training"
    reference = trained[0].validation
    differing = [result.name for result in trained[1:] if not same_rows(result.validation, reference)]
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


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _run_notes(result: ModelResult) -> str:
    if not result.ok:
        return result.error
    notes = list(result.summary.notes)
    if result.cost_error:
        notes.append(f"inference cost not measured: {result.cost_error}")
    return "; ".join(notes)


def label_issue_sections(results: list[ModelResult]) -> list[dict]:
    """The top rows of every trained model's label_issues.csv (`lorabench data --label-issues`), when it has one."""
    sections = []
    for result in results:
        try:
            issues = read_issues(result.run_dir) if result.ok else None
        except LorabenchError as err:
            sections.append({"name": result.name, "summary": str(err), "headers": [], "rows": []})
            continue
        if issues is not None:
            top = issues.head(TOP_ROWS)
            sections.append(
                {
                    "name": result.name,
                    "summary": f"{len(issues)} rows flagged",
                    "headers": list(top.columns),
                    "rows": top.astype(str).to_numpy().tolist(),
                }
            )
    return sections


def per_class_cells(per_class: pd.DataFrame) -> list[tuple[int, list[str]]]:
    """The per-class table's rows as (rows the model's name spans, 0 after its first row; cells)."""
    cells = []
    for model, rows in per_class.groupby("model", sort=False):
        for i, values in enumerate(rows.to_dict("records")):
            numbers = [_number(values[m]) for m in ("precision", "recall", "f1")]
            cells.append((len(rows) if i == 0 else 0, [str(model), str(values["class"]), *numbers,
                                                        f"{values['support']:,}"]))  # fmt: skip
    return cells


def render_html(
    manifest: CompareManifest,
    results: list[ModelResult],
    table: pd.DataFrame,
    charts: dict[str, bytes],
    per_class: pd.DataFrame,
    cost_titles: dict[str, str],
) -> str:
    """report.html; `cost_titles`: the accuracy-against-cost charts' files and what each cost is."""
    headers, rows = grouped_rows(table)
    statuses = [
        "best" if _is_best(rank) else ("failed" if status != "ok" else "")
        for rank, status in zip(table["rank"], table["status"], strict=True)
    ]
    runs = [
        {
            "name": result.name,
            "dir": str(result.run_dir.relative_to(result.run_dir.parents[1])),
            "device": result.summary.device if result.ok else "–",
            "precision": result.summary.precision if result.ok else "–",
            "notes": _run_notes(result),
        }
        for result in results
    ]
    page = Environment(autoescape=True).from_string(PAGE_TEMPLATE.read_text(encoding="utf-8"))
    return page.render(
        base_css=Markup(BASE_CSS),
        data=manifest.data,
        rows=manifest.rows,
        seeds=manifest.seeds,
        created=manifest.created,
        split_check=split_check(results),
        verdict=verdict_of(table),
        grid=build_grid(table),
        headers=headers,
        groups=header_groups(headers),
        GROUP_TITLES=GROUP_TITLES,
        f1_name=f1_name(table),
        per_class=per_class_cells(per_class),
        rows_and_status=list(zip(rows, statuses, strict=True)),
        has_test=table["test_f1"].notna().any(),
        resamples=RESAMPLES,
        charts={name: _data_uri(png) for name, png in charts.items()},
        cost_charts=[(name, title) for name, title in cost_titles.items() if name in charts],
        confusions=[(r.name, f"confusion_{safe_dir_name(r.name)}.png") for r in results if r.ok],
        checks=manifest.data_checks,
        label_issues=label_issue_sections(results),
        top_rows=TOP_ROWS,
        runs=runs,
        hardware=manifest.hardware,
        versions=manifest.versions,
    )


def render(out_dir: str | Path) -> pd.DataFrame:
    """(Re)write every output of a comparison from its records; returns the results table."""
    out_dir = Path(out_dir)
    manifest, results = load_results(out_dir)
    table = results_table(results)
    from lorabench.workflows import charts as plots  # deferred: matplotlib's import (charts module docstring)

    charts = plots.draw_charts(results, table)

    def write_charts(directory: Path) -> None:
        for name, png in charts.items():
            (directory / name).write_bytes(png)

    replace_dir(write_charts, out_dir / CHARTS_DIR)
    write_atomic(out_dir / "results.csv", table.to_csv(index=False))
    write_atomic(out_dir / "results.md", results_markdown(table))
    per_class = per_class_table(results)
    write_atomic(out_dir / "per_class.csv", per_class.to_csv(index=False))
    write_atomic(
        out_dir / "report.html",
        render_html(
            manifest, results, table, charts, per_class, {name: cost.title for name, cost in plots.COST_CHARTS.items()}
        ),
    )
    return table
