"""`lorabench serve`: the real uvicorn server on a loopback port, hit by concurrent httpx clients."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import pandas as pd
import pytest
import uvicorn
from fastapi.testclient import TestClient
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from prometheus_client.parser import text_string_to_metric_families

import forked
from lorabench.core.errors import LorabenchError
from lorabench.core.storage import RunDir
from lorabench.models.registry import load_classifier
from lorabench.workflows.predict import predict_file
from lorabench.workflows.serve import ServeSettings, create_app

MAX_TEXTS, MAX_CHARS = 8, 300
FOUR_CLASS = Path(__file__).parent / "data" / "four_class"
TOPICS = ["business", "politics", "sport", "tech"]
SPORT = "Late goal wins the match. The striker scored as the coach watched the championship season end."


@contextmanager
def serving(app):
    """uvicorn serving `app` in a thread on a socket bound to a free loopback port; yields its base URL and the
    uvicorn server (setting its `should_exit` is what SIGTERM does)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: uv.started or not thread.is_alive(), "server did not start")
        assert thread.is_alive(), "server stopped at start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", uv
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()


def wait_until(condition, message: str = "condition not reached", seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(llama_run, llama_classifier):
    """The app with small limits, served on loopback; yields its base URL."""
    # 50 ms of gathering makes the batching of concurrent requests certain even on a busy machine.
    settings = ServeSettings(max_texts=MAX_TEXTS, max_chars=MAX_CHARS, gather_seconds=0.05)
    app = create_app(llama_classifier, RunDir(llama_run).summary(), settings)
    with serving(app) as (url, _):
        yield url


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
    assert info["limits"] == {
        "max_texts": MAX_TEXTS,
        "max_chars": MAX_CHARS,
        "max_queued_texts": 1024,
        "request_timeout_s": 30.0,
    }
    assert info["auth"] is None
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/predict", "/health", "/info"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["PredictRequest"]  # texts, or rows for a templated run: one of them
    assert {"texts", "rows", "probabilities"} == set(request["properties"]) and "required" not in request


def test_threshold_override_is_checked(llama_classifier, llama_run):
    with pytest.raises(LorabenchError, match="between 0 and 1"):
        create_app(llama_classifier, RunDir(llama_run).summary(), ServeSettings(threshold=2.0))


def test_cli_serves_on_loopback(llama_run, llama_classifier, expected):
    """The `lorabench serve` command itself, in a process of its own (forked: tests/forked.py), answers like
    `predict`."""
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
    process = forked.Forked(command)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1]
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
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


class GatedClassifier:
    """The tiny model behind a gate: predict_proba waits until `gate` is set, so a test can hold requests in the
    server's queue; `scored` records the texts of each model call."""

    def __init__(self, classifier):
        self.classifier = classifier
        self.label_names = classifier.label_names
        self.threshold = classifier.threshold
        self.gate = threading.Event()
        self.scored: list[list[str]] = []

    def predict_proba(self, texts):
        self.scored.append(list(texts))
        assert self.gate.wait(timeout=60), "the test never opened the gate"
        return self.classifier.predict_proba(texts)


@pytest.fixture
def gated(llama_classifier):
    gated = GatedClassifier(llama_classifier)
    yield gated
    gated.gate.set()  # a failed test must not leave the worker thread waiting


def predict_texts(url: str, texts: list[str]) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"texts": texts}, timeout=60)


def queued_texts(url: str) -> int:
    return httpx.get(f"{url}/health").json()["queued_texts"]


def test_api_key_is_required_everywhere_but_health(llama_run, llama_classifier):
    app = create_app(llama_classifier, RunDir(llama_run).summary(), api_key="s3cret-key")
    good = {"Authorization": "Bearer s3cret-key"}
    with serving(app) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            refused = client.post("/predict", json={"texts": ["fire"]}, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["detail"].startswith("missing or wrong API key")
            assert client.get("/info", headers=headers).status_code == 401
            assert client.get("/metrics", headers=headers).status_code == 401
        # a stranger's malformed body is refused for the key before it is parsed
        assert (
            client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}).status_code
            == 401
        )
        assert client.get("/health").json()["status"] == "ok"

        answer = client.post("/predict", json={"texts": ["fire", "calm"]}, headers=good)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2
        assert client.get("/info", headers=good).json()["auth"] == "bearer"
        assert client.get("/metrics", headers=good).status_code == 200


