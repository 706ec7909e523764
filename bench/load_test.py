"""Load test (not a test of the suite): `lorabench serve` under concurrent clients, good and bad requests mixed.

Starts `lorabench serve --run RUN` in a subprocess on 127.0.0.1 (a free port; never another host), optionally
with an API key, then sends `--requests` requests from `--clients` concurrent httpx clients, about `--bad-share`
of them bad: malformed JSON, wrongly typed texts (`[1, 2]`), too many texts, a text too long, and (with
`--api-key`) no key. Prints how many good requests failed (must be 0), how each kind of bad request was answered
(must be 4xx), latency p50/p95/p99 of good requests and texts/s; exits 1 when a good request failed, a bad one
was not refused with 4xx, or the time bound (`--max-seconds`) cut the run short.

  PYTHONPATH=src python bench/load_test.py --run /tmp/tfidf-run --api-key
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TWEETS = ROOT.parent / "shared" / "data" / "disaster_tweets" / "test.csv"
KEY_VARIABLE = "LORABENCH_LOAD_TEST_KEY"
MAX_TEXTS, MAX_CHARS = 16, 500
BAD_KINDS = ("malformed_json", "wrong_type", "too_many_texts", "text_too_long")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished run directory (train one with --model tfidf)")
    parser.add_argument("--texts", default=str(TWEETS), help="CSV whose `text` column the good requests draw from")
    parser.add_argument("--requests", type=int, default=1200, help="requests in all (bounded: at most 20000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--bad-share", type=float, default=0.15, help="share of bad requests")
    parser.add_argument("--api-key", action="store_true", help="serve with a random API key; unkeyed requests too")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop sending after this long")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.requests <= 20000 or not 1 <= args.clients <= 256 or not 0 <= args.bad_share < 1:
        parser.error("--requests 1..20000, --clients 1..256, --bad-share in [0, 1)")
    return args


def plan_requests(texts: list[str], args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(kind, httpx keyword arguments) per request, in a seeded order; kind 'good' or one of the bad kinds."""
    rng = random.Random(args.seed)
    bad_kinds = BAD_KINDS + (("no_key",) if args.api_key else ())
    plan = []
    for _ in range(args.requests):
        kind = rng.choice(bad_kinds) if rng.random() < args.bad_share else "good"
        chosen = rng.sample(texts, rng.randint(1, MAX_TEXTS))
        body = {
            "good": {"json": {"texts": chosen}},
            "no_key": {"json": {"texts": chosen}},
            "malformed_json": {"content": b'{"texts": ["unterminated', "headers": {"content-type": "application/json"}},
            "wrong_type": {"json": {"texts": [1, 2]}},
            "too_many_texts": {"json": {"texts": [chosen[0]] * (MAX_TEXTS + 1)}},
            "text_too_long": {"json": {"texts": ["x" * (MAX_CHARS + 1)]}},
        }[kind]
        plan.append((kind, body))
    return plan


def start_server(run: str, api_key: str | None, log) -> tuple[subprocess.Popen, str]:
    """`lorabench serve` on a free loopback port; returns the process and its base URL once /health answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "lorabench.cli", "--quiet", "serve", "--run", run, "--host", "127.0.0.1",
               "--port", str(port), "--max-texts", str(MAX_TEXTS), "--max-chars", str(MAX_CHARS)]  # fmt: skip
    env = dict(os.environ)
    if api_key:
        command += ["--api-key-env", KEY_VARIABLE]
        env[KEY_VARIABLE] = api_key
    process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"lorabench serve did not start; its log:\n{Path(log.name).read_text()[-3000:]}")


async def send_all(url: str, plan: list, api_key: str | None, clients: int, max_seconds: float) -> list[dict]:
    """Send the planned requests from `clients` concurrent clients; one outcome per request sent."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    pending = iter(plan)
    outcomes: list[dict] = []
    deadline = time.monotonic() + max_seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        for kind, arguments in pending:  # the shared iterator hands each request to exactly one client
            if time.monotonic() > deadline:
                return
            sent_headers = {**(headers if kind != "no_key" else {}), **arguments.get("headers", {})}
            started = time.perf_counter()
            try:
                answer = await client.post("/predict", **{**arguments, "headers": sent_headers})
                status, body = answer.status_code, answer.json()
            except (httpx.HTTPError, ValueError) as err:
                status, body = f"error: {type(err).__name__}", None
            outcome = {"kind": kind, "status": status, "seconds": time.perf_counter() - started}
            if kind == "good":
                texts = len(arguments["json"]["texts"])
                outcome["ok"] = status == 200 and len(body["predictions"]) == texts
                outcome["texts"] = texts
            outcomes.append(outcome)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return outcomes


def report(outcomes: list[dict], planned: int, seconds: float, health: dict) -> bool:
    """Print the figures; True when every good request succeeded and every bad one was refused with 4xx."""
    good = [o for o in outcomes if o["kind"] == "good"]
    failed_good = [o for o in good if not o["ok"]]
    bad = [o for o in outcomes if o["kind"] != "good"]
    not_refused = [o for o in bad if not (isinstance(o["status"], int) and 400 <= o["status"] < 500)]
    latencies = np.array([o["seconds"] for o in good if o["ok"]]) * 1000
    texts = sum(o["texts"] for o in good if o["ok"])
    print(f"requests sent: {len(outcomes)} of {planned} in {seconds:.1f} s ({len(outcomes) / seconds:.0f}/s)")
    failures = ", ".join(f"{s} x{n}" for s, n in Counter(o["status"] for o in failed_good).items())
    print(f"good requests: {len(good)}, with errors: {len(failed_good)}" + (f" ({failures})" if failures else ""))
    print(f"bad requests: {len(bad)}, not refused with 4xx: {len(not_refused)}")
    for kind, statuses in sorted(_statuses_by_kind(bad).items()):
        print(f"  {kind}: {sum(statuses.values())} -> " + ", ".join(f"{s} x{n}" for s, n in sorted(statuses.items())))
    if len(latencies):
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        print(f"good latency ms: p50 {p50:.1f}, p95 {p95:.1f}, p99 {p99:.1f}, max {latencies.max():.1f}")
    print(f"texts scored: {texts} ({texts / seconds:.0f} texts/s)")
    if health.get("batches"):
        print(f"server: {health['requests']} requests in {health['batches']} model calls "
              f"({health['texts'] / health['batches']:.1f} texts per call)")  # fmt: skip
    return not failed_good and not not_refused and len(outcomes) == planned


def _statuses_by_kind(outcomes: list[dict]) -> dict[str, Counter]:
    by_kind: dict[str, Counter] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome["kind"], Counter())[outcome["status"]] += 1
    return by_kind


def main() -> int:
    args = parse_args()
    texts = pd.read_csv(args.texts)["text"].dropna().astype(str).str.slice(0, MAX_CHARS).tolist()
    plan = plan_requests(texts, args)
    api_key = secrets.token_urlsafe(24) if args.api_key else None
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        process, url = start_server(args.run, api_key, log)
        try:
            started = time.perf_counter()
            outcomes = asyncio.run(send_all(url, plan, api_key, args.clients, args.max_seconds))
            seconds = time.perf_counter() - started
            health = httpx.get(f"{url}/health").json()
        finally:
            process.send_signal(signal.SIGTERM)  # the graceful path: in-flight requests finish first
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    print(f"command: lorabench serve --run {args.run} on {url}, {args.clients} clients, api key: {bool(api_key)}")
    return 0 if report(outcomes, len(plan), seconds, health) else 1


if __name__ == "__main__":
    sys.exit(main())
