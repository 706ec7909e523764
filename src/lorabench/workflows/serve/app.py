"""The FastAPI app for one loaded classifier: its routes, and the checks every request passes before scoring."""

from __future__ import annotations

import asyncio
import functools
from contextlib import asynccontextmanager

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

from lorabench.core import console
from lorabench.core.errors import LorabenchError
from lorabench.core.metrics import check_threshold, decide
from lorabench.core.schemas import RunSummary
from lorabench.core.settings import DEFAULT_MAX_CHARS, ServeSettings
from lorabench.data.texts import template_texts
from lorabench.models.registry import Classifier
from lorabench.workflows.serve.batching import BatchingWorker, QueueFull
from lorabench.workflows.serve.metrics import ServeMetrics
from lorabench.workflows.serve.middleware import BearerAuth, BodyLimit, RequestMetrics
from lorabench.workflows.serve.schemas import (
    InferenceRequest,
    LabelScore,
    PredictBody,
    Prediction,
    PredictRequest,
    PredictResponse,
)

RETRY_AFTER_SECONDS = 1


def create_app(
    classifier: Classifier,
    summary: RunSummary,
    settings: ServeSettings | None = None,
    *,
    api_key: str | None = None,
    text_template: str | None = None,
) -> FastAPI:
    """The FastAPI app for one loaded classifier; `summary` is the run's summary.json (for /info and the default
    `max_chars`); `settings` default to ServeSettings(); `api_key` is the key itself (None: no auth);
    `text_template` is the run's data.text_template, which builds texts from the `rows` of a request."""
    settings = settings or ServeSettings()
    check_threshold(settings.threshold, classifier.label_names)
    threshold = classifier.threshold if settings.threshold is None else settings.threshold
    max_texts, request_timeout = settings.max_texts, settings.request_timeout
    max_chars = default_max_chars(summary) if settings.max_chars is None else settings.max_chars
    names = [str(name) for name in classifier.label_names]
    model_name = summary.model
    metrics = ServeMetrics()
    worker = BatchingWorker(classifier.predict_proba, settings.max_batch, settings.gather_seconds,
                            settings.max_queued_texts, metrics)  # fmt: skip

    app = FastAPI(
        title="lorabench",
        version="1",
        lifespan=functools.partial(_lifespan, worker=worker),
        description=f"Text classification: '{model_name}'.",
    )
    app.add_middleware(BodyLimit, max_texts=max_texts, max_chars=max_chars)
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)  # added later = runs earlier: before the body is read
    app.add_middleware(RequestMetrics, metrics=metrics)

    async def predict(request: PredictBody) -> PredictResponse | list[list[LabelScore]]:
        """lorabench's form: one prediction per text, in order. The Hugging Face form: per text, its classes and
        their probabilities, most probable first."""
        texts = _request_texts(request, text_template)
        _check_size(texts, max_texts, max_chars)
        probabilities = await _scored(worker, texts, request_timeout) if texts else np.zeros((0, len(names)))
        if isinstance(request, InferenceRequest):
            top_k = request.parameters.top_k if request.parameters else None
            return [_ranked(row, names)[:top_k] for row in probabilities]
        labels, scores = decide(probabilities, classifier.label_names, threshold)
        predictions = [
            Prediction(
                label=label,
                score=round(float(score), 6),
                probabilities=_by_name(row, names) if request.probabilities else None,
            )
            for label, score, row in zip(labels, scores, probabilities, strict=True)
        ]
        return PredictResponse(model=model_name, threshold=threshold, predictions=predictions)

    for path in ("/predict", "/"):  # one handler: auth, limits, batching and metrics are the same on both
        app.post(path, response_model=PredictResponse | list[list[LabelScore]])(predict)

    @app.get("/health")
    async def health() -> dict:
        """Liveness, how many requests were scored in how many batches, and how many texts wait."""
        return {"status": "ok", **worker.stats, "queued_texts": worker.queued_texts}

    @app.get("/info")
    async def info() -> dict:
        """The model, its metrics, the decision threshold in use and the request limits."""
        return {
            "model": model_name,
            "label_names": list(classifier.label_names),
            "threshold": threshold,
            "trained_threshold": summary.threshold,
            "best_epoch": summary.best_epoch,
            "metrics": {"val": summary.val.model_dump(), "test": summary.test.model_dump() if summary.test else None},
            "limits": {
                "max_texts": max_texts,
                "max_chars": max_chars,
                "max_queued_texts": settings.max_queued_texts,
                "request_timeout_s": request_timeout,
            },  # fmt: skip
            "batching": {"max_batch": settings.max_batch, "gather_ms": settings.gather_seconds * 1000},
            "auth": "bearer" if api_key else None,
        }

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of this app's counters, histograms and queue gauge."""
        return metrics.exposition()

    return app


@asynccontextmanager
async def _lifespan(_app: FastAPI, worker: BatchingWorker):
    """The batching worker runs while the app serves."""
    console.set_progress(False)  # a service draws no progress bars per batch
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:  # uvicorn gets here only after in-flight requests are answered (or its graceful timeout)
        task.cancel()


def default_max_chars(summary: RunSummary) -> int:
    """Twice the run's longest training text, at least DEFAULT_MAX_CHARS: texts like those it learned from fit
    with room to spare, and a run on long documents accepts its own kind of text."""
    return max(DEFAULT_MAX_CHARS, 2 * (summary.max_text_chars or 0))


def _ranked(probabilities: np.ndarray, names: list[str]) -> list[LabelScore]:
    """Every class with its probability, most probable first (ties in class order), as the HF API answers."""
    order = sorted(range(len(names)), key=lambda index: -probabilities[index])
    return [LabelScore(label=names[index], score=round(float(probabilities[index]), 6)) for index in order]


def _by_name(probabilities: np.ndarray, names: list[str]) -> dict[str, float]:
    return {name: round(float(p), 6) for name, p in zip(names, probabilities, strict=True)}


def _request_texts(request: PredictRequest | InferenceRequest, text_template: str | None) -> list[str]:
    """The request's texts, or its rows built into texts as in training; 422 when rows cannot be."""
    if isinstance(request, InferenceRequest):
        return [request.inputs] if isinstance(request.inputs, str) else request.inputs
    if request.rows is None:
        return request.texts
    if not text_template:
        raise HTTPException(422, "rows apply to runs trained with data.text_template; send texts")
    if not request.rows:
        return []
    try:
        return template_texts(pd.DataFrame(request.rows), text_template, "the request's rows").tolist()
    except LorabenchError as err:
        raise HTTPException(422, str(err)) from err


def _check_size(texts: list[str], max_texts: int, max_chars: int) -> None:
    """413 naming the limit: checked before queueing, so an oversize request costs no model time."""
    if len(texts) > max_texts:
        raise HTTPException(413, f"too many texts: {len(texts)} in one request; the limit is {max_texts}")
    for index, text in enumerate(texts):
        if len(text) > max_chars:
            raise HTTPException(413, f"text {index} has {len(text)} characters; the limit is {max_chars}")


async def _scored(worker: BatchingWorker, texts: list[str], timeout: float) -> np.ndarray:
    """The worker's answer, or the HTTP refusal that tells the client to come back later."""
    try:
        return await worker.submit(texts, timeout)
    except QueueFull as err:
        worker.metrics.errors.labels("queue_full").inc()
        raise HTTPException(
            503,
            f"busy: over {worker.max_queued_texts} texts are waiting to be scored; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from err
    except asyncio.TimeoutError as err:
        worker.metrics.errors.labels("timeout").inc()
        raise HTTPException(504, f"not answered within {timeout:g} s; the server is overloaded") from err
