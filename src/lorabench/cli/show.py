"""What the commands print beyond one line: the data tables, label issues and a comparison's verdict and table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lorabench.core.schemas import DataChecks, LabelIssues

# where str.splitlines splits, as escape sequences
ESCAPED_LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode() for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def print_stats(stats: dict) -> None:
    console = Console(markup=False, emoji=False)  # class and column names, paths and notes are shown as they are
    names = [str(n) for n in stats["label_names"]]
    table = Table(title=f"data: {stats['source']}")
    for column in ["split", "rows", *[f"class {n}" for n in names], "max chars", "max words"]:
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, entry in stats["splits"].items():
        counts = entry.get("class_counts", {})
        table.add_row(split, str(entry["rows"]), *[str(counts.get(n, "-")) for n in names],
                      str(entry["max_chars"]), str(entry["max_words"]))  # fmt: skip
    console.print(table)
    missing = Table(title="missing values per column")
    for column in ("split", "column", "missing"):
        missing.add_column(column, justify="right" if column == "missing" else "left")
    for split, columns in stats["missing"].items():
        for column, count in columns.items():
            missing.add_row(split, column, str(count))
    console.print(missing)
    weights = ", ".join(f"{n}: {w}" for n, w in stats["class_weights"].items())
    console.print(f"class weights n / (k * count): {weights}")
    print_checks(console, stats)
    if stats["windows"]:
        print_windows(console, stats["windows"])
    for note in stats["notes"]:
        console.print(f"note: {note}")


def print_windows(console: Console, windows: list[dict]) -> None:
    table = Table(title="texts longer than each model's window (train.max_length, in its own tokens)")
    for column in ("model", "window", "longer", "share", "longest"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in windows:
        if row["longer"] is None:
            table.add_row(row["model"], str(row["window"] or "-"), row["error"], "", "")
        else:
            table.add_row(row["model"], str(row["window"]), f"{row['longer']:,} of {row['texts']:,}",
                          f"{row['share']:.0%}", str(row["longest"]))  # fmt: skip
    console.print(table)


def print_checks(console: Console, stats: dict) -> None:
    checks = DataChecks.model_validate(stats["checks"])
    table = Table(title=f"checks of the split ({checks.labelled_rows} labelled rows)")
    for column in ("check", "texts", "rows", "examples"):
        table.add_column(column, justify="right" if column in ("texts", "rows") else "left")
    for label, groups in checks.labelled_groups():
        table.add_row(label, str(groups.texts), str(groups.rows), escape("\n".join(groups.examples)))
    console.print(table)
    split = stats["split"]
    rows = split["rows"]
    console.print(
        f"validation: {split['validation_rows_in_train_normalised']} of {rows['validation']} rows have a near "
        f"duplicate in train ({split['validation_rows_in_train']} the exact text); split with "
        f"duplicates: {split['duplicates']}, conflicts: {split['conflicts']}"
    )
    if split["grouped_rows"]:
        grouped = split["grouped_rows"]
        console.print(
            f"duplicates: group would split {grouped['train']} / {grouped['validation']} rows (now {rows['train']} / "
            f"{rows['validation']}) with no near duplicate on both sides"
        )


ISSUE_HEADERS = {"given_label": "given", "predicted_label": "predicted", "given_label_prob": "P(given)"}


def print_label_issues(issues: LabelIssues) -> None:
    from lorabench.workflows.label_issues import OOF_FILE

    console = Console(markup=False, emoji=False)
    rows = "validation rows" if issues.only_validation else "out-of-fold rows"
    console.print(
        f"label issues: {issues.flagged_rows} of {issues.checked_rows} {rows} flagged (cleanlab, lowest "
        f"probability of the given label first); all in {issues.out}"
    )
    if issues.only_validation:
        console.print(f"note: only validation rows were checked: {issues.run} has no {OOF_FILE} (train --folds K)")
    if issues.top:
        table = Table(title=f"the {len(issues.top)} likeliest label errors")
        for column in issues.top[0]:
            header = ISSUE_HEADERS.get(column, column)
            table.add_column(header, justify="left" if column in ("id", "text") else "right")
        for row in issues.top:
            table.add_row(*[str(value).translate(ESCAPED_LINE_BREAKS) for value in row.values()])
        console.print(table)
    if issues.conflicting_texts_checked:
        unchecked = issues.conflicting_texts - issues.conflicting_texts_checked
        console.print(
            f"conflicting texts flagged: {issues.conflicting_texts_flagged}/{issues.conflicting_texts_checked}"
            + (f" ({unchecked} more in the data were not checked)" if unchecked else "")
        )


def results_text(table, out: Path) -> str:
    """What compare and report print: the verdict, the results table, and where the report is."""
    from lorabench.workflows.report import results_markdown, verdict_of

    verdict = "\n".join(verdict_of(table).sentences)
    return f"{verdict}\n\n{results_markdown(table)}report: {out / 'report.html'}"
