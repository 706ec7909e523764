"""Sweeps on tiny random models: the space, Optuna resume after a finish and after a kill, pruning,
best.json training again to the same F1, and the W&B configuration and agent (sweeps on Ray: tests/test_ray.py)."""

from __future__ import annotations

import json
import signal
import sys
import time
import types
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

import forked
from lorabench.workflows.sweep import SweepSettings, load_space, sweep
from lorabench.workflows.sweep.optuna_backend import GRACE_INTERVALS, retried_trial

# A space the tiny models train on in seconds: short texts, few rows per batch.
TINY_SPACE = """parameters:
  lora_rank: {values: [2, 4]}
  lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
  max_length: {value: 48}
  batch_size: {value: 16}
"""


def write_space(path: Path, text: str = TINY_SPACE) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def tiny_settings(tiny_models, small_data, out: Path, **values) -> SweepSettings:
    space = values.pop("space", None) or write_space(out.parent / f"{out.name}_space.yaml")
    return SweepSettings(
        model=str(tiny_models["roberta"]),
        data=str(small_data),
        out=out,
        space=space,
        epochs=values.pop("epochs", 1),
        **values,
    )


def load_study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=out.resolve().name, storage=f"sqlite:///{(out / 'study.db').resolve()}")


def snapshot(study: optuna.Study) -> dict[int, tuple]:
    return {t.number: (t.state.name, t.params, t.value, t.datetime_start) for t in study.get_trials()}


# ---------------------------------------------------------------------------------------------- the space


def test_study_space_is_the_papers():
    space = load_space()
    assert space.to_wandb() == {
        "lora_alpha": {"values": [16, 32, 64]},
        "lora_dropout": {"distribution": "uniform", "min": 0.0, "max": 0.1},
        "lora_rank": {"values": [4, 8, 16, 32]},
        "lr": {"distribution": "uniform", "min": 1e-5, "max": 2e-4},
        "lora_bias": {"value": "none"},
        "max_length": {"value": 512},
    }
    assert space.fixed() == {"lora_bias": "none", "max_length": 512}
    assert space.overrides({"lora_rank": 16, "lr": 1e-4, "lora_alpha": 32, "lora_dropout": 0.05}) == {
        "lora": {"bias": "none", "r": 16, "alpha": 32, "dropout": 0.05},
        "train": {"max_length": 512, "lr": 1e-4},
    }


def test_sampled_values_stay_in_the_space():
    space = load_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    draws = [space.suggest(study.ask()) for _ in range(40)]
    assert {d["lora_alpha"] for d in draws} == {16, 32, 64}
    assert {d["lora_rank"] for d in draws} == {4, 8, 16, 32}
    assert all(0 <= d["lora_dropout"] <= 0.1 and 1e-5 <= d["lr"] <= 2e-4 for d in draws)
    assert len({d["lr"] for d in draws}) == 40
    assert set(draws[0]) == {"lora_alpha", "lora_dropout", "lora_rank", "lr"}  # fixed ones are not searched


BAD_SPACES = [
    ("parameters:\n  lora_rnk: {values: [4, 8]}\n", "unknown parameter 'lora_rnk'"),
    ("parameters:\n  lora_dropout: {distribution: uniform, min: 0.0, max: 1.5}\n", "lora.dropout"),
    ("parameters:\n  lr: {distribution: uniform, min: 0.1, max: 0.01}\n", "must be below max"),
    ("parameters:\n  lr: {value: 0.1, values: [0.1, 0.2]}\n", "exactly one of"),
    ("parameters:\n  lr: {distribution: normal, min: 0.1, max: 0.2}\n", "parameters.lr.distribution"),
    ("parameters:\n  lr: {min: 0.1}\n", "needs both min and max"),
    ("parameters:\n  lora_rank: {values: []}\n", "at least one value"),
    ("parameters:\n  lora_bias: {value: none}\n", "no parameter to search"),
    ("parameters:\n  lora_rank: {distribution: int_uniform, min: 0, max: 8}\n", "lora.r"),
    ("params:\n  lr: {values: [0.1]}\n", "parameters: field required"),
    ("- lr\n", "must be a mapping"),
    ("parameters: {lr: [unclosed\n", "cannot read search space"),
]


@pytest.mark.parametrize("text,fragment", BAD_SPACES)
def test_bad_space_is_refused_in_one_line_before_training(text, fragment, cli, tiny_models, small_data, tmp_path):
    space = write_space(tmp_path / "space.yaml", text)
    result = cli(
        "sweep",
        "--model",
        tiny_models["roberta"],
        "--data",
        small_data,
        "--out",
        tmp_path / "sweep",
        "--space",
        space,
        "--trials",
        1,
    )
    assert result.code == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert fragment.lower() in lines[0].lower(), lines[0]
    assert not (tmp_path / "sweep").exists()  # refused before anything was written


