"""Stage 9: an HTTP service for a finished run (FastAPI + uvicorn).

POST /predict (and POST /, where Hugging Face clients send) takes lorabench's `{"texts": [...]}` or `{"rows":
[...]}` and answers labels and scores, or the Hugging Face Inference API's `{"inputs": ..., "parameters":
{"top_k": k}}` and answers as that API does, so `huggingface_hub.InferenceClient(base_url=...)` can call a run.

Concurrent requests are scored together in one model call (batching.py). Limits are enforced before any
scoring: too many texts or characters -> 413, malformed bodies -> 422, more queued texts than
`max_queued_texts` -> 503 with Retry-After, no answer within `request_timeout` -> 504. With an API key, every
route but /health needs `Authorization: Bearer <key>` (401 before the body is read; middleware.py). Prometheus
metrics (per app, so several apps in one process do not clash) are at /metrics. Every setting is a field of
`ServeSettings` (lorabench.core.settings); `create_app` (app.py) builds the app, `serve` (runner.py) runs it.
"""

from __future__ import annotations

from lorabench.core.settings import ServeSettings
from lorabench.workflows.serve.app import create_app
from lorabench.workflows.serve.runner import serve

__all__ = ["ServeSettings", "create_app", "serve"]
