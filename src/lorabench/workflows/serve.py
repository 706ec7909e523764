"""Stage 9: an HTTP service for a finished run (FastAPI + uvicorn).

POST /predict (and POST /, where Hugging Face clients send) takes lorabench's `{"texts": [...]}` or `{"rows":
[...]}` and answers labels and scores, or the Hugging Face Inference API's `{"inputs": ..., "parameters":
{"top_k": k}}` and answers as that API does, so `huggingface_hub.InferenceClient(base_url=...)` can call a run.

Concurrent requests are scored together: each request puts its texts on an asyncio queue, and one worker
takes what arrives within a few milliseconds (up to a batch size), runs the model once in a thread, and hands
each request its rows. One model call at a time also keeps memory bounded however many clients connect.
Limits are enforced before any scoring: too many texts or characters -> 413, malformed bodies -> 422, more
queued texts than `max_queued_texts` -> 503 with Retry-After, no answer within `request_timeout` -> 504. With an
API key, every route but /health needs `Authorization: Bearer <key>` (401 before the body is read). Prometheus
metrics (per app, so several apps in one process do not clash) are at /metrics.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictStr, Tag, model_validator
from starlette.datastructures import Headers

from lorabench.core import console
from lorabench.core.errors import LorabenchError
from lorabench.core.metrics import check_threshold, decide
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import RunDir
from lorabench.data.sources import template_texts
from lorabench.models.registry import Classifier, load_classifier

DEFAULT_MAX_TEXTS = 64
DEFAULT_MAX_CHARS = 2000
MAX_BATCH_TEXTS = 64
GATHER_SECONDS = 0.005
DEFAULT_MAX_QUEUED_TEXTS = 1024
DEFAULT_REQUEST_TIMEOUT = 30.0
RETRY_AFTER_SECONDS = 1
# Shutdown waits for in-flight requests; none can take longer than the request timeout, plus this to answer.
SHUTDOWN_GRACE_SECONDS = 5
# Answered without the API key: probes hold no key, and the API's description is no secret.
OPEN_PATHS = {"/health", "/docs", "/openapi.json"}
ROUTES = ("/", "/predict", "/health", "/info", "/metrics", "/docs", "/openapi.json")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] | None = Field(None, description="the texts to classify")
    rows: list[dict[str, StrictStr | None]] | None = Field(
        None, description="instead of texts, for a run trained with data.text_template: the template's columns"
    )
    probabilities: StrictBool = Field(False, description="also answer every class's probability for each text")

    @model_validator(mode="after")
    def _texts_or_rows(self) -> PredictRequest:
        if (self.texts is None) == (self.rows is None):
            raise ValueError("send either texts or rows")
        return self


class InferenceParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int | None = Field(None, ge=1, description="answer the k most probable classes only (default: all)")
    function_to_apply: StrictStr | None = Field(
        None, description="accepted as Hugging Face clients send it, and ignored: scores are the model's probabilities"
    )


class InferenceRequest(BaseModel):
    """The Hugging Face Inference API's text-classification body, so its clients call a run as a hub model."""

    model_config = ConfigDict(extra="forbid")
    inputs: StrictStr | list[StrictStr] = Field(description="a text, or a list of texts")
    parameters: InferenceParameters | None = None


def _body_form(body) -> str:
    """Which request form a body is: the Hugging Face one has `inputs` (so a malformed body is told the errors of
    the form it meant, not of both)."""
    return "InferenceRequest" if isinstance(body, dict) and "inputs" in body else "PredictRequest"


PredictBody = Annotated[
    Annotated[PredictRequest, Tag("PredictRequest")] | Annotated[InferenceRequest, Tag("InferenceRequest")],
    Discriminator(_body_form),
]


class LabelScore(BaseModel):
    label: str = Field(description="a class name")
    score: float = Field(description="its probability")


class Prediction(BaseModel):
    label: int | str = Field(description="the predicted class name")
    score: float = Field(description="P(positive class) for two classes, else P(predicted class)")
    probabilities: dict[str, float] | None = Field(
        None,
        description="every class's probability by class name, when the request asks for them",
        exclude_if=lambda value: value is None,
    )


class PredictResponse(BaseModel):
    model: str
    threshold: float | None
    predictions: list[Prediction]


class QueueFull(Exception):
    """More texts are waiting than the server holds; the client should retry shortly."""