def test_a_full_queue_refuses_with_503_and_retry_after_before_queueing(llama_run, gated, expected):
    texts = expected[0]
    app = create_app(
        gated, RunDir(llama_run).summary(), ServeSettings(max_texts=8, gather_seconds=0, max_queued_texts=8)
    )
    with serving(app) as (url, _), ThreadPoolExecutor(2) as pool:
        post = partial(predict_texts, url)
        first = pool.submit(post, texts[:5])
        wait_until(lambda: queued_texts(url) == 5)
        full = post(texts[5:9])  # 5 + 4 > 8
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json()["detail"] == "busy: over 8 texts are waiting to be scored; retry shortly"
        fits = pool.submit(post, texts[5:8])  # 5 + 3 = 8 is allowed
        wait_until(lambda: queued_texts(url) == 8)
        gated.gate.set()
        assert first.result().status_code == 200 and fits.result().status_code == 200
        assert queued_texts(url) == 0
    assert gated.scored == [texts[:5], texts[5:8]]  # the refused texts never reached the model


def test_an_unanswered_request_gets_504_and_its_waiting_texts_are_dropped(llama_run, gated, expected):
    texts = expected[0]
    app = create_app(gated, RunDir(llama_run).summary(), ServeSettings(gather_seconds=0, request_timeout=0.5))
    with serving(app) as (url, _), ThreadPoolExecutor(2) as pool:
        post = partial(predict_texts, url)
        first = pool.submit(post, texts[:2])
        wait_until(lambda: gated.scored, "the model never got the first request")
        second = pool.submit(post, texts[2:4])  # waits in the queue behind the first
        for answer in (first.result(), second.result()):
            assert answer.status_code == 504
            assert answer.json()["detail"] == "not answered within 0.5 s; the server is overloaded"
        gated.gate.set()
        wait_until(lambda: queued_texts(url) == 0)
        assert gated.scored == [texts[:2]]  # the second request's texts were dropped unscored
        assert post(texts[4:5]).status_code == 200  # and the server serves on


def test_metrics_count_requests_by_status_texts_and_batches(llama_run, llama_classifier, expected):
    texts = expected[0]
    app = create_app(
        llama_classifier, RunDir(llama_run).summary(), ServeSettings(max_texts=MAX_TEXTS, gather_seconds=0)
    )
    with serving(app) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        for start in (0, 2, 4):
            assert client.post("/predict", json={"texts": texts[start : start + 2]}).status_code == 200
        assert client.post("/predict", json={"texts": [1, 2]}).status_code == 422
        assert client.post("/predict", json={"texts": ["x"] * (MAX_TEXTS + 1)}).status_code == 413
        assert client.get("/no/such/path").status_code == 404
        exposition = client.get("/metrics")
    assert exposition.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition.text)
        for sample in family.samples
    }

    def requests(path, status):
        return samples.get(("lorabench_requests_total", (("path", path), ("status", status))))

    assert [requests("/predict", "200"), requests("/predict", "422"), requests("/predict", "413")] == [3, 1, 1]
    assert requests("other", "404") == 1  # unknown paths share one label
    assert samples[("lorabench_texts_scored_total", ())] == 6
    assert samples[("lorabench_batch_texts_sum", ())] == 6 and samples[("lorabench_batch_texts_count", ())] == 3
    assert samples[("lorabench_request_seconds_count", (("path", "/predict"),))] == 5
    assert samples[("lorabench_queued_texts", ())] == 0
    assert not any(name == "lorabench_errors_total" for name, _ in samples)


def test_shutdown_answers_in_flight_requests_before_the_worker_stops(llama_run, gated, expected):
    texts = expected[0]
    app = create_app(gated, RunDir(llama_run).summary(), ServeSettings(gather_seconds=0))
    with serving(app) as (url, uv), ThreadPoolExecutor(1) as pool:
        answer = pool.submit(predict_texts, url, texts[:3])
        wait_until(lambda: gated.scored, "the model never got the request")
        uv.should_exit = True  # what SIGTERM does
        time.sleep(0.5)
        assert not answer.done()
        gated.gate.set()
        assert answer.result().status_code == 200 and len(answer.result().json()["predictions"]) == 3


def test_cli_refuses_an_unset_or_empty_api_key_variable(cli, llama_run, monkeypatch):
    monkeypatch.delenv("LORABENCH_TEST_KEY", raising=False)
    unset = cli("serve", "--run", llama_run, "--api-key-env", "LORABENCH_TEST_KEY")
    assert unset.code == 2
    assert unset.stderr.strip() == (
        "error: --api-key-env LORABENCH_TEST_KEY: that environment variable is unset or empty; set it to the key"
    )
    monkeypatch.setenv("LORABENCH_TEST_KEY", "")
    assert cli("serve", "--run", llama_run, "--api-key-env", "LORABENCH_TEST_KEY").code == 2