def test_unusable_storage_is_refused_in_one_line(cli, tiny_models, small_data, tmp_path):
    result = cli(
        "sweep",
        "--model",
        tiny_models["roberta"],
        "--data",
        small_data,
        "--out",
        tmp_path / "sweep",
        "--storage",
        "not-a-database-url",
    )
    assert result.code == 2 and result.stderr.startswith("error: cannot open the study storage not-a-database-url")
    assert not (tmp_path / "sweep").exists()


def test_missing_model_is_refused_before_the_study_exists(cli, small_data, tmp_path):
    result = cli("sweep", "--model", tmp_path / "no_model", "--data", small_data, "--out", tmp_path / "sweep")
    assert result.code == 2 and "model path does not exist" in result.stderr
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------------------------------------- optuna


@pytest.fixture(scope="module")
def resumed_sweep(tiny_models, small_data, tmp_path_factory):
    """A sweep run with --trials 2, then the same sweep with --trials 3; the study's trials after each."""
    out = tmp_path_factory.mktemp("resumed") / "sweep"
    first = sweep(tiny_settings(tiny_models, small_data, out, trials=2))
    after_two = snapshot(load_study(out))
    second = sweep(tiny_settings(tiny_models, small_data, out, trials=3))
    return out, first, second, after_two, snapshot(load_study(out))


def test_rerun_with_more_trials_keeps_finished_ones(resumed_sweep):
    out, first, second, after_two, after_three = resumed_sweep
    assert first["finished_trials"] == 2 and second["finished_trials"] == 3
    assert [state for state, *_ in after_three.values()] == ["COMPLETE"] * 3
    assert {n: after_three[n] for n in (0, 1)} == after_two  # not re-run: same parameters, values, start times
    assert after_three[2][1] not in (after_three[0][1], after_three[1][1])  # a new point, not a replay
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0", "1", "2"]


def test_outputs_describe_every_trial(resumed_sweep):
    out, _, second, _, after_three = resumed_sweep
    table = pd.read_csv(out / "trials.csv")
    assert list(table["number"]) == [0, 1, 2] and set(table["state"]) == {"COMPLETE"}
    assert {"value", "seconds", "started", "finished", "lora_rank", "lr"} <= set(table.columns)
    for row in table.itertuples():
        state, params, value, _ = after_three[row.number]
        assert row.value == pytest.approx(value) and row.lr == pytest.approx(params["lr"])
        summary = json.loads((out / "trials" / str(row.number) / "summary.json").read_text())
        assert row.value == pytest.approx(summary["val"]["f1"])  # the objective is the trial's best val F1
        assert row.seconds > 0
    best = json.loads((out / "best.json").read_text())
    assert best["value"] == pytest.approx(table["value"].max()) == pytest.approx(second["best_val_f1"])
    assert best["config"]["lora"]["r"] == best["params"]["lora_rank"]
    assert best["config"]["train"]["lr"] == pytest.approx(best["params"]["lr"])
    assert best["config"]["train"]["max_length"] == 48 and best["fixed"] == {"max_length": 48, "batch_size": 16}
    for png in ("optimization_history.png", "param_importances.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert 'src="optimization_history.png"' in page and 'src="param_importances.png"' in page
    assert 'href="trials.csv"' in page and f"{best['value']:.4f}" in page


def test_a_sweeps_charts_leave_the_matplotlib_style_of_the_process_as_it_was(resumed_sweep):
    """Optuna's plots switch matplotlib to its ggplot style for the whole process: a comparison charted later in
    the same process lost its colours (found when the report's browser test ran after the sweeps)."""
    import matplotlib

    assert resumed_sweep[1]["finished_trials"] == 2  # the sweeps drew their charts in this process
    for key in ("axes.facecolor", "axes.prop_cycle", "axes.grid"):
        assert matplotlib.rcParams[key] == matplotlib.rcParamsDefault[key], key


def test_best_json_trains_again_to_the_same_f1(resumed_sweep, cli, tmp_path):
    out = resumed_sweep[0]
    best = json.loads((out / "best.json").read_text())
    result = cli("train", "--config", out / "best.json", "--out", tmp_path / "again")
    assert result.code == 0, result.stderr
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary["val"]["f1"] == pytest.approx(best["value"], abs=1e-6)
    trial = pd.read_csv(out / "trials" / str(best["trial"]) / "val_predictions.csv")
    again = pd.read_csv(tmp_path / "again" / "val_predictions.csv")
    pd.testing.assert_frame_equal(trial, again, atol=1e-5)  # the same model, not just the same score


def sweep_command(settings: SweepSettings, *extra) -> list[str]:
    """`lorabench sweep` with `settings` as flags, for a worker in its own process (forked: tests/forked.py)."""
    flags = ["--model", settings.model, "--data", settings.data, "--out", settings.out, "--space", settings.space]
    flags += ["--trials", settings.trials, "--epochs", settings.epochs, *extra]
    return [sys.executable, "-m", "lorabench.cli", "-q", "sweep", *map(str, flags)]


def kill_once_started(process: forked.Forked, started: Path, seconds: float, trial: str) -> None:
    """SIGKILL the sweep process as soon as `started` exists (that trial has started training), as a machine
    dies mid-trial."""
    try:
        deadline = time.monotonic() + seconds
        while not started.is_file():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, f"{trial} never started"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()


def test_killed_sweep_resumes_with_the_same_number_of_trials(tiny_models, small_data, tmp_path):
    out = tmp_path / "sweep"
    settings = tiny_settings(tiny_models, small_data, out, trials=4, epochs=2)
    command = sweep_command(settings)
    process = forked.Forked(command)
    kill_once_started(process, out / "trials" / "2" / "config.yaml", 300, "trial 3")  # of 4
    killed = snapshot(load_study(out))
    assert [killed[n][0] for n in (0, 1, 2)] == ["COMPLETE", "COMPLETE", "RUNNING"]

    result = sweep(settings)  # the same command again
    study = load_study(out)
    states = {t.number: t.state.name for t in study.get_trials()}
    assert result["finished_trials"] == 4
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "COMPLETE", 4: "COMPLETE"}
    assert {n: snapshot(study)[n] for n in (0, 1)} == {n: killed[n] for n in (0, 1)}
    retry = study.trials[3]
    assert retried_trial(retry) == 2 and retry.params == killed[2][1]  # the interrupted point, again
    table = pd.read_csv(out / "trials.csv")
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]