class ServeMetrics:
    """The Prometheus instruments of one app, in their own registry (not the process-wide default one)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("lorabench_requests", "HTTP requests answered", ["path", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("lorabench_request_seconds", "time to answer a request", ["path"],
                                 registry=self.registry)  # fmt: skip
        self.texts = Counter("lorabench_texts_scored", "texts scored by the model", registry=self.registry)
        self.errors = Counter("lorabench_errors", "requests not scored: model failure, timeout or full queue",
                              ["kind"], registry=self.registry)  # fmt: skip
        self.batch = Histogram("lorabench_batch_texts", "texts per model call", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))  # fmt: skip
        self.queued = Gauge("lorabench_queued_texts", "texts queued or being scored", registry=self.registry)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class BatchingWorker:
    """The single consumer of the request queue: gathers requests, scores them in one call, answers each.

    `queued_texts` counts texts submitted and not yet scored (or dropped); `submit` refuses a request that would
    take it past `max_queued_texts`, so a flood of clients costs bounded memory instead of an ever longer queue.
    """

    def __init__(self, predict_proba, max_batch: int = MAX_BATCH_TEXTS, gather_seconds: float = GATHER_SECONDS,
                 max_queued_texts: int = DEFAULT_MAX_QUEUED_TEXTS, metrics: ServeMetrics | None = None):  # fmt: skip
        self.predict_proba = predict_proba
        self.max_batch = max_batch
        self.gather_seconds = gather_seconds
        self.max_queued_texts = max_queued_texts
        self.metrics = metrics or ServeMetrics()
        self.queue: asyncio.Queue | None = None
        self.queued_texts = 0
        self.metrics.queued.set_function(lambda: self.queued_texts)
        self.stats = {"requests": 0, "texts": 0, "batches": 0}

    async def submit(self, texts: list[str], timeout: float) -> np.ndarray:
        """The texts' probabilities; QueueFull at once when the queue is full, TimeoutError after `timeout`
        seconds (the texts are then dropped from their batch unless already being scored)."""
        if self.queued_texts + len(texts) > self.max_queued_texts:
            raise QueueFull
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)  # no await since the check: no other request can pass it meanwhile
        self.queue.put_nowait((texts, future))
        return await asyncio.wait_for(future, timeout)  # a timeout cancels the future: _score then skips it

    async def run(self) -> None:
        self.queue = asyncio.Queue()
        carried = None
        while True:
            first = carried or await self.queue.get()
            carried = None
            await asyncio.sleep(self.gather_seconds)  # let concurrent requests join this batch
            batch, size = [first], len(first[0])
            while size < self.max_batch and not self.queue.empty():
                item = self.queue.get_nowait()
                if size + len(item[0]) > self.max_batch:
                    carried = item  # first in the next batch
                    break
                batch.append(item)
                size += len(item[0])
            try:
                await self._score(batch)
            finally:
                self.queued_texts -= size

    async def _score(self, batch: list) -> None:
        batch = [(texts, future) for texts, future in batch if not future.done()]  # clients that left
        if not batch:
            return
        texts = [text for request_texts, _ in batch for text in request_texts]
        try:
            probabilities = await asyncio.to_thread(self.predict_proba, texts)
        except Exception as err:  # answer every waiting request with the failure instead of hanging them
            self.metrics.errors.labels("scoring").inc()
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        self.stats["batches"] += 1
        self.metrics.batch.observe(len(texts))
        self.metrics.texts.inc(len(texts))
        start = 0
        for request_texts, future in batch:
            self.stats["requests"] += 1
            self.stats["texts"] += len(request_texts)
            if not future.done():
                future.set_result(probabilities[start : start + len(request_texts)])
            start += len(request_texts)


class BodyLimit:
    """ASGI middleware: 413 for a body larger than `max_texts` texts of `max_chars` characters can be.

    A declared Content-Length is refused before reading; a streamed body is counted as it arrives and refused
    once past the limit, so a huge body never reaches memory. (FastAPI's own `max_body_size` answers a bare
    "Content Too Large" in plain text; this names the limits.)
    """

    def __init__(self, app, max_texts: int, max_chars: int):
        self.app = app
        # each character takes at most 6 bytes in JSON (a \uXXXX escape), plus quotes, commas and the envelope
        self.max_bytes = max_texts * (6 * max_chars + 8) + 1024
        self.message = (
            f"request body larger than {self.max_bytes} bytes, the most that {max_texts} texts of "
            f"{max_chars} characters take"
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.message)  # FastAPI answers it as JSON like any HTTPException
            return message

        await self.app(scope, counted_receive, send)


class BearerAuth:
    """ASGI middleware: 401 unless `Authorization: Bearer <key>`, on every path but OPEN_PATHS.

    It runs before the body is read or parsed, so a stranger learns nothing from 413 or 422 answers; the key is
    compared in constant time.
    """

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = Headers(scope=scope).get("authorization", "").encode()
        if not hmac.compare_digest(given, self.expected):
            answer = JSONResponse({"detail": "missing or wrong API key: send the header Authorization: Bearer <key>"},
                                  status_code=401, headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
            return await answer(scope, receive, send)
        await self.app(scope, receive, send)


class RequestMetrics:
    """ASGI middleware (outermost): counts every answer by path and status and times it. Unknown paths share one
    label, so strangers probing URLs cannot grow the metrics without bound."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in ROUTES else "other"
        status = 500  # what the client gets when the app raises before answering
        started = time.perf_counter()

        async def recorded_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded_send)
        finally:
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)