@pytest.fixture(scope="module")
def topic_run(tmp_path_factory):
    """A tfidf run on the synthetic four-topic news of tests/data: quick to train and needs no ../shared data."""
    from lorabench.api import resolve_config, train

    data = {"source": str(FOUR_CLASS), "label_column": "topic", "text_template": "{headline}. {body}",
            "id_column": "doc_id"}  # fmt: skip
    out = tmp_path_factory.mktemp("topic_run") / "run"
    train(resolve_config("tfidf", overrides={"data": data}), out)
    return out


@pytest.fixture(scope="module")
def topic_classifier(topic_run):
    return load_classifier(topic_run)


@pytest.fixture
def topic_client(topic_run, topic_classifier):
    """The four-topic run's app in process (TestClient runs its lifespan, so the batching worker too)."""
    app = create_app(
        topic_classifier, RunDir(topic_run).summary(), ServeSettings(max_texts=MAX_TEXTS, gather_seconds=0)
    )
    with TestClient(app) as client:
        yield client


def ranked(probabilities) -> list[tuple[str, float]]:
    """(topic, probability), most probable first: what the Hugging Face form must answer."""
    return sorted(zip(TOPICS, probabilities.tolist(), strict=True), key=lambda pair: -pair[1])


def test_hugging_face_form_answers_every_class_by_probability_on_both_routes(topic_client, topic_classifier):
    assert topic_classifier.label_names == TOPICS
    texts = [SPORT, "Markets rally. Bank profit and investors lift the economy.", "New chip. The startup app network."]
    expected = [ranked(row) for row in topic_classifier.predict_proba(texts)]
    assert expected[0][0][0] == "sport" and expected[1][0][0] == "business" and expected[2][0][0] == "tech"
    for path in ("/", "/predict"):
        answer = topic_client.post(path, json={"inputs": SPORT})
        assert answer.status_code == 200
        (classes,) = answer.json()  # a single text is answered as a list holding one list
        assert [c["label"] for c in classes] == [label for label, _ in expected[0]]
        assert [c["score"] for c in classes] == pytest.approx([p for _, p in expected[0]], abs=1e-6)
        assert sum(c["score"] for c in classes) == pytest.approx(1, abs=1e-5)

    parameters = {"top_k": 2, "function_to_apply": "softmax"}
    top_two = topic_client.post("/", json={"inputs": texts, "parameters": parameters}).json()
    assert [[(c["label"], pytest.approx(c["score"], abs=1e-6)) for c in row] for row in top_two] == [
        row[:2] for row in expected
    ]
    everything = topic_client.post("/", json={"inputs": texts, "parameters": {"top_k": 9, "function_to_apply": None}})
    assert [len(row) for row in everything.json()] == [4, 4, 4]
    assert topic_client.post("/", json={"inputs": []}).json() == []


def test_hugging_face_form_refuses_bad_bodies_with_a_detail(topic_client):
    for body in (
        {"inputs": 3},
        {"inputs": ["ok", None]},
        {"inputs": "ok", "parameters": {"top_k": 0}},
        {"inputs": "ok", "parameters": {"temperature": 2}},
        {"inputs": "ok", "texts": ["ok"]},
    ):
        answer = topic_client.post("/", json=body)
        assert answer.status_code == 422, body
        assert answer.json()["detail"][0]["loc"][:2] == ["body", "InferenceRequest"], body
    too_many = topic_client.post("/", json={"inputs": ["goal"] * (MAX_TEXTS + 1)})
    assert too_many.status_code == 413
    assert too_many.json()["detail"] == f"too many texts: {MAX_TEXTS + 1} in one request; the limit is {MAX_TEXTS}"
    too_long = topic_client.post("/", json={"inputs": "x" * 2001})
    assert too_long.json()["detail"] == "text 0 has 2001 characters; the limit is 2000"
    huge = topic_client.post("/", json={"inputs": "y" * 100_000})  # refused by its size before it is read
    assert huge.status_code == 413 and huge.json()["detail"].startswith("request body larger than 97088 bytes")


def test_texts_form_answers_every_class_probability_on_request(topic_client, topic_classifier):
    texts = [SPORT, "Vote tonight. The minister and the party campaign for the election."]
    expected = topic_classifier.predict_proba(texts)
    plain = topic_client.post("/predict", json={"texts": texts}).json()["predictions"]
    assert [set(p) for p in plain] == [{"label", "score"}] * 2  # unchanged unless asked for
    full = topic_client.post("/predict", json={"texts": texts, "probabilities": True}).json()["predictions"]
    assert [p["label"] for p in full] == [p["label"] for p in plain] == ["sport", "politics"]
    for prediction, row in zip(full, expected, strict=True):
        assert list(prediction["probabilities"]) == TOPICS
        assert list(prediction["probabilities"].values()) == pytest.approx(row.tolist(), abs=1e-6)
        assert sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert prediction["score"] == prediction["probabilities"][prediction["label"]]
    assert topic_client.post("/predict", json={"texts": texts, "probabilities": "yes"}).status_code == 422