def test_a_dead_workers_trial_is_failed_by_its_heartbeat_and_retried_by_another_worker(
    tiny_models, small_data, tmp_path
):
    """Two workers on one storage, as on two machines (their own --out, the same study name): the first is killed
    mid-trial; the second, started once that trial's heartbeat is stale, fails it, runs its point again and ends
    the sweep with --trials finished trials."""
    storage, heartbeat = f"sqlite:///{tmp_path / 'shared.db'}", 1
    space = write_space(tmp_path / "space.yaml")
    first, second = (
        tiny_settings(tiny_models, small_data, tmp_path / machine / "sweep", trials=2, space=space)
        for machine in ("a", "b")
    )
    shared = ("--storage", storage, "--heartbeat-seconds", heartbeat)
    dying = forked.Forked(sweep_command(first, *shared))
    kill_once_started(dying, first.out / "trials" / "0" / "config.yaml", 60, "trial 0")
    study = optuna.load_study(study_name="sweep", storage=storage)
    [killed] = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    # Seen from another machine, the worker's process cannot be looked up: only its silence tells it is gone.
    study._storage.set_trial_user_attr(killed._trial_id, "worker", "another-machine:1")
    time.sleep(GRACE_INTERVALS * heartbeat + 1)

    done = forked.run(sweep_command(second, *shared), timeout=120)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="sweep", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert retried_trial(trials[1]) == 0 and trials[1].params == killed.params  # the killed point, again
    assert sorted(p.name for p in (second.out / "trials").iterdir()) == ["1", "2"]
    table = pd.read_csv(second.out / "trials.csv")
    assert list(table["state"]) == ["FAIL", "COMPLETE", "COMPLETE"] and table["retry_of"][1] == 0


def test_rerun_with_other_settings_is_refused_by_name(resumed_sweep, tiny_models, small_data, cli, tmp_path):
    out = resumed_sweep[0]
    same = write_space(tmp_path / "same.yaml")
    other = write_space(tmp_path / "other.yaml", TINY_SPACE.replace("[2, 4]", "[2, 8]"))
    common = ["sweep", "--model", tiny_models["roberta"], "--data", small_data, "--out", out, "--trials", 4]
    result = cli(*common, "--space", other, "--epochs", 1)
    assert result.code == 2 and "already holds a sweep with other settings (space)" in result.stderr
    result = cli(*common, "--space", same, "--epochs", 2, "--max-train-rows", 100)
    assert result.code == 2 and "other settings (data.max_train_rows, train.epochs)" in result.stderr
    assert len(load_study(out).trials) == 3


