"""Process faults that lose nothing: a second writer is refused, SIGTERM stops like Ctrl-C, damaged records are
named, a full disk keeps the last checkpoint, and an untrusted run directory is refused before it is loaded.

Every command that fails here must say so in one `error:` line, and what the first (or the interrupted) command
wrote must still finish, or resume to the result of an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import forked
from conftest import SYNTHETIC
from lorabench.core.errors import LorabenchError
from lorabench.core.storage import CHECKPOINT_DIR, LOCK_FILE, METRICS_FILE, DiskFull, RunDir, writing

BINARY = SYNTHETIC / "binary"
# 320 training rows in batches of 16 rows (batch_tokens 0: a known number of steps): 20 steps per epoch; with
# --save-every-steps 5 the first checkpoint falls after step 5.
FLAGS = ["--epochs", "2", "--batch-size", "16", "--lr", "0.001", "--max-length", "48", "--seed", "3",
         "--lora-dropout", "0.3", "--set", "train.batch_tokens=0", "--save-every-steps", "5"]  # fmt: skip
# `lorabench` that stops at its HOLD_AT_LOSS-th loss call, writes HOLD_MARKER and waits (at most 2 minutes) for
# HOLD_MARKER.go: the test acts on a process known to be mid-epoch, without guessing with sleeps.
HOLD_AT_LOSS = """
import os, sys, time
from pathlib import Path
import torch
from lorabench.cli import main

hold_at, marker, calls = int(os.environ["HOLD_AT_LOSS"]), Path(os.environ["HOLD_MARKER"]), [0]
forward = torch.nn.CrossEntropyLoss.forward

