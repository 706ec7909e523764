"""`--tracking mlflow,tensorboard`: what the trackers hold, read back with each library's own reader, is what the run
record says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from lorabench.core.config import TrainSettings
from lorabench.workflows.export import export_run
from lorabench.workflows.sweep import SweepSettings, sweep


@pytest.fixture
def local_mlflow(monkeypatch):
    """No MLFLOW_TRACKING_URI from the environment: the run directory's own file store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _epoch_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _mlflow_run(run: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient((run / "mlruns").resolve().as_uri())
    [found] = client.search_runs([client.get_experiment_by_name("lorabench").experiment_id])
    return client, found


def _tensorboard_scalars(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return events


def _check_tracked(run: Path, epochs: int) -> None:
    rows, summary = _epoch_rows(run), json.loads((run / "summary.json").read_text())
    assert [row["epoch"] for row in rows] == list(range(1, epochs + 1))
    client, tracked = _mlflow_run(run)
    history = client.get_metric_history(tracked.info.run_id, "val_f1")
    assert [(m.step, m.value) for m in history] == [(row["epoch"], row["val_f1"]) for row in rows]
    assert tracked.data.params["train.seed"] == "0" and tracked.data.params["model.name"] == summary["model"]
    assert tracked.data.metrics["summary.val.f1"] == summary["val"]["f1"]
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == run.name

    events = _tensorboard_scalars(run)
    scalars = events.Scalars("val_f1")
    assert [event.step for event in scalars] == [row["epoch"] for row in rows]
    assert [event.value for event in scalars] == pytest.approx([row["val_f1"] for row in rows], rel=1e-6)
    assert events.Scalars("summary.val.f1")[0].value == pytest.approx(summary["val"]["f1"], rel=1e-6)


def test_lora_run_tracks_each_epoch_in_mlflow_and_tensorboard(cli, tiny_models, small_data, tmp_path, local_mlflow):
    run = tmp_path / "run"
    done = cli(
        "--quiet", "train", "--model", tiny_models["roberta"], "--data", small_data, "--out", run,
        "--epochs", 2, "--batch-size", 16, "--lr", "1e-3", "--max-length", 48,
        "--tracking", "mlflow,tensorboard",
    )  # fmt: skip
    assert done.code == 0, done.stderr
    _check_tracked(run, epochs=2)

    exported = export_run(run, tmp_path / "export")
    assert not {"mlruns", "tensorboard"} & {Path(name).parts[0] for name in exported["files"]}
    assert not (tmp_path / "export" / "mlruns").exists() and not (tmp_path / "export" / "tensorboard").exists()


def test_tfidf_run_tracks_its_single_fit(cli, small_data, tmp_path, local_mlflow):
    run = tmp_path / "run"
    done = cli(
        "--quiet", "train", "--model", "tfidf", "--data", small_data, "--out", run, "--tracking", "tensorboard,mlflow"
    )
    assert done.code == 0, done.stderr
    _check_tracked(run, epochs=1)


def test_each_sweep_trial_is_one_tracked_run(tiny_models, small_data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  lr: {values: [1.0e-3, 1.0e-2]}\n  max_length: {value: 48}\n"
                     "  batch_size: {value: 16}\n  train.tracking: {value: tensorboard}\n")  # fmt: skip
    out = tmp_path / "sweep"
    sweep(
        SweepSettings(model=str(tiny_models["roberta"]), data=str(small_data), out=out, space=space, trials=2, epochs=1)
    )
    for trial in ("0", "1"):
        run = out / "trials" / trial
        [row] = _epoch_rows(run)
        [logged] = _tensorboard_scalars(run).Scalars("val_f1")
        assert logged.step == 1 and logged.value == pytest.approx(row["val_f1"], rel=1e-6)


def test_tracking_setting_reads_one_name_a_comma_list_or_a_list():
    assert TrainSettings().tracking == ["local"]
    assert TrainSettings(tracking="local").tracking == ["local"]  # configs written before the list
    assert TrainSettings(tracking="mlflow, tensorboard,mlflow").tracking == ["mlflow", "tensorboard"]
    assert TrainSettings(tracking=["wandb"]).tracking == ["wandb"]
    for wrong in ("mlfow", "none,mlflow", ""):
        with pytest.raises(ValidationError):
            TrainSettings(tracking=wrong)
