"""Stage 9: an HTTP service for a finished run (FastAPI + uvicorn).

Concurrent requests are scored together: each request puts its texts on an asyncio queue, and one worker
takes what arrives within a few milliseconds (up to a batch size), runs the model once in a thread, and hands
each request its rows. One model call at a time also keeps memory bounded however many clients connect.
Limits are enforced before any scoring: too many texts or characters -> 413, malformed bodies -> 422.
"""

from __future__ import annotations

import asyncio
import ipaddress
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.datastructures import Headers

from lorabench.core import console
from lorabench.core.errors import LorabenchError
from lorabench.core.metrics import check_threshold, decide
from lorabench.core.schemas import RunSummary
from lorabench.core.storage import RunDir
from lorabench.models.registry import Classifier, load_classifier

DEFAULT_MAX_TEXTS = 64
DEFAULT_MAX_CHARS = 2000
MAX_BATCH_TEXTS = 64
GATHER_SECONDS = 0.005


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(description="the texts to classify")


class Prediction(BaseModel):
    label: int | str = Field(description="the predicted class name")
    score: float = Field(description="P(positive class) for two classes, else P(predicted class)")


class PredictResponse(BaseModel):
    model: str
    threshold: float | None
    predictions: list[Prediction]


class BatchingWorker:
    """The single consumer of the request queue: gathers requests, scores them in one call, answers each."""

    def __init__(self, predict_proba, max_batch: int = MAX_BATCH_TEXTS, gather_seconds: float = GATHER_SECONDS):
        self.predict_proba = predict_proba
        self.max_batch = max_batch
        self.gather_seconds = gather_seconds
        self.queue: asyncio.Queue | None = None
        self.stats = {"requests": 0, "texts": 0, "batches": 0}

    async def submit(self, texts: list[str]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

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
            await self._score(batch)

    async def _score(self, batch: list) -> None:
        batch = [(texts, future) for texts, future in batch if not future.done()]  # clients that left
        if not batch:
            return
        try:
            probabilities = await asyncio.to_thread(self.predict_proba, [text for texts, _ in batch for text in texts])
        except Exception as err:  # answer every waiting request with the failure instead of hanging them
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        self.stats["batches"] += 1
        start = 0
        for texts, future in batch:
            self.stats["requests"] += 1
            self.stats["texts"] += len(texts)
            if not future.done():
                future.set_result(probabilities[start : start + len(texts)])
            start += len(texts)


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


def create_app(
    classifier: Classifier,
    summary: RunSummary,
    threshold: float | None = None,
    max_texts: int = DEFAULT_MAX_TEXTS,
    max_chars: int = DEFAULT_MAX_CHARS,
    max_batch: int = MAX_BATCH_TEXTS,
    gather_seconds: float = GATHER_SECONDS,
) -> FastAPI:
    """The FastAPI app for one loaded classifier; `summary` is the run's summary.json (for /info)."""
    check_threshold(threshold, classifier.label_names)
    threshold = classifier.threshold if threshold is None else threshold
    model_name = summary.model
    worker = BatchingWorker(classifier.predict_proba, max_batch, gather_seconds)

    @asynccontextmanager
    async def lifespan(_app):
        console.set_progress(False)  # a service draws no progress bars per batch
        task = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(
        title="lorabench",
        version="1",
        lifespan=lifespan,
        description=f"Text classification with the LoRA fine-tuned model '{model_name}'.",
    )
    app.add_middleware(BodyLimit, max_texts=max_texts, max_chars=max_chars)

    @app.post("/predict", response_model=PredictResponse)
    async def predict(request: PredictRequest) -> PredictResponse:
        """One prediction per text, in order."""
        texts = request.texts
        if len(texts) > max_texts:
            raise HTTPException(413, f"too many texts: {len(texts)} in one request; the limit is {max_texts}")
        for index, text in enumerate(texts):
            if len(text) > max_chars:
                raise HTTPException(413, f"text {index} has {len(text)} characters; the limit is {max_chars}")
        if not texts:
            return PredictResponse(model=model_name, threshold=threshold, predictions=[])
        probabilities = await worker.submit(texts)
        labels, scores = decide(probabilities, classifier.label_names, threshold)
        predictions = [
            Prediction(label=label, score=round(float(score), 6)) for label, score in zip(labels, scores, strict=True)
        ]
        return PredictResponse(model=model_name, threshold=threshold, predictions=predictions)

    @app.get("/health")
    async def health() -> dict:
        """Liveness, and how many requests were scored in how many batches."""
        return {"status": "ok", **worker.stats}

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
            "limits": {"max_texts": max_texts, "max_chars": max_chars},
            "batching": {"max_batch": max_batch, "gather_ms": gather_seconds * 1000},
        }

    return app


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_texts: int = DEFAULT_MAX_TEXTS,
    max_chars: int = DEFAULT_MAX_CHARS,
    threshold: float | None = None,
    batch_size: int | None = None,
) -> None:
    """Load the run's model and serve it until interrupted."""
    if max_texts < 1 or max_chars < 1:
        raise LorabenchError("--max-texts and --max-chars must be at least 1")
    classifier = load_classifier(run_dir, batch_size)
    summary = RunDir(run_dir).summary()
    app = create_app(classifier, summary, threshold, max_texts, max_chars)
    if not _is_loopback(host):
        console.say(f"warning: serving on {host} makes the model reachable from other machines, with no authentication")
    uvicorn.run(app, host=host, port=port, log_level="info")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