def held(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == hold_at:
        marker.write_text("held")
        deadline = time.monotonic() + 120
        while not marker.with_suffix(".go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return forward(self, *args, **kwargs)

torch.nn.CrossEntropyLoss.forward = held
sys.argv = ["lorabench", *sys.argv[1:]]
main()
"""


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **extra}


def lorabench(*args) -> subprocess.CompletedProcess:
    """`lorabench -q ARGS` in a fresh process (forked: tests/forked.py)."""
    return forked.run([sys.executable, "-m", "lorabench.cli", "-q", *map(str, args)], _env())


def held_lorabench(marker: Path, hold_at_loss: int, *args) -> forked.Forked:
    """`lorabench -q ARGS` started in the background; returns once it holds at the loss call (or has ended)."""
    env = _env(HOLD_AT_LOSS=str(hold_at_loss), HOLD_MARKER=str(marker))
    command = [sys.executable, "-c", HOLD_AT_LOSS, "-q", *map(str, args)]
    process = forked.Forked(command, env)
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), process.communicate(timeout=60)[1]
    return process


def outcome(run_dir: Path) -> dict:
    """What must match between runs: summary metrics, per-epoch metrics (less wall time), predictions."""
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [{k: v for k, v in row.items() if k != "seconds"} for row in RunDir(run_dir).metrics()]
    return {
        "summary": {k: summary[k] for k in ("val", "test", "best_epoch", "threshold")},
        "metrics": metrics,
        "val_predictions": (run_dir / "val_predictions.csv").read_text(),
    }


def train_command(model: Path, out: Path) -> list:
    return ["train", "--model", model, "--data", BINARY, "--out", out, *FLAGS]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_models) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = lorabench(*train_command(tiny_models["roberta"], out))
    assert done.returncode == 0, done.stderr
    return outcome(out)


# 1. writers never collide


def test_a_locked_directory_refuses_a_second_writer_and_is_left_clean(tmp_path):
    out = tmp_path / "new" / "run"
    with writing(out):
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        assert RunDir(out).check(None, resume=False) is False  # the lock alone is no content
        with pytest.raises(LorabenchError, match=f"^{out} is being written by process {os.getpid()}; "), writing(out):
            pass
    assert not out.exists()  # created for the block, removed again as it is left empty
    (tmp_path / "kept").mkdir()
    with writing(tmp_path / "kept"):
        (tmp_path / "kept" / "file").write_text("x")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["file"]


@pytest.mark.slow
def test_two_trains_into_one_out_the_second_is_refused_and_the_first_completes(tmp_path, tiny_models, cli):
    out, marker = tmp_path / "run", tmp_path / "held"
    first = held_lorabench(marker, 1, *train_command(tiny_models["roberta"], out))
    second = cli("train", "--model", "tfidf", "--data", BINARY, "--out", out)
    assert second.code == 2
    assert second.stderr.strip().splitlines() == [
        f"error: {out} is being written by process {first.pid}; wait for it to finish or choose another --out"
    ]
    marker.with_suffix(".go").touch()
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert [row["epoch"] for row in RunDir(out).metrics()] == [1, 2]
    assert RunDir(out).summary().best_epoch in (1, 2) and not (out / LOCK_FILE).exists()


def test_a_second_compare_into_one_out_is_refused(tmp_path, cli):
    out = tmp_path / "cmp"
    with writing(out):
        refused = cli("compare", "--models", "tfidf", "--data", BINARY, "--out", out)
    assert refused.code == 2 and refused.stderr.strip().splitlines() == [
        f"error: {out} is being written by process {os.getpid()}; wait for it to finish or choose another --out"
    ]


def test_a_second_sweep_into_one_out_is_refused(tmp_path, tiny_models, cli):
    out = tmp_path / "sweep"
    with writing(out):
        refused = cli("sweep", "--model", tiny_models["roberta"], "--data", BINARY, "--out", out, "--trials", "1")
    assert refused.code == 2 and refused.stderr.strip().splitlines() == [
        f"error: {out} is being written by process {os.getpid()}; wait for it to finish or choose another --out"
    ]
    assert not out.exists()


# 2. SIGTERM = Ctrl-C


@pytest.mark.slow
def test_sigterm_mid_epoch_exits_143_and_resume_ends_as_an_uninterrupted_run(uninterrupted, tiny_models, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "held"
    process = held_lorabench(marker, 8, *train_command(tiny_models["roberta"], out))  # step 8 of epoch 1
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["error: terminated (SIGTERM); what was written so far is kept"]
    progress = json.loads((out / CHECKPOINT_DIR / "progress.json").read_text())
    assert (progress["epoch"], progress["step"]) == (0, 5)
    assert not (out / "summary.json").exists()

    resumed = lorabench("train", "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(out) == uninterrupted


@pytest.mark.parametrize("stop, code, line", [
    ("sigterm", 143, "error: terminated (SIGTERM); what was written so far is kept"),
    ("ctrl-c", 130, "error: interrupted; what was written so far is kept"),
])  # fmt: skip
def test_a_stop_inside_a_command_is_one_line_and_its_exit_status(stop, code, line, cli, monkeypatch, tmp_path):
    from lorabench import api

    def stopped(*_args, **_kwargs):
        if stop == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "train", stopped)
    result = cli("train", "--model", "tfidf", "--data", BINARY, "--out", tmp_path / "run")
    assert (result.code, result.stderr.strip().splitlines()) == (code, [line])
    assert signal.getsignal(signal.SIGTERM) is not None  # main() put the previous handler back


@pytest.mark.slow
def test_an_interrupted_compare_run_again_keeps_what_it_trained(tiny_models, tmp_path, monkeypatch):
    from lorabench.api import compare
    from lorabench.workflows import compare as workflow

    trained, stop = [], [True]

    def isolated(what, function, *args):
        if what == "training":
            trained.append(Path(args[1]).name)
            if "roberta" in args[1] and stop[0]:
                raise KeyboardInterrupt  # what SIGTERM raises (lorabench.cli.Terminated is one)
        return workflow.reporting(function, *args)

    monkeypatch.setattr(workflow, "run_isolated", isolated)
    models, out = ["tfidf", str(tiny_models["roberta"])], tmp_path / "cmp"
    arguments = {"data": str(BINARY), "epochs": 1, "max_train_rows": 64}
    with pytest.raises(KeyboardInterrupt):
        compare(models, out, **arguments)
    stop[0] = False
    table = compare(models, out, **arguments)
    assert trained[0] == "tfidf" and "tfidf" not in trained[1:]  # kept, not trained again
    assert list(table["status"]) == ["ok", "ok"]
    with pytest.raises(LorabenchError, match="holds another comparison"):
        compare(["tfidf"], out, data=str(BINARY))


@pytest.mark.slow
def test_an_interrupted_sweep_trial_is_tried_again_by_the_same_command(tiny_models, tmp_path, monkeypatch):
    from lorabench.workflows.sweep import make_objective, optuna_backend
    from lorabench.workflows.sweep.objective import Objective
    from test_sweep import load_study, tiny_settings

    settings = tiny_settings(tiny_models, BINARY, tmp_path / "sweep", trials=2)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt  # what SIGTERM raises (lorabench.cli.Terminated is one)

    monkeypatch.setattr(Objective, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        optuna_backend.run(settings, make_objective(settings))
    monkeypatch.setattr(Objective, "run", lambda *_args, **_kwargs: 0.5)
    optuna_backend.run(settings, make_objective(settings))  # the same command again
    trials = load_study(settings.out).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert optuna_backend.retried_trial(trials[1]) == 0 and trials[1].params == trials[0].params


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory) -> Path:
    from lorabench.api import resolve_config, train

    out = tmp_path_factory.mktemp("tfidf") / "run"
    train(resolve_config("tfidf", overrides={"data": {"source": str(BINARY)}}), out)
    return out


def test_sigterm_during_predict_leaves_no_output(tfidf_run, cli, monkeypatch, tmp_path):
    from lorabench.models.tfidf import TfidfClassifier

    def terminated(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(TfidfClassifier, "predict_proba", terminated)
    result = cli("predict", "--run", tfidf_run, "--data", BINARY / "test.csv", "--out", tmp_path / "p.csv")
    assert result.code == 143
    assert list(tmp_path.iterdir()) == []


# 3. damaged records


def test_a_cut_last_metrics_line_is_dropped_with_a_note_and_a_damaged_one_refused(tmp_path, monkeypatch):
    from lorabench.core import storage

    notes = []
    monkeypatch.setattr(storage, "say", notes.append)
    run = RunDir(tmp_path)
    (tmp_path / METRICS_FILE).write_text('{"epoch": 1, "val_f1": 0.5}\n{"epoch": 2, "val_')
    assert run.metrics() == [{"epoch": 1, "val_f1": 0.5}]
    assert notes == [
        f"note: the last line of {tmp_path / METRICS_FILE} is cut short; dropped (its epoch is trained again)"
    ]
    run.append_metrics({"epoch": 2, "val_f1": 0.6})  # resume rewrites the record whole
    assert [row["epoch"] for row in run.metrics()] == [1, 2]
    (tmp_path / METRICS_FILE).write_text('{"epoch": 1, "val_\n{"epoch": 2}\n')
    with pytest.raises(LorabenchError, match=f"^{tmp_path / METRICS_FILE} line 1 is damaged"):
        run.metrics()


def _copy_run(run: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(run, target)
    return target


@pytest.mark.parametrize("name, damage, expected", [
    ("summary.json", "", "is empty; run `lorabench train --resume --out {run}` to write it again"),
    ("summary.json", "cut", "is cut short or damaged (not valid JSON); run `lorabench train --resume --out {run}`"),
    ("config.yaml", "", "is empty; copy the run's config.yaml back, or train into a new --out"),
    ("config.yaml", "cut", "is cut short (settings missing); copy the run's config.yaml back"),
])  # fmt: skip
def test_an_empty_or_cut_record_is_refused_by_name(name, damage, expected, tfidf_run, cli, tmp_path):
    run = _copy_run(tfidf_run, tmp_path / "run")
    text = (run / name).read_text()
    lines = text.splitlines(keepends=True)
    (run / name).write_text("".join(lines[: len(lines) // 2]) if damage == "cut" else "")  # cut at a line's end
    for command in (["predict", "--run", run, "--data", BINARY / "test.csv", "--out", tmp_path / "p.csv"],
                    ["train", "--out", run, "--resume"] if name == "config.yaml" else ["export", "--run", run,
                                                                                    "--out", tmp_path / "e"]):  # fmt: skip
        result = cli(*command)
        lines = result.stderr.strip().splitlines()
        assert result.code == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: {run / name} " + expected.format(run=run))
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_an_empty_or_cut_comparison_record_is_refused_by_name(tmp_path, cli, in_process):
    out = tmp_path / "cmp"
    assert cli("-q", "compare", "--models", "tfidf", "--data", BINARY, "--out", out).code == 0
    text = (out / "compare.json").read_text()
    for damaged, what in (("", "is empty"), (text[:100], "is cut short or damaged (not valid JSON)")):
        (out / "compare.json").write_text(damaged)
        result = cli("report", out)
        assert result.code == 2
        assert result.stderr.strip().splitlines() == [
            f"error: {out / 'compare.json'} {what}; run `lorabench compare` again into a new --out"
        ]


# 4. a full disk loses nothing


def _lora_config(tiny_models):
    from lorabench.api import resolve_config

    overrides = {
        "data": {"source": str(BINARY), "max_train_rows": 64},
        "train": {"epochs": 2, "batch_size": 16, "batch_tokens": 0, "lr": 1e-3, "max_length": 48, "seed": 3},
    }
    return resolve_config(str(tiny_models["roberta"]), overrides=overrides)


@pytest.fixture(scope="module")
def small_uninterrupted(tiny_models, tmp_path_factory) -> dict:
    from lorabench.api import train

    out = tmp_path_factory.mktemp("small") / "run"
    train(_lora_config(tiny_models), out)
    return outcome(out)


def full_disk_at(monkeypatch, name: str, write: int) -> None:
    """The disk fills up at the `write`-th atomic write of a file called `name` (seen where its data is synced)."""
    writes, fsync = [], os.fsync

    def synced(fd: int) -> None:
        if f"/.{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            writes.append(fd)
            if len(writes) == write:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", synced)


NO_SPACE_LINE = (
    r"cannot write in {out}: No space left on device \(writing [\d,.]+ (bytes|MB)\); free some space and run the "
    r"same command again \(train: with --resume, from its last checkpoint\)"
)


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(small_uninterrupted, tiny_models, tmp_path, monkeypatch):
    from lorabench.api import train

    out = tmp_path / "run"
    full_disk_at(monkeypatch, "state.pt", 2)  # epoch 2's checkpoint
    with pytest.raises(DiskFull, match="^" + NO_SPACE_LINE.format(out=re.escape(str(out))) + "$"):
        train(_lora_config(tiny_models), out)
    monkeypatch.undo()
    assert json.loads((out / CHECKPOINT_DIR / "progress.json").read_text())["epoch"] == 1
    torch.load(out / CHECKPOINT_DIR / "state.pt", weights_only=True)
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no half-built checkpoint left

    train(_lora_config(tiny_models), out, resume=True)
    assert outcome(out) == small_uninterrupted
    from lorabench.models.registry import load_classifier

    assert load_classifier(out).predict_proba(["a LoRA run passes the checks of an untrusted one"]).shape == (1, 2)


@pytest.mark.slow
def test_a_full_disk_at_a_record_stops_in_one_line_and_resumes(small_uninterrupted, tiny_models, tmp_path, cli,
                                                                monkeypatch):  # fmt: skip
    from lorabench.core.config import config_to_yaml

    out, config = tmp_path / "run", tmp_path / "run.yaml"
    config.write_text(config_to_yaml(_lora_config(tiny_models)))
    full_disk_at(monkeypatch, METRICS_FILE, 2)  # epoch 2's row
    stopped = cli("-q", "train", "--config", config, "--out", out)
    lines = stopped.stderr.strip().splitlines()
    assert stopped.code == 2 and len(lines) == 1, stopped.stderr
    assert re.fullmatch("error: " + NO_SPACE_LINE.format(out=re.escape(str(out))), lines[0])
    monkeypatch.undo()
    assert [row["epoch"] for row in RunDir(out).metrics()] == [1]
    assert cli("-q", "train", "--config", config, "--out", out, "--resume").code == 0
    assert outcome(out) == small_uninterrupted


def test_a_full_disk_in_another_languages_writer_is_one_line_too(tmp_path):
    """safetensors (Rust) and torch (C++) raise their own types, with the system's words for a full disk."""
    from lorabench.core.storage import replace_dir

    def build(_directory: Path) -> None:
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                           '"No space left on device" })')  # fmt: skip

    with pytest.raises(DiskFull, match=f"^cannot write in {re.escape(str(tmp_path))}: No space left on device; "):
        replace_dir(build, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


# 5. untrusted run directories


def _refused_before_loading(run: Path, monkeypatch, message: str) -> None:
    from lorabench.models import registry

    monkeypatch.setattr(registry, "recorded_kind", lambda _run: pytest.fail("the run was read"))
    with pytest.raises(LorabenchError, match=message):
        registry.load_classifier(run)


def test_a_symlink_out_of_the_run_is_refused(tfidf_run, tmp_path, monkeypatch):
    run = _copy_run(tfidf_run, tmp_path / "run")
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("id\n")
    (run / "val_predictions.csv").unlink()
    (run / "val_predictions.csv").symlink_to(outside)
    _refused_before_loading(run, monkeypatch, "val_predictions.csv is a symbolic link out of the run directory")
    (run / "val_predictions.csv").unlink()
    (run / "val_predictions.csv").symlink_to(run / "test_predictions.csv")  # inside the run: allowed
    monkeypatch.undo()
    from lorabench.models.registry import load_classifier

    assert load_classifier(run).kind == "tfidf"


@pytest.mark.parametrize("name, content", [
    ("adapter/adapter_config.json", {"auto_map": {"AutoModel": "evil.Model"}}),
    ("adapter/config.json", {"trust_remote_code": True}),
])  # fmt: skip
def test_a_config_naming_remote_code_is_refused(name, content, tfidf_run, tmp_path, monkeypatch):
    run = _copy_run(tfidf_run, tmp_path / "run")
    (run / name).parent.mkdir(exist_ok=True)
    (run / name).write_text(json.dumps(content))
    _refused_before_loading(run, monkeypatch, f"{run / name} names remote code")


@pytest.mark.parametrize("name", ["adapter/adapter_model.bin", "weights.pt", "tfidf/model.pkl"])
def test_pickle_weights_are_refused(name, tfidf_run, tmp_path, monkeypatch):
    run = _copy_run(tfidf_run, tmp_path / "run")
    (run / name).parent.mkdir(exist_ok=True)
    (run / name).write_bytes(b"\x80\x04N.")
    _refused_before_loading(run, monkeypatch, f"{run / name} is a pickle weights file")
