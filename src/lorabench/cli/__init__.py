"""The `lorabench` command: a thin typer layer over the Python API.

The settings' flags are not declared here: `schema_options` builds each from its pydantic field (name, type,
choices, help), so a setting is written once, in lorabench.core.config or the sweep's settings, and `--set
section.key=value` reaches every other one. Errors in the user's input arrive as LorabenchError and are printed as
one line with exit status 2; any other failure prints one line too (exit 1), and `--debug` shows the traceback
with its chained causes. SIGTERM stops a command as Ctrl-C does, where it is (records are written atomically and
the last checkpoint stays): one line, exit 143 (Ctrl-C: 130). Each command imports its own stack (torch, pandas,
fastapi, optuna...) when it runs, so `--help`, `--version` and usage errors answer at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from lorabench import __version__
from lorabench.cli.options import SET_HELP, data_options, run_settings, schema_options
from lorabench.cli.show import ESCAPED_LINE_BREAKS, print_label_issues, print_stats, results_text
from lorabench.core.config import (
    ExportFormat,
    ModelConfig,
    Quantization,
    SweepSettings,
    TrainSettings,
    merge,
    parse_assignments,
    preset_dict,
    preset_names,
    validate,
    validate_as,
)
from lorabench.core.console import set_progress
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.settings import CompareBackend, PredictBackend, ServeSettings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: typer's rich help labels every flag <bool>
    help="Fine-tune pretrained language models with LoRA for text classification.",
)
_state = {"debug": False, "terminated": False}
INTERRUPTED = 130  # what typer returns for a KeyboardInterrupt inside a command (standalone_mode=False)
TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler's or container's stop) raised where Ctrl-C raises KeyboardInterrupt, so the
    command stops the same way: records are written atomically, the last checkpoint stays, `--resume` continues."""


def _terminate(_signum: int, _frame: object) -> None:
    _state["terminated"] = True  # typer turns the KeyboardInterrupt into a bare exit code: note which stop it was
    raise Terminated


# Friendlier names than --name / --source for the two settings every command takes.


def _print_version(given: bool) -> None:
    if given:
        typer.echo(f"lorabench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or notes"),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="print it and exit"),
) -> None:
    _state["debug"] = debug
    set_progress(not quiet)
    if quiet:  # libraries' own tqdm bars (e.g. transformers' GGUF de-quantization); read when tqdm is imported
        os.environ["TQDM_DISABLE"] = "1"


