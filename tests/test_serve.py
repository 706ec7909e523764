"""`lorabench serve`: the real uvicorn server on a loopback port, hit by concurrent httpx clients."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time

import httpx
import pandas as pd
import pytest
import uvicorn

from lorabench.core.errors import LorabenchError
from lorabench.core.storage import RunDir
from lorabench.workflows.predict import predict_file
from lorabench.workflows.serve import create_app

MAX_TEXTS, MAX_CHARS = 8, 300


@pytest.fixture(scope="module")
def server(llama_run, llama_classifier):
    """uvicorn serving the app in a thread on a socket bound to a free loopback port; yields its base URL."""
    # 50 ms of gathering makes the batching of concurrent requests certain even on a busy machine.
    app = create_app(
        llama_classifier, RunDir(llama_run).summary(), max_texts=MAX_TEXTS, max_chars=MAX_CHARS, gather_seconds=0.05
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def expected(llama_run, llama_classifier, small_data, tmp_path_factory):
    """What `predict` writes for the 40 test tweets: text -> (label, score)."""
    out = tmp_path_factory.mktemp("serve_expected") / "out.csv"
    predict_file(llama_run, small_data / "test.csv", out, classifier=llama_classifier)
    texts = pd.read_csv(small_data / "test.csv")["text"].tolist()
    written = pd.read_csv(out)
    return texts, written["target"].tolist(), written["score"].tolist()


def test_concurrent_requests_are_batched_and_answer_as_predict_does(server, expected, llama_run):
    texts, labels, scores = expected
    requests = [texts[start : start + 4] for start in range(0, 40, 4)]  # 10 requests of 4 texts

    async def send_all():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            before = (await client.get("/health")).json()
            answers = await asyncio.gather(*(client.post("/predict", json={"texts": chunk}) for chunk in requests))
            after = (await client.get("/health")).json()
        return before, answers, after

    before, answers, after = asyncio.run(send_all())
    assert all(answer.status_code == 200 for answer in answers)
    predictions = [p for answer in answers for p in answer.json()["predictions"]]
    assert [p["label"] for p in predictions] == labels
    assert [p["score"] for p in predictions] == pytest.approx(scores, abs=2e-6)
    assert answers[0].json()["threshold"] == RunDir(llama_run).summary().threshold
    assert after["requests"] - before["requests"] == 10 and after["texts"] - before["texts"] == 40
    assert after["batches"] - before["batches"] < 10  # requests were scored together


def test_limits_and_malformed_requests_are_refused_and_the_server_keeps_serving(server, expected):
    texts, labels, scores = expected
    with httpx.Client(base_url=server, timeout=60) as client:
        too_many = client.post("/predict", json={"texts": ["fire"] * (MAX_TEXTS + 1)})
        assert too_many.status_code == 413
        assert too_many.json()["detail"] == f"too many texts: {MAX_TEXTS + 1} in one request; the limit is {MAX_TEXTS}"
        too_long = client.post("/predict", json={"texts": ["ok", "x" * (MAX_CHARS + 1)]})
        assert too_long.status_code == 413
        assert too_long.json()["detail"] == f"text 1 has {MAX_CHARS + 1} characters; the limit is {MAX_CHARS}"
        huge = client.post("/predict", json={"texts": ["y" * 50_000]})  # refused by size before it is read
        assert huge.status_code == 413
        assert huge.json()["detail"] == (
            "request body larger than 15488 bytes, the most that 8 texts of 300 characters take"
        )

        def streamed():  # no Content-Length: counted as it arrives
            yield b'{"texts": ["'
            for _ in range(100):
                yield b"z" * 1000
            yield b'"]}'

        streamed_answer = client.post("/predict", content=streamed(), headers={"content-type": "application/json"})
        assert streamed_answer.status_code == 413 and streamed_answer.json() == huge.json()

        headers = {"content-type": "application/json"}
        assert client.post("/predict", content=b'{"texts": ["unterminated', headers=headers).status_code == 422
        for body in (
            {"texts": "one string"},
            {"texts": [1, 2]},
            {"text": ["typo"]},
            {"texts": ["a"], "extra": 1},
            ["a list"],
            {"texts": [None]},
        ):
            answer = client.post("/predict", json=body)
            assert answer.status_code == 422, body
            assert answer.json()["detail"][0]["loc"][0] == "body"
        assert client.post("/predict", json={"texts": []}).json()["predictions"] == []

        still = client.post("/predict", json={"texts": texts[:3]})
        assert still.status_code == 200
        assert [p["label"] for p in still.json()["predictions"]] == labels[:3]
        assert client.get("/health").json()["status"] == "ok"


def test_info_and_openapi(server, llama_run):
    summary = RunDir(llama_run).summary()
    info = httpx.get(f"{server}/info").json()
    assert info["threshold"] == summary.threshold and info["label_names"] == [0, 1]
    assert info["metrics"]["val"] == summary.val.model_dump()
    assert info["limits"] == {"max_texts": MAX_TEXTS, "max_chars": MAX_CHARS}
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/predict", "/health", "/info"} <= set(schema["paths"])
    assert schema["components"]["schemas"]["PredictRequest"]["required"] == ["texts"]


def test_threshold_override_is_checked(llama_classifier, llama_run):
    with pytest.raises(LorabenchError, match="between 0 and 1"):
        create_app(llama_classifier, RunDir(llama_run).summary(), threshold=2.0)


def test_cli_serves_on_loopback(llama_run, llama_classifier, expected):
    """The `lorabench serve` command itself, in a subprocess, answers like `predict`."""
    texts, labels, _ = expected
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "lorabench.cli",
        "--quiet",
        "serve",
        "--run",
        str(llama_run),
        "--port",
        str(port),
        "--threshold",
        "0.5",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "lorabench serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"texts": texts[:5]}, timeout=60).json()
        assert answer["threshold"] == 0.5
        probabilities = llama_classifier.predict_proba(texts[:5])
        assert [p["label"] for p in answer["predictions"]] == (probabilities[:, 1] >= 0.5).astype(int).tolist()
    finally:
        process.terminate()
        process.wait(timeout=30)
