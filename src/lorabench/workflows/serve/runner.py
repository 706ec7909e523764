"""`lorabench serve`: load a run and serve it with uvicorn until interrupted."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import uvicorn

from lorabench.core import console
from lorabench.core.errors import LorabenchError
from lorabench.core.settings import ServeSettings
from lorabench.core.storage import RunDir
from lorabench.models.registry import load_classifier
from lorabench.workflows.serve.app import create_app

# Shutdown waits for in-flight requests; none can take longer than the request timeout, plus this to answer.
SHUTDOWN_GRACE_SECONDS = 5


def serve(run_dir: str | Path, settings: ServeSettings) -> None:
    """Load the run's model and serve it until interrupted; SIGTERM lets in-flight requests finish first."""
    api_key = _api_key(settings.api_key_env)  # before loading the model: a missing key fails at once
    classifier = load_classifier(run_dir, settings.batch_size)
    run = RunDir(run_dir)
    app = create_app(classifier, run.summary(), settings, api_key=api_key,
                     text_template=run.config().data.text_template)  # fmt: skip
    if not api_key and not _is_loopback(settings.host):
        console.say(
            f"warning: serving on {settings.host} makes the model reachable from other machines, with no authentication"
        )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=int(settings.request_timeout) + SHUTDOWN_GRACE_SECONDS)  # fmt: skip


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
