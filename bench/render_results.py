"""Renders docs/results.md from the measurement records in bench/results/*.json, so every figure the docs quote
lives once, as data, with the date, machine, versions and command that produced it.

A record is a JSON object: title, date (YYYY-MM-DD), machine, command (a string or a list), figures (a list of rows,
each a mapping of column to value, or one mapping of figure to value); versions (a mapping), notes and source are
optional. Every *.json in the folder is rendered, newest first; tests/test_docs.py checks the page is current.

    python bench/render_results.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "results.md"


def read_records(folder: Path = RECORDS) -> dict[str, dict]:
    """Every record by its file's stem, which is also its anchor on the page."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))}


def cell(value: object) -> str:
    return "" if value is None else str(value).replace("\n", " ").replace("|", "\\|")


def table(figures: list | dict) -> list[str]:
    """Rows as a table whose columns are every key in order of first use; one mapping as figure | value."""
    rows = [{"figure": key, "value": value} for key, value in figures.items()] if isinstance(figures, dict) else figures
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(cell(column) for column in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return lines


def section(name: str, record: dict) -> list[str]:
    commands = record["command"] if isinstance(record["command"], list) else [record["command"]]
    facts = f"**Date** {record['date']} · **Machine** {record['machine']}"
    if record.get("versions"):
        facts += " · **Versions** " + ", ".join(f"{key} {value}" for key, value in record["versions"].items())
    lines = [f'<a id="{name}"></a>', "", f"## {record['title']}", "", facts, "", "```", *commands, "```", ""]
    lines += [*table(record["figures"]), ""]
    if record.get("notes"):
        lines += [record["notes"], ""]
    source = f" (first reported in {record['source']})" if record.get("source") else ""
    return [*lines, f"Record: `bench/results/{name}.json`{source}.", ""]


def render(records: dict[str, dict]) -> str:
    newest_first = sorted(records.items(), key=lambda item: (item[1]["date"], item[0]), reverse=True)
    lines = [
        "# Measured results",
        "",
        "<!-- Rendered by bench/render_results.py from bench/results/*.json; edit a record, then run it. -->",
        "",
        "Every figure the documentation quotes, with the date, machine, versions and command that produced it,",
        "newest first. Times on shared machines are upper bounds; the notes say how busy each machine was.",
        "",
        "| date | measurement |",
        "|---|---|",
        *(f"| {record['date']} | [{cell(record['title'])}](#{name}) |" for name, record in newest_first),
        "",
    ]
    for name, record in newest_first:
        lines += section(name, record)
    return "\n".join(lines)


def main() -> None:
    PAGE.write_text(render(read_records()), encoding="utf-8")
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
