"""Everything that runs on Ray, in one module so that one local Ray (conftest's `local_ray`, started once per test
process) serves it all: `compare --backend ray` trains members at once with the sequential path's results and a
rerun skips finished members; `sweep --backend ray` runs trials in parallel and resumes an interrupted sweep;
`predict --backend ray` reads a file, a folder or a glob of shards with two model replicas and writes the local
path's output, naming a broken shard in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lorabench.core.errors import LorabenchError
from lorabench.core.settings import PredictBackend
from lorabench.core.storage import CHECKPOINT_DIR, RunDir
from lorabench.workflows.predict import predict_file
from lorabench.workflows.predict_ray import predict_on_ray
from lorabench.workflows.sweep import make_objective, sweep
from lorabench.workflows.sweep.ray_backend import RAY_DIR, SWEEP_FILE
from test_sweep import tiny_settings

pytestmark = pytest.mark.slow  # a local Ray and its worker processes


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: commands use a Ray their process already started (workflows.cluster.ray_session),
    so each test skips its start-up (15-20 s on 2 cores); stopped after the module, as its idle processes take CPU
    from the tests that follow on this worker."""
    ray = pytest.importorskip("ray")
    # Ray starts its workers at niceness 15: beside the suite's other test processes (niceness 0) they would get the
    # cores' leftovers, and this module would run on long after the others (6.5 minutes instead of 2.5).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_worker_niceness", "0")
        ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------------------------------------- compare

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


# --------------------------------------------------------------------------------------------------------- sweep


def test_ray_runs_two_trials_in_parallel(tiny_models, small_data, tmp_path, local_ray):
    pytest.importorskip("ray.tune")
    out = tmp_path / "sweep"
    result = sweep(tiny_settings(tiny_models, small_data, out, trials=2, epochs=2, backend="ray", cpus_per_trial=1))
    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["number"]) == [0, 1] and set(table["state"]) <= {"COMPLETE", "PRUNED"}
    starts = pd.to_datetime(table["started"])
    ends = pd.to_datetime(table["finished"])
    assert starts.max() < ends.min(), table[["number", "started", "finished"]]  # the two trials overlapped
    assert result["finished_trials"] == 2
    assert (out / "best.json").is_file() and (out / "optimization_history.png").is_file()
    best = json.loads((out / "best.json").read_text())
    assert best["value"] == pytest.approx(
        json.loads((out / "trials" / str(best["trial"]) / "summary.json").read_text())["val"]["f1"]
    )


