"""`compare --backend ray`: members train as Ray tasks at once on a local Ray, with the sequential path's results,
and a rerun skips the members that finished."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # a local Ray and its worker processes

DATA = Path(__file__).parent / "data" / "binary"
RESULT_COLUMNS = ["model", "status", "val_f1", "val_accuracy", "val_f1_low", "val_f1_high"]


@pytest.fixture(scope="module")
def ray_comparison(tiny_bert, tmp_path_factory, local_ray):
    """tfidf and a tiny BERT probe (both deterministic) compared on Ray, and the same comparison run sequentially."""
    from lorabench.api import compare
    from lorabench.core.settings import CompareBackend

    root = tmp_path_factory.mktemp("compare_ray")
    members = ["tfidf", f"{tiny_bert}:probe"]
    # Two idle worker processes with the training stack imported, as a fresh Ray starts with (it prestarts one per
    # CPU): after other tests used the session's Ray, the second member could wait for a new process to import
    # torch while tfidf trains in a second. The tasks overlap (a second's sleep), so they take two processes.
    warm_up = local_ray.remote(num_cpus=1)(lambda: __import__("lorabench.training.run") and __import__("time").sleep(1))
    local_ray.get([warm_up.remote() for _ in range(2)])
    deadline = time.monotonic() + 60  # and both CPUs free: earlier tests' actors hand theirs back asynchronously
    while local_ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    on_ray = compare(members, root / "ray", data=str(DATA), backend=CompareBackend(backend="ray"))
    sequential = compare(members, root / "local", data=str(DATA))
    return root, on_ray, sequential


def _windows(out: Path) -> dict[str, tuple[float, float]]:
    record = json.loads((out / "compare.json").read_text())
    return {entry["name"]: (entry["seeds"][0]["started"], entry["seeds"][0]["ended"]) for entry in record["models"]}


def test_members_train_at_the_same_time_on_ray(ray_comparison):
    root, on_ray, _ = ray_comparison
    windows = _windows(root / "ray")
    assert len(windows) == 2 and all(start and end for start, end in windows.values())
    assert max(start for start, _ in windows.values()) < min(end for _, end in windows.values())  # they overlap
    assert (on_ray["status"] == "ok").all()


def test_ray_gives_the_sequential_results(ray_comparison):
    _, on_ray, sequential = ray_comparison
    pd.testing.assert_frame_equal(
        on_ray[RESULT_COLUMNS].reset_index(drop=True), sequential[RESULT_COLUMNS].reset_index(drop=True)
    )


def test_a_rerun_on_ray_trains_only_the_unfinished_member(ray_comparison, tiny_bert, tmp_path):
    from lorabench.api import compare
    from lorabench.core.settings import CompareBackend

    root, on_ray, _ = ray_comparison
    out = tmp_path / "again"
    shutil.copytree(root / "ray", out)
    record = json.loads((out / "compare.json").read_text())
    probe = next(entry for entry in record["models"] if entry["name"] != "tfidf")
    probe["status"], probe["seeds"][0]["status"] = "pending", "pending"  # as if interrupted before it finished
    shutil.rmtree(out / probe["run_dir"])
    (out / "compare.json").write_text(json.dumps(record))
    before = _windows(out)
    again = compare(["tfidf", f"{tiny_bert}:probe"], out, data=str(DATA), backend=CompareBackend(backend="ray"))
    after = _windows(out)
    assert after["tfidf"] == before["tfidf"]  # kept, not trained again
    assert after[probe["name"]][0] > before[probe["name"]][1]
    pd.testing.assert_frame_equal(again[RESULT_COLUMNS], on_ray[RESULT_COLUMNS])
