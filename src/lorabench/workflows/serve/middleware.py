"""The ASGI middlewares that wrap every route, before FastAPI reads a body: size limit, API key, metrics."""

from __future__ import annotations

import hmac
import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from lorabench.workflows.serve.metrics import ServeMetrics

# Answered without the API key: probes hold no key, and the API's description is no secret.
OPEN_PATHS = {"/health", "/docs", "/openapi.json"}
ROUTES = ("/", "/predict", "/health", "/info", "/metrics", "/docs", "/openapi.json")


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