def test_an_interrupted_ray_sweep_resumes_and_keeps_its_finished_trials(tiny_models, small_data, tmp_path, local_ray):
    """Trial 1 is interrupted after its first epoch's checkpoint (Tune stops on SIGUSR1 as on Ctrl-C), and blocks
    in its next report at the latest; running the sweep again keeps trial 0 and continues trial 1 from its
    checkpoint, each epoch trained once."""
    pytest.importorskip("ray.tune")
    out = tmp_path / "sweep"
    cpus = 0.75 * len(os.sched_getaffinity(0))  # over half the CPUs per trial: one at a time (on 2: one thread)
    # 4 epochs: after trial 1's first checkpoint, 3 more keep it running while Tune acts on the signal
    settings = tiny_settings(
        tiny_models, small_data, out, trials=2, epochs=4, backend="ray", cpus_per_trial=cpus, prune=False
    )
    first, second = out / "trials" / "0", out / "trials" / "1"

    def interrupt_after_the_second_trials_first_epoch():
        deadline = time.monotonic() + 300
        while not (second / CHECKPOINT_DIR).is_dir():
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=interrupt_after_the_second_trials_first_epoch, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        sweep(settings)
    assert (first / "summary.json").is_file() and not (second / "summary.json").exists()
    assert not (out / "trials.csv").exists()  # no report of a sweep half done
    first_finished = (first / "summary.json").stat().st_mtime_ns
    rows_before = RunDir(second).metrics()
    assert rows_before[0]["epoch"] == 1

    result = sweep(settings)
    table = pd.read_csv(out / "trials.csv")
    assert table["number"].tolist() == [0, 1] and table["state"].tolist() == ["COMPLETE", "COMPLETE"]
    assert result["finished_trials"] == 2 and (out / "best.json").is_file() and (out / "index.html").is_file()
    assert (first / "summary.json").stat().st_mtime_ns == first_finished  # kept, not trained again
    rows = RunDir(second).metrics()
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert rows[: len(rows_before)] == rows_before  # continued from its checkpoint, not trained again (times)
    summary = json.loads((second / "summary.json").read_text())
    assert table["value"].tolist()[1] == pytest.approx(max(row["val_f1"] for row in rows))
    assert summary["val"]["f1"] == pytest.approx(max(row["val_f1"] for row in rows))
    assert table["epochs_run"].tolist() == [4, 4] and table["seconds"].notna().all()  # times of both sessions


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"epochs": 3}, "holds a Ray sweep with other settings (train.epochs, trials)"),
        (None, "holds a Ray sweep that cannot be resumed"),
    ],
)
def test_a_ray_sweep_is_resumed_only_with_its_own_settings(tiny_models, small_data, tmp_path, stored, message):
    pytest.importorskip("ray.tune")
    out = tmp_path / "sweep"
    settings = tiny_settings(tiny_models, small_data, out, trials=2, backend="ray")
    (out / RAY_DIR).mkdir(parents=True)
    (out / RAY_DIR / "tuner.pkl").write_bytes(b"")  # what Tune checks before restoring
    if stored is not None:
        other = make_objective(settings.model_copy(update=stored))
        (out / SWEEP_FILE).write_text(json.dumps({**other.identity(), "trials": 3, "prune": True}))
    with pytest.raises(LorabenchError, match=re.escape(message)):
        sweep(settings)
    written_before = {RAY_DIR, SWEEP_FILE} if stored else {RAY_DIR}
    assert {path.name for path in out.iterdir()} == written_before and (out / RAY_DIR / "tuner.pkl").stat().st_size == 0


# ------------------------------------------------------------------------------------------------------- predict


TWO = PredictBackend(backend="ray", replicas=2)
ONE = PredictBackend(backend="ray", replicas=1)  # where the number of replicas is not the point: one process fewer


@pytest.fixture(scope="module")
def ray_setup(binary_data, tmp_path_factory, local_ray):
    """A tfidf run on the synthetic set, its texts as a 300-row file with zero-padded ids, and one local Ray."""
    from lorabench.api import resolve_config, train

    root = tmp_path_factory.mktemp("predict_ray")
    train(resolve_config("tfidf", overrides={"data": {"source": str(binary_data)}}), root / "run")
    rows = pd.read_csv(binary_data / "train.csv", dtype=str, keep_default_na=False, na_values=[""])
    rows = rows.drop(columns="target").assign(id=[f"{i:05d}" for i in range(len(rows))])  # 00007 stays text
    rows.loc[3, "text"] = None  # an empty text, counted alike
    rows.to_csv(root / "texts.csv", index=False)
    return root, rows


def _same_output(ray_out: Path, local_out: Path, key: str) -> None:
    on_ray = pd.read_csv(ray_out, dtype={key: str})
    local = pd.read_csv(local_out, dtype={key: str})
    assert list(on_ray.columns) == list(local.columns)
    assert on_ray[key].tolist() == local[key].tolist()
    for column in local.columns:
        if column == key or local[column].dtype == object:
            assert on_ray[column].tolist() == local[column].tolist(), column
        else:
            np.testing.assert_allclose(on_ray[column], local[column], atol=1e-6, rtol=0)


def test_two_replicas_give_the_local_output_of_a_csv(ray_setup, tmp_path):
    root, rows = ray_setup
    kwargs = {"probabilities": True, "chunk_rows": 32}  # several blocks, so both replicas score
    on_ray = predict_on_ray(root / "run", root / "texts.csv", tmp_path / "ray.csv", TWO, **kwargs)
    local = predict_file(root / "run", root / "texts.csv", tmp_path / "local.csv", **kwargs)
    _same_output(tmp_path / "ray.csv", tmp_path / "local.csv", "id")
    assert pd.read_csv(tmp_path / "ray.csv", dtype=str)["id"].tolist() == rows["id"].tolist()
    assert {**on_ray, "out": None} == {**local, "out": None} and on_ray["empty_texts"] == 1


