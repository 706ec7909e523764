"""What using a trained model costs: prediction throughput and latency, memory, and the size of what ships.

A ranking by F1 alone cannot say whether a better score is worth a slower, larger model; these numbers say what
each model costs to use. `measure_cost` times the run as `predict` loads it. Its memory is the calling process's
peak, so compare calls it in a fresh process of its own, after training has ended.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from lorabench.core.console import progress_hidden
from lorabench.core.errors import LorabenchError
from lorabench.core.runtime import choose_device, peak_resident_mb
from lorabench.core.schemas import InferenceCost, RunSummary
from lorabench.core.storage import COST_FILE, RunDir, write_record
from lorabench.models.registry import Classifier, load_classifier
from lorabench.workflows.export import shipped_bytes

LATENCY_CALLS = 50
WARMUP_CALLS = 3  # untimed single-text calls first: lazy initialisation and allocator growth are not latency
FP32_BYTES = 4


def measure_cost(run_dir: str | Path, texts: list[str]) -> InferenceCost:
    """Time the finished run on `texts` (one bulk call at its eval batch size, then LATENCY_CALLS single texts),
    record its memory and size, and write cost.json into the run."""
    if not texts:
        raise LorabenchError("no texts to measure the inference cost on")
    run = RunDir(run_dir)
    batch_size = run.config().train.eval_batch_size
    device = choose_device()
    with progress_hidden():  # a progress bar per single-text call would be timed too
        classifier = load_classifier(run.path, batch_size)
        classifier.predict_proba(texts[:batch_size])  # untimed: the first call pays for lazy set-up
        started = time.perf_counter()
        classifier.predict_proba(texts)
        bulk_seconds = time.perf_counter() - started
        latencies = single_text_latencies_ms(classifier, texts)
    cost = InferenceCost(
        device=device.type,
        texts=len(texts),
        batch_size=batch_size,
        predict_texts_per_s=round(len(texts) / bulk_seconds, 2),
        latency_calls=len(latencies),
        latency_p50_ms=round(float(np.percentile(latencies, 50)), 3),
        latency_p95_ms=round(float(np.percentile(latencies, 95)), 3),
        inference_peak_mb=peak_resident_mb(),
        gpu_peak_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
        size_mb=round(shipped_bytes(run.path) / 2**20, 3),
        merged_size_mb=merged_size_mb(run.summary()),
    )
    write_record(run.file(COST_FILE), cost)
    return cost


def single_text_latencies_ms(classifier: Classifier, texts: list[str]) -> np.ndarray:
    """Milliseconds of LATENCY_CALLS calls with one text each (cycling through `texts`), after WARMUP_CALLS."""
    for text in texts[:WARMUP_CALLS]:
        classifier.predict_proba([text])
    latencies = []
    for call in range(LATENCY_CALLS):
        started = time.perf_counter()
        classifier.predict_proba([texts[call % len(texts)]])
        latencies.append((time.perf_counter() - started) * 1000)
    return np.asarray(latencies)


def merged_size_mb(summary: RunSummary) -> float | None:
    """About what a merged export writes: every parameter in fp32. None when the run has no frozen base weights
    (every parameter trained, as in tfidf): its export is its model files already."""
    if summary.total_params <= summary.trainable_params:
        return None
    return round(summary.total_params * FP32_BYTES / 2**20, 1)
