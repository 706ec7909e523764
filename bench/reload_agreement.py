"""Do saved runs answer as they did when trained? A benchmark (not a test) on a labelled set of the user's own.

`lorabench compare` trains tfidf and minilm (and their ensemble) on DATA/train.csv and scores DATA/test.csv; then,
for every run, `lorabench predict` on the saved run and `lorabench serve` (POST /predict) are asked about the same
test rows, and their labels and scores are set against the run's own test_predictions.csv. With a file of held-back
labels (--labels, id and label columns) each path's test accuracy is printed too. Every step is the CLI in its own
process, as a user runs it.

  python bench/reload_agreement.py --data /path/to/news --id-column article_id --text-column body \\
      --label-column category --labels /path/to/news/test_labels.csv --record bench/results/reload_agreement_news.json
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
import pandas as pd

LORABENCH = Path(sys.executable).with_name("lorabench")


def cli(*args: str) -> None:
    done = subprocess.run([str(LORABENCH), "-q", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"lorabench {' '.join(args[:1])} failed:\n{done.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served(run: Path, texts: list[str], batch: int = 32) -> list[str]:
    """The labels `lorabench serve` answers for `texts`, asked in batches over HTTP."""
    port = free_port()
    server = subprocess.Popen([str(LORABENCH), "-q", "serve", "--run", str(run), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"serve {run} did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(1)
        labels = []
        for start in range(0, len(texts), batch):
            answer = httpx.post(f"{url}/predict", json={"texts": texts[start : start + batch]}, timeout=300)
            answer.raise_for_status()
            labels += [str(item["label"]) for item in answer.json()["predictions"]]
        return labels
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="a directory with train.csv and test.csv")
    parser.add_argument("--models", default="tfidf,minilm")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="target")
    parser.add_argument("--labels", type=Path, help="held-back test labels: the id and label columns")
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--record", type=Path, help="write the figures as a bench/results record")
    parser.add_argument("--compare-out", type=Path, help="an earlier comparison of this script to check again")
    args = parser.parse_args()
    columns = ["--id-column", args.id_column, "--text-column", args.text_column, "--label-column", args.label_column]
    out = args.compare_out or Path(tempfile.mkdtemp(prefix="reload-agreement-")) / "compare"
    if args.compare_out is None:
        started = time.perf_counter()
        cli("compare", "--models", args.models, "--data", str(args.data), "--epochs", args.epochs, "--ensemble",
            "--out", str(out), *columns)  # fmt: skip
        print(f"compare: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    test = pd.read_csv(args.data / "test.csv", dtype={args.id_column: str})
    truth = None
    if args.labels:
        held = pd.read_csv(args.labels, dtype={args.id_column: str})
        truth = test[[args.id_column]].merge(held, on=args.id_column, how="left")[args.label_column].astype(str)
    rows = []
    for run in sorted(path for path in (out / "runs").iterdir() if (path / "summary.json").is_file()):
        # the run's own file: its ids as `id`, its labels as `prediction`, a prob_<class> column per class
        trained = pd.read_csv(run / "test_predictions.csv", dtype={"id": str})
        predicted_file = out / f"predict_{run.name}.csv"
        cli("predict", "--run", str(run), "--data", str(args.data / "test.csv"), "--out", str(predicted_file),
            "--probabilities")  # fmt: skip
        predicted = pd.read_csv(predicted_file, dtype={args.id_column: str})
        answered = served(run, test[args.text_column].fillna("").astype(str).tolist())
        same_ids = predicted[args.id_column].tolist() == trained["id"].tolist()
        at_training = trained["prediction"].astype(str)
        probabilities = [name for name in trained.columns if name.startswith("prob_")]
        row = {
            "run": run.name,
            "test rows": len(trained),
            "predict = training-time labels": f"{(predicted[args.label_column].astype(str) == at_training).sum()}"
            f"/{len(trained)}" + ("" if same_ids else " (ids differ)"),
            "max |probability difference|": float(
                (predicted[probabilities] - trained[probabilities]).abs().max().max()
            ),
            "serve = training-time labels": f"{(pd.Series(answered) == at_training).sum()}/{len(trained)}",
            "classes predicted": int(at_training.nunique()),
        }
        if truth is not None:
            row["test accuracy (held-back labels)"] = round(float((at_training == truth).mean()), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.record:
        record = {
            "title": f"Saved runs answer as trained: predict and serve against each run's own test predictions "
            f"({args.data.name}, {args.label_column})",
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPU cores",
            "versions": {"python": platform.python_version()},
            "command": " ".join(["python bench/reload_agreement.py", *sys.argv[1:]]),
            "figures": rows,
        }
        args.record.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
