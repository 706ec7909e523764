"""The inference cost of finished runs, measured again with today's code. `compare` measures each member once, when
it finishes, so after a change to the scoring path this says what the same runs cost now, beside what their
cost.json says they cost then.

Each run is copied to a temporary folder (measure_cost writes cost.json into the run it times) and measured in a
process of its own, as compare does (the memory figure is the process's peak), on its first N validation texts.

    python bench/inference_cost.py RUN [RUN ...] [--texts 256]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from lorabench.core.storage import COST_FILE, RunDir
from lorabench.data.sources import load_splits
from lorabench.workflows.compare import run_isolated
from lorabench.workflows.cost import measure_cost

FIGURES = ("predict_texts_per_s", "latency_p50_ms", "latency_p95_ms", "inference_peak_mb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--texts", type=int, default=256, help="validation texts to score in the bulk call")
    args = parser.parse_args()
    print("| run | figure | then (its cost.json) | now |\n|---|---|---|---|")
    for run in args.runs:
        then = json.loads((run / COST_FILE).read_text()) if (run / COST_FILE).is_file() else {}
        texts = load_splits(RunDir(run).config().data).validation["text"].tolist()[: args.texts]
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / run.name
            shutil.copytree(run, copy)
            status, reason = run_isolated("cost measurement", measure_cost, str(copy), texts)
            if status != "ok":
                sys.exit(f"{run}: {reason}")
            now = json.loads((copy / COST_FILE).read_text())
        for figure in FIGURES:
            print(f"| {run.name} | {figure} | {then.get(figure, '')} | {now[figure]} |")


if __name__ == "__main__":
    main()