def test_a_folder_of_parquet_shards_without_ids_is_numbered_as_one_file(ray_setup, tmp_path):
    root, rows = ray_setup
    texts = rows.drop(columns="id")
    (tmp_path / "shards").mkdir()
    for index, start in enumerate(range(0, len(texts), 110)):  # 3 shards, in name order
        texts.iloc[start : start + 110].to_parquet(tmp_path / "shards" / f"part-{index:05d}.parquet", index=False)
    (tmp_path / "shards" / "_SUCCESS").touch()  # what Spark leaves beside its shards
    texts.to_parquet(tmp_path / "whole.parquet", index=False)
    predict_on_ray(root / "run", tmp_path / "shards", tmp_path / "ray.jsonl", ONE, chunk_rows=40)
    predict_file(root / "run", tmp_path / "whole.parquet", tmp_path / "local.jsonl")
    on_ray = pd.read_json(tmp_path / "ray.jsonl", lines=True)
    local = pd.read_json(tmp_path / "local.jsonl", lines=True)
    assert on_ray["row"].tolist() == list(range(len(texts))) == local["row"].tolist()
    assert on_ray["target"].tolist() == local["target"].tolist()
    np.testing.assert_allclose(on_ray["score"], local["score"], atol=1e-6, rtol=0)


def test_cli_submission_from_a_glob_of_csv_shards_is_one_file(ray_setup, cli, tmp_path):
    root, rows = ray_setup
    for index, start in enumerate(range(0, len(rows), 150)):
        rows.iloc[start : start + 150].to_csv(tmp_path / f"shard-{index}.csv", index=False)
    on_ray = tmp_path / "out" / "sub.csv"
    result = cli("predict", "--run", root / "run", "--data", tmp_path / "shard-*.csv", "--out", on_ray,
                 "--submission", "--backend", "ray", "--replicas", "1")  # fmt: skip
    assert result.code == 0, result.stderr
    predict_file(root / "run", root / "texts.csv", tmp_path / "local.csv", submission=True)
    assert on_ray.read_text() == (tmp_path / "local.csv").read_text()  # exactly Kaggle's id,target, in order


def test_a_broken_shard_is_named_in_one_line_and_nothing_is_written(ray_setup, tmp_path):
    root, rows = ray_setup
    (tmp_path / "shards").mkdir()
    rows.head(100).to_csv(tmp_path / "shards" / "a.csv", index=False)
    rows.head(100).drop(columns="text").to_csv(tmp_path / "shards" / "b.csv", index=False)  # read, not scored
    out = tmp_path / "scores.csv"
    with pytest.raises(LorabenchError) as failure:
        predict_on_ray(root / "run", tmp_path / "shards", out, ONE)
    message = str(failure.value)
    assert "b.csv" in message and "text" in message and "\n" not in message
    assert not out.exists() and not list(tmp_path.glob(".scores.csv.*"))

    (tmp_path / "shards" / "b.csv").unlink()
    (tmp_path / "shards" / "c.parquet").write_bytes(b"PAR1 not parquet")  # refused before Ray starts work
    with pytest.raises(LorabenchError, match=r"c\.parquet"):
        predict_on_ray(root / "run", tmp_path / "shards", out, ONE)
    assert not out.exists()


def test_a_run_the_replicas_cannot_load_is_named_not_retried(ray_setup, tmp_path):
    """A replica's constructor that raises would make Ray restart it forever: the error comes with its first block."""
    from lorabench.models.tfidf import TfidfClassifier

    root, _ = ray_setup
    shutil.copytree(root / "run", tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / TfidfClassifier.model_dir)
    with pytest.raises(LorabenchError, match="cannot load the tfidf model") as failure:
        predict_on_ray(tmp_path / "run", root / "texts.csv", tmp_path / "scores.csv", ONE)
    assert "\n" not in str(failure.value) and not (tmp_path / "scores.csv").exists()


def test_local_backend_refuses_the_ray_settings(cli, tmp_path):
    result = cli("predict", "--run", tmp_path, "--data", tmp_path / "x.csv", "--out", tmp_path / "o.csv",
                 "--replicas", "3")  # fmt: skip
    assert result.code == 2 and "--replicas apply to --backend ray" in result.stderr