@app.command()
@schema_options(run_settings("model", "data", "lora", "prompt", "train"))
def train(
    overrides: dict,
    out: Path = typer.Option(..., "--out", "-o", help="run directory to write"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML/JSON run config"),
    assignments: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
) -> None:
    """Fine-tune one model with LoRA (or fit another kind) and write its run record."""
    from lorabench import api
    from lorabench.core.storage import CONFIG_FILE, RunDir
    from lorabench.training.distributed import world

    model = overrides["model"].pop("name")
    if resume and model is None and config is None:  # `train --resume --out RUN` continues RUN as configured
        if not (out / CONFIG_FILE).is_file():
            raise LorabenchError(f"nothing to resume: {out} holds no lorabench run (give --model to start one)")
        RunDir(out).config()  # an empty or cut config.yaml is named as such, not read as settings left out
        config = out / CONFIG_FILE
    run_config = api.resolve_config(model, config, merge(overrides, parse_assignments(assignments)))
    summary = api.train(run_config, out, resume=resume)
    if world().is_main:  # under torchrun every process returns the summary; print it once
        keys = {"model", "best_epoch", "val", "val_intervals", "test", "train_seconds", "peak_memory_mb",
                "trainable_percent"}  # fmt: skip
        typer.echo(summary.model_dump_json(include=keys))


@app.command()
@schema_options(data_options("source", "test", "strict", "duplicates", "conflicts"))
def data(
    overrides: dict,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    label_issues: Path | None = typer.Option(
        None, "--label-issues", help="a run: rank its held-out rows by how likely their label is wrong (cleanlab)"
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="CSV for --label-issues (default RUN/label_issues.csv)"),
    models: list[str] | None = typer.Option(
        None, "--model", "-m", help="count the texts longer than this model's window (repeatable)"
    ),
    windows: bool = typer.Option(
        False, "--windows", help="count the texts longer than each preset's window (loads their tokenizers: seconds)"
    ),
) -> None:
    """Show the data's statistics: rows per split, classes, missing values, text lengths, class weights, and
    checks of the split: duplicates, conflicting labels, texts shared between splits; with --model or --windows,
    the share of texts longer than each model's window; with --label-issues, the rows a run's out-of-fold (or
    validation) probabilities say are likely mislabelled."""
    from lorabench.data.statistics import all_texts, describe
    from lorabench.workflows.label_issues import find_label_issues
    from lorabench.workflows.long_texts import window_fits

    if out is not None and label_issues is None:
        raise LorabenchError("--out names the CSV of --label-issues; give --label-issues RUN too")
    # validated as a run config is, so `data` and `train` refuse the same settings in the same words
    data_config = validate({"data": {key: value for key, value in overrides["data"].items() if value is not None}}).data
    stats = describe(data_config)
    stats["windows"] = window_fits(all_texts(data_config), models) if windows or models else []
    issues = find_label_issues(label_issues, data_config, out) if label_issues is not None else None
    if as_json:
        typer.echo(json.dumps({**stats, "label_issues": issues.model_dump(mode="json") if issues else None}, indent=2))
        return
    print_stats(stats)
    if issues is not None:
        print_label_issues(issues)


@app.command()
@schema_options({"model": (ModelConfig, ["name"]), "train": (TrainSettings, ["batch_size", "batch_tokens"])})
def plan(
    overrides: dict,
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML/JSON run config"),
    longest: int = typer.Option(64, min=1, help="longest text in tokens expected in a batch (tweets: ~64)"),
    num_labels: int = typer.Option(2, min=2),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Estimate training memory for each precision / quantization / checkpointing choice, and what fits here."""
    from lorabench import api
    from lorabench.workflows.plan import plan as plan_memory

    run_config = api.resolve_config(overrides["model"]["name"], config, {"train": overrides["train"]})
    result = plan_memory(run_config, num_labels=num_labels, longest=longest)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(
        title=f"{result['model']}: {result['total_params']:,} parameters, {result['trainable_params']:,} "
        f"trainable; {result['tokens_per_batch']} tokens per batch; {result['device']} has "
        f"{result['free_mb']:,} MB free",
        caption="MB: frozen weights, LoRA + head with Adam states, activations of one training batch, "
        "one validation batch's working set, runtime",
    )
    for column in ("precision", "quant", "ckpt", "weights", "adam", "activ.", "eval", "runtime", "total", "fits"):
        table.add_column(column, justify="left" if column in ("precision", "quant") else "right")
    sizes = ("weights_mb", "trainable_states_mb", "activations_mb", "evaluation_mb", "overhead_mb", "total_mb")
    for row in result["estimates"]:
        checkpointing = "yes" if row["gradient_checkpointing"] else "no"
        cells = [f"{row[key]:,}" for key in sizes]
        table.add_row(row["precision"], row["quantize"], checkpointing, *cells, "yes" if row["fits"] else "no")
    Console().print(table)


@app.command()
def presets() -> None:
    """List the model presets."""
    for name in preset_names():
        typer.echo(f"{name}\t{preset_dict(name)['model']['source']}")


@app.command()
@schema_options({**data_options("source", "test", "max_train_rows"), "train": (TrainSettings, ["epochs"]),
                 "backend": (CompareBackend, list(CompareBackend.model_fields))})  # fmt: skip
def compare(
    overrides: dict,
    out: Path = typer.Option(..., "--out", "-o", help="empty directory for the runs, results and report"),
    models: str | None = typer.Option(
        None,
        "--models",
        help="comma-separated presets, model directories or hub "
        "ids, e.g. tfidf,minilm,smollm2 (default: the models in --config)",
    ),  # fmt: skip
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML/JSON: shared data/train, per-model entries"),
    seeds: int = typer.Option(1, "--seeds", min=1, help="train each model N times (train.seed + 0..N-1): mean and sd"),
    ensemble: bool = typer.Option(
        False, "--ensemble", help="add an 'ensemble' row: the models averaged with weights fitted on validation"
    ),
    methods: str | None = typer.Option(
        None,
        "--methods",
        help="comma-separated methods to cross every model with, e.g. probe,lora,dora,full (a member can also be "
        "named model:method)",
    ),
) -> None:
    """Train several models (and methods) on the identical split; write results.csv, results.md, charts and
    report.html."""
    from lorabench import api
    from lorabench.training.distributed import world

    names = [name.strip() for name in models.split(",") if name.strip()] if models else None
    grid = [name.strip() for name in methods.split(",") if name.strip()] if methods else None
    given = {key: value for key, value in overrides.pop("backend").items() if value is not None}
    backend = validate_as(CompareBackend, given, "compare setting", "the command line")
    table = api.compare(names, out, overrides=overrides, config_file=config, seeds=seeds, ensemble=ensemble,
                        methods=grid, backend=backend)  # fmt: skip
    if world().is_main:  # under torchrun every process returns the table; print it once
        typer.echo(results_text(table, out))


@app.command()
def report(directory: Path = typer.Argument(..., help="a directory written by `lorabench compare`")) -> None:
    """Re-render a comparison's results and report.html from its run records, without training."""
    from lorabench import api

    table = api.render_report(directory)
    typer.echo(results_text(table, directory))


THRESHOLD_HELP = "decision threshold on P(positive) for two classes (default: the run's validation-F1 threshold)"
BATCH_HELP = "texts per model call (default: the run's eval batch size)"


@app.command()
@schema_options({**data_options(), "backend": (PredictBackend, list(PredictBackend.model_fields))})
def predict(
    overrides: dict,
    run: Path = typer.Option(..., "--run", "-r", help="a finished run directory"),
    data: Path = typer.Option(
        ..., "--data", "-d", help="CSV / Parquet / JSON Lines file of texts; with --backend ray also a folder or a glob"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="output file: .csv or .jsonl"),
    threshold: float | None = typer.Option(None, help=THRESHOLD_HELP),
    submission: bool = typer.Option(False, "--submission", help="write exactly Kaggle's id,target"),
    probabilities: bool = typer.Option(
        False, "--probabilities", help="add prob_<class> per class, as the run's val/test_predictions.csv"
    ),
    batch_size: int | None = typer.Option(None, min=1, help=BATCH_HELP),
) -> None:
    """Score a file of texts with a trained run: its id, the predicted label and score per row, named and built
    from the run's columns (its config.yaml's data settings) unless the column flags say otherwise. With --backend
    ray, Ray Data reads a file, folder or glob of shards and several model replicas score it (one output file)."""
    from lorabench import api

    given = {key: value for key, value in overrides.pop("backend").items() if value is not None}
    backend = validate_as(PredictBackend, given, "predict setting", "the command line")
    if backend.backend == "local" and set(given) - {"backend"}:
        flags = ", ".join("--" + key.replace("_", "-") for key in sorted(set(given) - {"backend"}))
        raise LorabenchError(f"{flags} apply to --backend ray")
    options = {"threshold": threshold, "submission": submission, "batch_size": batch_size,
               "probabilities": probabilities, **overrides["data"]}  # fmt: skip
    if backend.backend == "ray":
        result = api.predict_on_ray(run, data, out, backend, **options)
    else:
        result = api.predict_file(run, data, out, **options)
    typer.echo(json.dumps(result))


@app.command()
def export(
    run: Path = typer.Option(..., "--run", "-r", help="a finished run directory"),
    out: Path = typer.Option(..., "--out", "-o", help="directory to write (new, or an earlier export)"),
    merge_adapter: bool = typer.Option(
        False, "--merge", help="merge the adapter into the base: a plain Transformers model (= --format merged)"
    ),
    export_format: ExportFormat | None = typer.Option(
        None, "--format", help="run: the run's files; merged: a Transformers model; onnx: an ONNX graph (default run)"
    ),
    quantize: Quantization = typer.Option("none", "--quantize", help="int8: dynamic int8 weights (--format onnx)"),
) -> None:
    """Export a run: its adapter + head as they are, merged into a plain Transformers checkpoint, or as ONNX."""
    from lorabench import api

    typer.echo(json.dumps(api.export_run(run, out, merge=merge_adapter, export_format=export_format,
                                         quantize=quantize)))  # fmt: skip


@app.command()
@schema_options({"": (ServeSettings, list(ServeSettings.model_fields))})
def serve(overrides: dict, run: Path = typer.Option(..., "--run", "-r", help="a finished run directory")) -> None:
    """Serve a run over HTTP: POST /predict (or /, the Hugging Face Inference API's form), GET /health, /info,
    /metrics (Prometheus), OpenAPI at /docs."""
    from lorabench import api

    api.serve(run, ServeSettings.build(**{key: value for key, value in overrides.items() if value is not None}))


SWEEP_FIELDS = [name for name in SweepSettings.model_fields if name != "out"]
AGENT_FIELDS = ["model", "data", "space", "epochs", "max_train_rows"]


def _sweep_settings(out: Path, given: dict, **fixed: Any) -> SweepSettings:
    columns = {key: value for key, value in given.pop("columns").items() if value is not None}
    values = {key: value for key, value in given.items() if value is not None}
    return SweepSettings.build(out=out, columns=columns, **values, **fixed)


@app.command()
@schema_options({"": (SweepSettings, SWEEP_FIELDS), **data_options(section="columns")})
def sweep(
    overrides: dict,
    out: Path = typer.Option(..., "--out", "-o", help="sweep directory: trials, database, report (rerun to resume)"),
) -> None:
    """Tune LoRA hyperparameters (Bayesian search, best validation F1); writes trials.csv, best.json, charts."""
    from lorabench import api

    typer.echo(json.dumps(api.sweep(_sweep_settings(out, overrides))))


@app.command("sweep-agent")
@schema_options({"": (SweepSettings, AGENT_FIELDS), **data_options(section="columns")})
def sweep_agent(overrides: dict, out: Path = typer.Option(..., "--out", "-o")) -> None:
    """One trial of a W&B sweep; `wandb agent` runs this (see OUT/wandb_sweep.yaml)."""
    from lorabench.workflows.sweep.wandb_backend import agent

    agent(_sweep_settings(out, overrides, backend="wandb"))


def main() -> None:
    """Console entry point: one clear line instead of a traceback unless --debug."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if app(standalone_mode=False) == INTERRUPTED:
            raise Terminated if _state["terminated"] else KeyboardInterrupt
    except LorabenchError as err:
        _fail(err, 2)
    except Terminated:
        _fail(LorabenchError("terminated (SIGTERM); what was written so far is kept"), TERMINATED)
    except KeyboardInterrupt:
        _fail(LorabenchError("interrupted; what was written so far is kept"), INTERRUPTED)
    except typer.Abort:
        _fail(LorabenchError("aborted"), 1)
    except typer.TyperException as err:  # a usage error (typer's own click): one line naming the option, exit 2
        message = err.format_message() if hasattr(err, "format_message") else first_line(err)
        _fail(LorabenchError(message), 2)
    except Exception as err:
        _fail(err, 1)
    finally:  # main() also runs inside other programs (the tests): leave their handler as it was
        signal.signal(signal.SIGTERM, previous)
        _state["terminated"] = False


def _fail(err: BaseException, code: int) -> None:
    if _state["debug"]:
        traceback.print_exception(err)  # the chained causes too: lorabench errors keep theirs (`from err`)
    message = first_line(err)
    if isinstance(err, LorabenchError) and str(err).strip():
        # One line by design, but it quotes names and values from the user's files and flags, which can hold line
        # breaks: those are shown escaped (\n, \r, ...) rather than cutting the message short.
        message = str(err).strip().translate(ESCAPED_LINE_BREAKS)
    if isinstance(err, LorabenchError):
        print(f"error: {message}", file=sys.stderr)
    else:
        hint = "" if _state["debug"] else "; rerun with --debug to see the traceback"
        print(f"internal error ({type(err).__name__}): {message}{hint}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