def test_median_pruner_stops_a_hopeless_trial_before_its_last_epoch(tiny_models, small_data, tmp_path):
    out = tmp_path / "sweep"
    space = write_space(
        tmp_path / "space.yaml",
        TINY_SPACE.replace(
            "lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}", "lr: {values: [1.0e-2, 1.0e-7]}"
        ),
    )
    # Queue two good learning rates, then one too small to move the model off its initial guess (each is
    # scaled down with the small data's batches, by the same factor).
    out.mkdir()
    study = optuna.create_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}", direction="maximize")
    for lr in (1e-2, 1e-2, 1e-7):
        study.enqueue_trial({"lora_rank": 2, "lr": lr})
    sweep(tiny_settings(tiny_models, small_data, out, trials=3, epochs=3, space=space))
    trials = load_study(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned_at = max(trials[2].intermediate_values)
    assert pruned_at < 3  # stopped before its last epoch
    assert trials[2].value <= min(t.intermediate_values[pruned_at] for t in trials[:2])
    assert len((out / "trials" / "2" / "metrics.jsonl").read_text().splitlines()) == pruned_at
    assert len((out / "trials" / "0" / "metrics.jsonl").read_text().splitlines()) == 3


# ---------------------------------------------------------------------------------------------- W&B


def test_wandb_backend_writes_the_sweep_and_names_the_missing_key(cli, tiny_models, small_data, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    out = tmp_path / "sweep"
    result = cli(
        "sweep",
        "--backend",
        "wandb",
        "--model",
        tiny_models["roberta"],
        "--data",
        small_data,
        "--out",
        out,
        "--trials",
        30,
        "--epochs",
        2,
    )
    assert result.code == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: W&B needs an API key") and "wandb_sweep.yaml" in lines[0]
    configuration = yaml.safe_load((out / "wandb_sweep.yaml").read_text())
    assert configuration["method"] == "bayes"
    assert configuration["metric"] == {"name": "eval/f1", "goal": "maximize"}
    assert configuration["parameters"] == load_space().to_wandb()  # the study's space, in W&B's own syntax
    assert configuration["run_cap"] == 30 and configuration["early_terminate"]["type"] == "hyperband"
    command = configuration["command"]
    assert command[:3] == ["${env}", "lorabench", "sweep-agent"]
    assert command[command.index("--out") + 1] == str(out.resolve())
    assert command[command.index("--data") + 1] == str(Path(small_data).resolve())
    assert command[command.index("--epochs") + 1] == "2"
    assert not (out / "trials").exists()


class FakeRun:
    """What `wandb.init()` returns inside `wandb agent`: the sweep's chosen parameters in `config`."""

    def __init__(self, config: dict):
        self.id, self.config, self.summary, self.logged, self.finished = "abc123", config, {}, [], False

    def log(self, row: dict) -> None:
        self.logged.append(row)

    def finish(self, exit_code: int = 0) -> None:
        self.finished = True


def test_sweep_agent_trains_what_wandb_chose_and_logs_eval_f1(cli, tiny_models, small_data, tmp_path, monkeypatch):
    run = FakeRun({"lora_rank": 4, "lr": 2e-3, "max_length": 48, "batch_size": 16})
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda: run))
    out = tmp_path / "sweep"
    space = write_space(tmp_path / "space.yaml")
    result = cli(
        "sweep-agent",
        "--model",
        tiny_models["roberta"],
        "--data",
        small_data,
        "--out",
        out,
        "--space",
        space,
        "--epochs",
        2,
    )
    assert result.code == 0, result.stderr
    trial_dir = out / "trials" / "abc123"
    config = yaml.safe_load((trial_dir / "config.yaml").read_text())
    assert config["lora"]["r"] == 4 and config["train"]["lr"] == 2e-3 and config["train"]["epochs"] == 2
    metrics = [json.loads(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["eval/f1"] for row in run.logged] == [row["val_f1"] for row in metrics]
    summary = json.loads((trial_dir / "summary.json").read_text())
    assert run.summary["eval/f1"] == pytest.approx(summary["val"]["f1"]) and run.finished
    assert json.loads((trial_dir / "trial.json").read_text())["value"] == pytest.approx(summary["val"]["f1"])


def test_sweep_agent_outside_wandb_agent_says_so(cli, tiny_models, small_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda: FakeRun({})))
    result = cli("sweep-agent", "--model", tiny_models["roberta"], "--data", small_data, "--out", tmp_path / "s")
    assert result.code == 2 and "started by `wandb agent`" in result.stderr
