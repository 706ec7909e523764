"""ONNX benchmark (not a test): a LoRA run against its ONNX exports, fp32 and int8, on the CPU.

1. exports the run with `export --format onnx` and `--format onnx --quantize int8` (into a scratch directory);
2. whole-process `lorabench predict` on the test file (Python start, imports, loading, tokenizing, scoring,
   writing), PyTorch fp32 (the run itself), ONNX fp32 and ONNX int8 in alternating rounds, so load from other
   processes on a shared machine falls on all three alike; the same command line and environment for each;
3. in-process: single-text latency p50 / p95 over validation texts (after a few untimed calls) and bulk texts/s
   over the test file, one model loaded at a time;
4. the validation rows of the run's val_predictions.csv: max |probability difference| of each ONNX export
   against the PyTorch run's recorded probabilities, and the F1 of each (arg-max, as the run's metrics).

  python bench/onnx_bench.py --run RUN --data ../shared/data/disaster_tweets/test.csv
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lorabench.core.console import set_progress
from lorabench.core.metrics import classification_metrics, predicted_labels
from lorabench.core.storage import RunDir
from lorabench.data.sources import load_splits
from lorabench.models.registry import load_classifier
from lorabench.workflows.export import export_run

LATENCY_CALLS, WARM_CALLS = 200, 10


def whole_process_seconds(run: Path, data: Path, out: Path) -> float:
    """Wall seconds of one `lorabench predict` process, start to exit."""
    command = [sys.executable, "-m", "lorabench", "--quiet", "predict", "--run", str(run), "--data", str(data),
               "--out", str(out)]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": "src"})
    return time.perf_counter() - started


def in_process(run: Path, texts: list[str], single: list[str]) -> dict:
    """Bulk texts/s over `texts` and single-text latency over `single`, for one loaded model."""
    classifier = load_classifier(run)
    for text in single[:WARM_CALLS]:
        classifier.predict_proba([text])
    latencies = []
    for text in single[WARM_CALLS : WARM_CALLS + LATENCY_CALLS]:
        started = time.perf_counter()
        classifier.predict_proba([text])
        latencies.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    classifier.predict_proba(texts)
    bulk = time.perf_counter() - started
    return {"p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95)),
            "texts_per_s": len(texts) / bulk}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished LoRA run directory")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/disaster_tweets/test.csv"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    set_progress(False)  # the in-process calls' bars
    if args.run is None:
        sys.exit("no minilm run found; give --run")
    scratch = Path(tempfile.mkdtemp(prefix="onnx_bench."))
    variants = {"pytorch fp32": args.run, "onnx fp32": scratch / "fp32", "onnx int8": scratch / "int8"}
    for quantize, out in (("none", variants["onnx fp32"]), ("int8", variants["onnx int8"])):
        started = time.perf_counter()
        export_run(args.run, out, export_format="onnx", quantize=quantize)
        size = (out / "onnx" / "model.onnx").stat().st_size / 2**20
        print(f"export onnx {quantize}: {time.perf_counter() - started:.1f} s, model.onnx {size:.1f} MB")
    rows = len(pd.read_csv(args.data))
    print(f"\nwhole-process `lorabench predict` on {args.data} ({rows} rows), {args.rounds} alternated rounds, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            seconds[name].append(whole_process_seconds(run, args.data, scratch / "predictions.csv"))
    base = statistics.median(seconds["pytorch fp32"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:13s} median {median:6.2f} s (runs {', '.join(f'{v:.2f}' for v in values)}); "
              f"{base / median:.2f}x PyTorch")  # fmt: skip

    run = RunDir(args.run)
    validation = load_splits(run.config().data).validation
    recorded = pd.read_csv(run.file("val_predictions.csv"))
    same_rows = recorded["id"].astype(str).tolist() == validation["id"].astype(str).tolist()
    assert same_rows, "val_predictions rows differ from the split"
    texts, labels = validation["text"].tolist(), recorded["label"].to_numpy()
    test_texts = pd.read_csv(args.data)["text"].tolist()
    print(f"\nin-process: single-text latency over {LATENCY_CALLS} validation texts, bulk over the test file")
    for name, path in variants.items():
        figures = in_process(path, test_texts, texts)
        print(f"  {name:13s} p50 {figures['p50_ms']:6.1f} ms, p95 {figures['p95_ms']:6.1f} ms, "
              f"bulk {figures['texts_per_s']:6.1f} texts/s")  # fmt: skip

    torch_probabilities = recorded[["prob_0", "prob_1"]].to_numpy()
    f1 = classification_metrics(labels, predicted_labels(torch_probabilities), 2).f1
    print(f"\nvalidation ({len(texts)} rows): PyTorch F1 {f1:.4f} (recorded probabilities)")
    for name in ("onnx fp32", "onnx int8"):
        probabilities = load_classifier(variants[name]).predict_proba(texts)
        difference = np.abs(probabilities - torch_probabilities).max()
        f1_onnx = classification_metrics(labels, predicted_labels(probabilities), 2).f1
        print(f"  {name:13s} max |P - P_pytorch| {difference:.2e}, F1 {f1_onnx:.4f} ({f1_onnx - f1:+.4f})")


if __name__ == "__main__":
    main()
