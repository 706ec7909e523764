"""The grid view of a comparison that crosses models with methods: one row per model, one column per method, each
cell the member's val F1 (macro-F1 for more than two classes) with its 95% interval. A pure function of the results
table (`build_grid`), so it is tested on hand-made tables; report.html and results.md render it.

A member's method is the one its run recorded (the `method` column), so `mpnet` trained with its preset's LoRA
lands in the `lora` column. Kinds without a method (tfidf, an ensemble) get a row of their own with their value
in the last column, headed `—` (NO_METHOD). Two members that would share a cell (`minilm` and `minilm:lora`) keep
their full member names as rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lorabench.core.config import METHOD_KINDS

NO_METHOD = "—"  # the column of members without a method (tfidf)
BEST_MARK = "★"


@dataclass(frozen=True)
class GridCell:
    """One member's cell: its text and its standing, the CSS class report.html gives it: 'best' (rank 1),
    'tied' (the paired test finds it not significantly worse than the best), 'failed', 'empty' (no such member),
    or '' (trained, significantly worse or not compared; or pending, its text then says so)."""

    text: str
    state: str


@dataclass(frozen=True)
class Grid:
    methods: list[str]  # the columns, in the comparison's order; NO_METHOD last when some member has no method
    rows: list[tuple[str, list[GridCell]]]  # (model, one cell per column)


def member_method(name: str, recorded: str | None = None) -> tuple[str, str | None]:
    """A member's (model, method): the method its run recorded, else the one its name ends with (`minilm:probe`);
    the model is the name without that suffix."""
    model, _, suffix = name.rpartition(":")
    if model and suffix in METHOD_KINDS:
        return model, recorded or suffix
    return name, recorded


def _missing(value) -> bool:
    return value is None or (not isinstance(value, str) and pd.isna(value))


def _cell(values: dict) -> GridCell:
    if values["status"] != "ok":  # failed, or still pending in an interrupted comparison
        return GridCell(str(values["status"]), "failed" if values["status"] == "failed" else "")
    f1, low, high = values["val_f1"], values["val_f1_low"], values["val_f1_high"]
    text = f"{f1:.4f}" + ("" if _missing(low) else f" [{low:.4f}, {high:.4f}]")
    if not _missing(values["rank"]) and values["rank"] == 1:
        return GridCell(f"{BEST_MARK} {text}", "best")
    tied = values["val_tied_with_best"]
    return GridCell(text, "tied" if not _missing(tied) and bool(tied) else "")


def build_grid(table: pd.DataFrame) -> Grid | None:
    """The grid of a results table, or None when its members use fewer than two methods (no grid to show)."""
    records = table.to_dict("records")
    placed = [member_method(str(v["model"]), None if _missing(v.get("method")) else v["method"]) for v in records]
    methods = list(dict.fromkeys(method for _, method in placed if method is not None))
    if len(methods) < 2:
        return None
    columns = methods + ([NO_METHOD] if any(method is None for _, method in placed) else [])
    cells: dict[str, dict[str, GridCell]] = {}
    for values, (model, method) in zip(records, placed, strict=True):
        column = method or NO_METHOD
        row = model if column not in cells.get(model, {}) else str(values["model"])
        cells.setdefault(row, {})[column] = _cell(values)
    empty = GridCell("", "empty")
    return Grid(columns, [(model, [own.get(c, empty) for c in columns]) for model, own in cells.items()])


def grid_markdown(grid: Grid | None, metric: str) -> str:
    """The grid as a markdown table under its own heading ('' without a grid): the best cell starred, a tied
    cell's value followed by '(tied)'."""
    if grid is None:
        return ""

    def text(cell: GridCell) -> str:
        return f"{cell.text} (tied)" if cell.state == "tied" else cell.text

    lines = [f"| model | {' | '.join(grid.methods)} |", "|" + "---|" * (len(grid.methods) + 1)]
    lines += [f"| {model} | {' | '.join(text(cell) for cell in cells)} |" for model, cells in grid.rows]
    heading = f"\nModels × methods: val {metric} [95% interval]; {BEST_MARK} best, (tied): not significantly worse\n\n"
    return heading + "\n".join(lines) + "\n"