def test_the_default_text_limit_follows_the_runs_longest_training_text(topic_run, topic_classifier):
    summary = RunDir(topic_run).summary()
    data = pd.read_csv(FOUR_CLASS / "train.csv")
    validation = set(pd.read_csv(topic_run / "val_predictions.csv")["id"])
    train = data[~data["doc_id"].isin(validation)]
    assert len(train) == summary.rows["train"] == int(0.8 * len(data))
    assert summary.max_text_chars == (train["headline"].str.len() + 2 + train["body"].str.len()).max()
    assert summary.max_text_chars < 1000  # so the limit is the floor of 2000

    def limit(run_summary, **kwargs) -> int:
        with TestClient(create_app(topic_classifier, run_summary, ServeSettings(**kwargs))) as client:
            return client.get("/info").json()["limits"]["max_chars"]

    assert limit(summary) == 2000
    assert limit(summary.model_copy(update={"max_text_chars": None})) == 2000  # a run from before the field
    assert limit(summary, max_chars=500) == 500
    long_run = summary.model_copy(update={"max_text_chars": 1500})
    assert limit(long_run) == 3000
    with TestClient(create_app(topic_classifier, long_run)) as client:
        assert client.post("/", json={"inputs": "goal " * 600}).status_code == 200  # 3000 characters
        refused = client.post("/predict", json={"texts": ["g" * 3001]})
        assert (
            refused.status_code == 413 and refused.json()["detail"] == "text 0 has 3001 characters; the limit is 3000"
        )


def test_api_key_and_metrics_apply_to_the_hugging_face_form_on_both_routes(topic_run, topic_classifier):
    app = create_app(
        topic_classifier, RunDir(topic_run).summary(), ServeSettings(gather_seconds=0), api_key="s3cret-key"
    )
    good = {"Authorization": "Bearer s3cret-key"}
    with TestClient(app) as client:
        for path in ("/", "/predict"):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                refused = client.post(path, json={"inputs": SPORT}, headers=headers)
                assert refused.status_code == 401 and refused.json()["detail"].startswith("missing or wrong API key")
            assert client.post(path, json={"inputs": SPORT}, headers=good).json()[0][0]["label"] == "sport"
        exposition = client.get("/metrics", headers=good).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    for path in ("/", "/predict"):
        assert samples[("lorabench_requests_total", (("path", path), ("status", "401")))] == 2
        assert samples[("lorabench_requests_total", (("path", path), ("status", "200")))] == 1
    assert samples[("lorabench_texts_scored_total", ())] == 2


def test_huggingface_hub_inference_client_calls_a_served_run(topic_run, topic_classifier):
    """huggingface_hub's own client, pointed at the real server, parses its answers as a hub model's."""
    app = create_app(topic_classifier, RunDir(topic_run).summary(), api_key="s3cret-key")
    with serving(app) as (url, _):
        client = InferenceClient(base_url=url, api_key="s3cret-key", timeout=60)
        classes = client.text_classification(SPORT)
        assert sorted(c.label for c in classes) == TOPICS
        assert sum(c.score for c in classes) == pytest.approx(1, abs=1e-5)
        assert [c.score for c in classes] == sorted((c.score for c in classes), reverse=True)
        assert classes[0].label == "sport"
        assert [c.label for c in client.text_classification(SPORT, top_k=2)] == [c.label for c in classes[:2]]
        with pytest.raises(HfHubHTTPError) as refused:
            InferenceClient(base_url=url, api_key="wrong", timeout=60).text_classification(SPORT)
        assert refused.value.response.status_code == 401


def test_serve_flags_are_the_settings_fields_and_bad_values_are_refused_in_one_line(cli, topic_run):
    usage = cli("serve", "--help")
    assert usage.code == 0
    for name in ServeSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in usage.stdout, name
    for flags, message in (
        (
            ["--max-texts", "0"],
            "invalid serve setting value for 'max_texts': Input should be greater than or equal to 1",
        ),
        (["--port", "70000"], "invalid serve setting value for 'port': Input should be less than or equal to 65535"),
        (
            ["--max-texts", "8", "--max-queued-texts", "4"],
            "invalid serve setting value for 'max_queued_texts': 4 is less than max_texts (8): a full request would "
            "never fit",
        ),
        (
            ["--request-timeout", "0"],
            "invalid serve setting value for 'request_timeout': Input should be greater than 0",
        ),
    ):
        refused = cli("serve", "--run", topic_run, *flags)
        assert refused.code == 2 and refused.stderr.strip() == f"error: {message}", flags
