"""`predict` throughput: one process (the local path) against Ray with N model replicas, on a file of ROWS tweets
built from the disaster tweets' train.csv (rows repeated with new ids, in a temporary folder, never the repository).

Both write the same output: the script checks ids, labels and scores (1e-6) before it reports. Ray's time is given
with and without starting Ray (a cluster at $RAY_ADDRESS is already up); it includes starting the replicas and
loading the run in each.

    python bench/predict_throughput.py --rows 100000 --replicas 2 [--run RUN] [--record bench/results/NAME.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TWEETS = ROOT.parent / "shared" / "data" / "disaster_tweets"


def build_file(rows: int, folder: Path) -> Path:
    """ROWS tweets: train.csv's rows (without the label) repeated, ids 0..ROWS-1."""
    tweets = pd.read_csv(TWEETS / "train.csv", dtype=str, keep_default_na=False, na_values=[""]).drop(columns="target")
    repeated = pd.concat([tweets] * (rows // len(tweets) + 1), ignore_index=True).head(rows)
    path = folder / f"tweets_{rows}.csv"
    repeated.assign(id=np.arange(rows)).to_csv(path, index=False)
    return path


def timed_scorer(scorer: type, folder: Path) -> type:
    """The replica class, each call's start and end (Unix time) and rows appended to a file per replica, to see
    the span in which the replicas scored, apart from starting Ray Data and the replicas."""

    class Timed(scorer):
        def __call__(self, batch):
            started = time.time()
            scored = super().__call__(batch)
            with (folder / f"calls-{os.getpid()}.txt").open("a") as handle:
                handle.write(f"{started} {time.time()} {len(batch)}\n")
            return scored

    return Timed


def scoring_span(folder: Path) -> tuple[float, int]:
    """(seconds from the first replica call's start to the last one's end, replicas that scored)."""
    files = sorted(folder.glob("calls-*.txt"))
    calls = np.array(
        [[float(value) for value in line.split()] for path in files for line in path.read_text().split("\n") if line]
    )
    return float(calls[:, 1].max() - calls[:, 0].min()), len(files)


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    return f"{len(os.sched_getaffinity(0))} CPU cores ({model}), load average {os.getloadavg()[0]:.1f} at the start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--run", type=Path, help="a finished run (default: train tfidf on the tweets first)")
    parser.add_argument("--record", type=Path, help="write the measurement record here")
    args = parser.parse_args()

    import ray

    from lorabench import __version__
    from lorabench.api import predict_file, predict_on_ray, resolve_config, train
    from lorabench.core.console import set_progress
    from lorabench.core.settings import PredictBackend
    from lorabench.core.storage import RunDir
    from lorabench.workflows import predict_ray
    from lorabench.workflows.cluster import start_ray

    set_progress(False)
    facts = {"machine": machine()}
    folder = Path(tempfile.mkdtemp(prefix="predict-throughput-"))
    data = build_file(args.rows, folder)
    run = args.run
    if run is None:
        run = folder / "tfidf"
        started = time.perf_counter()
        train(resolve_config("tfidf", overrides={"data": {"source": str(TWEETS)}}), run)
        print(f"trained tfidf in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    summary = RunDir(run).summary()
    kind = summary.model or summary.kind

    started = time.perf_counter()
    predict_file(run, data, folder / "local.csv")
    local = time.perf_counter() - started
    print(f"local: {local:.1f} s", file=sys.stderr)

    predict_ray._Scorer = timed_scorer(predict_ray._Scorer, folder)  # a bench's probe: the same scoring, timed
    started = time.perf_counter()
    start_ray()
    ray_start = time.perf_counter() - started
    started = time.perf_counter()
    predict_on_ray(run, data, folder / "ray.csv", PredictBackend(backend="ray", replicas=args.replicas))
    on_ray = time.perf_counter() - started
    ray.shutdown()
    span, replicas_used = scoring_span(folder)
    print(f"ray: start {ray_start:.1f} s, predict {on_ray:.1f} s", file=sys.stderr)

    a, b = pd.read_csv(folder / "local.csv", dtype={"id": str}), pd.read_csv(folder / "ray.csv", dtype={"id": str})
    assert a["id"].tolist() == b["id"].tolist() and a["target"].tolist() == b["target"].tolist()
    gap = float(np.abs(a["score"] - b["score"]).max())
    assert gap <= 1e-6, gap

    def row(path: str, seconds: float) -> dict:
        return {"path": path, "rows": args.rows, "seconds": round(seconds, 1), "rows/s": round(args.rows / seconds)}

    figures = [
        row("local: one process", local),
        row(f"ray: {args.replicas} replicas, Ray already up", on_ray),
        row(f"ray: {args.replicas} replicas, with starting a local Ray", ray_start + on_ray),
        row(
            f"ray: the span in which the {replicas_used} replicas scored (first call's start to last call's end)", span
        ),
    ]
    for figure in figures:
        print(json.dumps(figure))
    record = {
        "title": f"predict throughput: one process against {args.replicas} Ray replicas, {kind}, {args.rows:,} tweets",
        "date": date.today().isoformat(),
        **facts,
        "versions": {
            "python": platform.python_version(),
            "lorabench": __version__,
            "ray": ray.__version__,
            "pandas": pd.__version__,
        },  # fmt: skip
        "command": [
            f"python bench/predict_throughput.py --rows {args.rows} --replicas {args.replicas}"
            + (f" --run {args.run}" if args.run else ""),
            f"lorabench predict --run RUN --data tweets_{args.rows}.csv --out scores.csv --backend ray "
            f"--replicas {args.replicas}",
        ],
        "figures": figures,
        "notes": f"The {kind} run scored train.csv's 7613 tweets repeated to {args.rows:,} rows (one CSV file); "
        f"both paths wrote the same ids and labels, scores equal to {gap:.1e}. Of Ray's {on_ray:.1f} s, the "
        f"replicas scored for {span:.1f} s ({args.rows / span:.0f} rows/s together); the other "
        f"{on_ray - span:.1f} s went to starting Ray Data's tasks and the replicas (each imports the model stack "
        "and loads the run once), reading the first block and writing the last. On this machine the replicas, the "
        "reading task and the driver writing the output share the same 2 cores.",
        "source": "bench/predict_throughput.py",
    }
    if args.record:
        args.record.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