def create_app(
    classifier: Classifier,
    summary: RunSummary,
    threshold: float | None = None,
    max_texts: int = DEFAULT_MAX_TEXTS,
    max_chars: int | None = None,
    max_batch: int = MAX_BATCH_TEXTS,
    gather_seconds: float = GATHER_SECONDS,
    api_key: str | None = None,
    max_queued_texts: int = DEFAULT_MAX_QUEUED_TEXTS,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    text_template: str | None = None,
) -> FastAPI:
    """The FastAPI app for one loaded classifier; `summary` is the run's summary.json (for /info and the default
    `max_chars`); `text_template` is the run's data.text_template, which builds texts from the `rows` of a request."""
    check_threshold(threshold, classifier.label_names)
    threshold = classifier.threshold if threshold is None else threshold
    max_chars = default_max_chars(summary) if max_chars is None else max_chars
    names = [str(name) for name in classifier.label_names]
    model_name = summary.model
    metrics = ServeMetrics()
    worker = BatchingWorker(classifier.predict_proba, max_batch, gather_seconds, max_queued_texts, metrics)

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
                "max_queued_texts": max_queued_texts,
                "request_timeout_s": request_timeout,
            },  # fmt: skip
            "batching": {"max_batch": max_batch, "gather_ms": gather_seconds * 1000},
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


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_texts: int = DEFAULT_MAX_TEXTS,
    max_chars: int | None = None,
    threshold: float | None = None,
    batch_size: int | None = None,
    api_key_env: str | None = None,
    max_queued_texts: int = DEFAULT_MAX_QUEUED_TEXTS,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> None:
    """Load the run's model and serve it until interrupted; SIGTERM lets in-flight requests finish first.
    `max_chars` None: twice the run's longest training text, at least DEFAULT_MAX_CHARS."""
    if max_texts < 1 or (max_chars is not None and max_chars < 1):
        raise LorabenchError("--max-texts and --max-chars must be at least 1")
    if max_queued_texts < max_texts:
        raise LorabenchError(f"--max-queued-texts ({max_queued_texts}) must be at least --max-texts ({max_texts})")
    if request_timeout <= 0:
        raise LorabenchError("--request-timeout must be more than 0 seconds")
    api_key = _api_key(api_key_env)  # before loading the model: a missing key fails at once
    classifier = load_classifier(run_dir, batch_size)
    run = RunDir(run_dir)
    app = create_app(classifier, run.summary(), threshold, max_texts, max_chars, api_key=api_key,
                     max_queued_texts=max_queued_texts, request_timeout=request_timeout,
                     text_template=run.config().data.text_template)  # fmt: skip
    if not api_key and not _is_loopback(host):
        console.say(f"warning: serving on {host} makes the model reachable from other machines, with no authentication")
    uvicorn.run(app, host=host, port=port, log_level="info",
                timeout_graceful_shutdown=int(request_timeout) + SHUTDOWN_GRACE_SECONDS)  # fmt: skip


def _api_key(variable: str | None) -> str | None:
    """The key clients must send, read from the environment so it never appears in the process list."""
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key:
        raise LorabenchError(
            f"--api-key-env {variable}: that environment variable is unset or empty; set it to the key"
        )
    return key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
