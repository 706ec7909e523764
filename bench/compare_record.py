"""A finished comparison as a measurement record (bench/results/NAME.json): one row per member with val F1 and its
95% interval, training seconds and peak memory, predict texts/s and trainable parameters, whether the paired test
ties it with the best, and lorabench's verdict on the table as notes; the date, machine and versions come from the comparison's own
compare.json, so the record says what the run measured, not when it was copied.

    python bench/compare_record.py OUT --name methods_grid --title "..." --command "lorabench compare ..." \
        [--notes "..."]
    python bench/render_results.py
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

from lorabench.workflows.verdict import verdict_of

RECORDS = Path(__file__).resolve().parent / "results"


def _number(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:,.{digits}f}"


def member_rows(results: pd.DataFrame) -> list[dict]:
    rows = []
    for values in results.to_dict("records"):
        interval = (
            "" if math.isnan(values["val_f1_low"]) else f" [{values['val_f1_low']:.4f}, {values['val_f1_high']:.4f}]"
        )
        rows.append({
            "member": values["model"],
            "status": f"{values['status']}: {values['error']}" if values["status"] == "failed" else values["status"],
            "val F1 [95% interval]": "" if math.isnan(values["val_f1"]) else f"{values['val_f1']:.4f}{interval}",
            "train s": _number(values["train_seconds"]),
            "train peak MB": _number(values["peak_memory_mb"]),
            "predict texts/s": _number(values["predict_texts_per_s"], 1),
            "trainable params": _number(values["trainable_params"]),
            "tied with the best (paired bootstrap)": bool(values["val_tied_with_best"]) if values["status"] == "ok" else "",
        })  # fmt: skip
    return rows


def record(out: Path, title: str, command: str, notes: str = "") -> dict:
    manifest = json.loads((out / "compare.json").read_text())
    results = pd.read_csv(out / "results.csv")
    hardware = manifest["hardware"]
    rows = ", ".join(f"{count} {split}" for split, count in manifest.get("rows", {}).items() if count)
    machine = (f"{hardware['cpu_cores']} CPU cores ({hardware['cpu']}), {hardware['memory_gb']} GB, "
               f"GPUs: {', '.join(map(str, hardware['gpus'])) or 'none'}, {hardware['processes']} process(es)")  # fmt: skip
    return {
        "title": title,
        "date": manifest["created"][:10],
        "machine": machine,
        "versions": manifest.get("versions", {}),
        "command": command,
        "figures": member_rows(results),
        "notes": " ".join([f"Rows: {rows}.", notes, "The verdict:", *verdict_of(results).sentences]).replace("  ", " "),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the comparison's output directory")
    parser.add_argument("--name", required=True, help="the record's file name (and anchor), without .json")
    parser.add_argument("--title", required=True)
    parser.add_argument("--command", required=True, help="the command that produced the comparison")
    parser.add_argument("--notes", default="")
    args = parser.parse_args()
    path = RECORDS / f"{args.name}.json"
    path.write_text(
        json.dumps(record(args.out, args.title, args.command, args.notes), indent=2, ensure_ascii=False) + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
