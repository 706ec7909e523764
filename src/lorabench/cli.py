"""The `lorabench` command: a thin typer layer over the Python API.

Errors in the user's input arrive as LorabenchError and are printed as one line with exit status 2; any other
failure prints one line too (exit 1), and `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path

import typer

from lorabench.errors import LorabenchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune pretrained language models with LoRA for text classification.",
)
_state = {"debug": False}

DATA_HELP = "hub data set id, a directory with train/test files, or one CSV / Parquet / JSON Lines file"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Tracking(str, Enum):
    local = "local"
    wandb = "wandb"
    none = "none"


class Quantize(str, Enum):
    none = "none"
    four = "4bit"
    eight = "8bit"


class LoraBias(str, Enum):
    none = "none"
    all = "all"
    lora_only = "lora_only"


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or notes"),
) -> None:
    from lorabench.ui import set_progress

    _state["debug"] = debug
    set_progress(not quiet)
    if quiet:  # libraries' own tqdm bars (e.g. transformers' GGUF de-quantization); read when tqdm is imported
        os.environ["TQDM_DISABLE"] = "1"


def _value(option):
    return option.value if isinstance(option, Enum) else option


@app.command()
def train(
    model: str | None = typer.Option(None, "--model", "-m", help="preset name, local model directory or hub id"),
    data: str | None = typer.Option(None, "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="run directory to write"),
    test: str | None = typer.Option(None, "--test", help="a test file (labels optional)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML/JSON run config"),
    epochs: int | None = typer.Option(None),
    batch_size: int | None = typer.Option(None, help="rows per batch when --batch-tokens is 0"),
    batch_tokens: int | None = typer.Option(
        None,
        min=0,
        help="padded tokens per batch of length-sorted rows (default 2048); 0 = --batch-size rows in random order",
    ),
    packing: bool | None = typer.Option(None, "--packing/--no-packing", help="padding-free batches"),
    lr: float | None = typer.Option(None),
    lora_r: int | None = typer.Option(None),
    lora_alpha: float | None = typer.Option(None),
    lora_dropout: float | None = typer.Option(None),
    lora_bias: LoraBias | None = typer.Option(None),
    max_length: int | None = typer.Option(None),
    max_train_rows: int | None = typer.Option(None),
    seed: int | None = typer.Option(None),
    precision: Precision | None = typer.Option(None),
    gradient_checkpointing: bool | None = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    tracking: Tracking | None = typer.Option(None),
    gguf_file: str | None = typer.Option(None, help="GGUF file name inside the model directory"),
    text_column: str | None = typer.Option(None),
    label_column: str | None = typer.Option(None),
    strict: bool | None = typer.Option(None, "--strict", help="refuse empty texts instead of skipping them"),
    trust_remote_code: bool | None = typer.Option(None, "--trust-remote-code", help="allow a model's own Python code"),
    allow_pickle: bool | None = typer.Option(None, "--allow-pickle", help="allow pickle (.bin) weights"),
    quantize: Quantize | None = typer.Option(None, help="4bit / 8bit base weights (bitsandbytes, CUDA only)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
    save_every_steps: int | None = typer.Option(None, help="also checkpoint every N steps (mid-epoch)"),
) -> None:
    """Fine-tune one model with LoRA and write its run record."""
    from lorabench.api import train as train_run
    from lorabench.config import resolve_config
    from lorabench.distributed import world

    overrides = {
        "model": {
            "gguf_file": gguf_file,
            "trust_remote_code": trust_remote_code,
            "allow_pickle": allow_pickle,
            "quantize": _value(quantize),
        },
        "data": {
            "source": data,
            "test": test,
            "text_column": text_column,
            "label_column": label_column,
            "max_train_rows": max_train_rows,
            "strict": strict,
        },
        "lora": {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "bias": _value(lora_bias)},
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "batch_tokens": batch_tokens,
            "packing": packing,
            "lr": lr,
            "max_length": max_length,
            "seed": seed,
            "precision": _value(precision),
            "gradient_checkpointing": gradient_checkpointing,
            "tracking": _value(tracking),
            "save_every_steps": save_every_steps,
        },
    }
    if resume and model is None and config is None:  # `train --resume --out RUN` continues RUN as configured
        if not (out / "config.yaml").is_file():
            raise LorabenchError(f"nothing to resume: {out} holds no lorabench run (give --model to start one)")
        config = out / "config.yaml"
    run_config = resolve_config(model, config, overrides)
    summary = train_run(run_config, out, resume=resume)
    if world().is_main:  # under torchrun every process returns the summary; print it once
        typer.echo(
            json.dumps(
                {
                    key: summary[key]
                    for key in (
                        "model",
                        "best_epoch",
                        "val",
                        "test",
                        "train_seconds",
                        "peak_memory_mb",
                        "trainable_percent",
                    )
                }
            )
        )


@app.command()
def data(
    data: str | None = typer.Option(None, "--data", "-d", help=DATA_HELP),
    test: str | None = typer.Option(None, "--test"),
    text_column: str | None = typer.Option(None),
    label_column: str | None = typer.Option(None),
    strict: bool | None = typer.Option(None, "--strict", help="refuse empty texts instead of skipping them"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Show the data's statistics: rows per split, classes, missing values, text lengths, class weights."""
    from lorabench.config import DataConfig
    from lorabench.data import describe

    overrides = {
        "source": data,
        "test": test,
        "text_column": text_column,
        "label_column": label_column,
        "strict": strict,
    }
    stats = describe(DataConfig(**{k: v for k, v in overrides.items() if v is not None}))
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    _print_stats(stats)


def _print_stats(stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    names = [str(n) for n in stats["label_names"]]
    table = Table(title=f"data: {stats['source']}")
    for column in ["split", "rows", *[f"class {n}" for n in names], "max chars", "max words"]:
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, entry in stats["splits"].items():
        counts = entry.get("class_counts", {})
        table.add_row(
            split,
            str(entry["rows"]),
            *[str(counts.get(n, "-")) for n in names],
            str(entry["max_chars"]),
            str(entry["max_words"]),
        )
    console.print(table)
    missing = Table(title="missing values per column")
    missing.add_column("split")
    missing.add_column("column")
    missing.add_column("missing", justify="right")
    for split, columns in stats["missing"].items():
        for column, count in columns.items():
            missing.add_row(split, column, str(count))
    console.print(missing)
    console.print("class weights n / (k * count): " + ", ".join(f"{n}: {w}" for n, w in stats["class_weights"].items()))
    for note in stats["notes"]:
        console.print(f"note: {note}")


@app.command()
def plan(
    model: str = typer.Option("minilm", "--model", "-m", help="preset name, local model directory or hub id"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML/JSON run config"),
    batch_size: int | None = typer.Option(None),
    batch_tokens: int | None = typer.Option(None, min=0),
    longest: int = typer.Option(64, min=1, help="longest text in tokens expected in a batch (tweets: ~64)"),
    num_labels: int = typer.Option(2, min=2),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Estimate training memory for each precision / quantization / checkpointing choice, and what fits here."""
    from lorabench.config import resolve_config
    from lorabench.plan import plan as plan_memory

    run_config = resolve_config(model, config, {"train": {"batch_size": batch_size, "batch_tokens": batch_tokens}})
    result = plan_memory(run_config, num_labels=num_labels, longest=longest)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{result['model']}: {result['total_params']:,} parameters, {result['trainable_params']:,} "
        f"trainable; {result['tokens_per_batch']} tokens per batch; {result['device']} has "
        f"{result['free_mb']:,} MB free"
    )
    table.caption = (
        "MB: frozen weights, LoRA + head with Adam states, activations of one training batch, "
        "one validation batch's working set, runtime"
    )
    for column in ("precision", "quant", "ckpt", "weights", "adam", "activ.", "eval", "runtime", "total", "fits"):
        table.add_column(column, justify="left" if column in ("precision", "quant") else "right")
    for row in result["estimates"]:
        table.add_row(
            row["precision"],
            row["quantize"],
            "yes" if row["gradient_checkpointing"] else "no",
            f"{row['weights_mb']:,}",
            f"{row['trainable_states_mb']:,}",
            f"{row['activations_mb']:,}",
            f"{row['evaluation_mb']:,}",
            f"{row['overhead_mb']:,}",
            f"{row['total_mb']:,}",
            "yes" if row["fits"] else "no",
        )
    Console().print(table)


@app.command()
def presets() -> None:
    """List the model presets."""
    from lorabench.config import preset_dict, preset_names

    for name in preset_names():
        typer.echo(f"{name}\t{preset_dict(name)['model']['source']}")


@app.command()
def compare(
    models: str | None = typer.Option(
        None,
        "--models",
        help="comma-separated presets, model directories or hub "
        "ids, e.g. tfidf,minilm,smollm2 (default: the models in --config)",
    ),
    data: str | None = typer.Option(None, "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="empty directory for the runs, results and report"),
    test: str | None = typer.Option(None, "--test", help="a test file (labels optional)"),
    epochs: int | None = typer.Option(None, help="epochs for every model without its own in --config"),
    max_train_rows: int | None = typer.Option(None, help="training row cap for every model without its own"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML/JSON: shared data/train, per-model entries"),
) -> None:
    """Train several models on the identical split; write results.csv, results.md, charts and report.html."""
    from lorabench.api import compare as run_compare
    from lorabench.distributed import world
    from lorabench.report import display_rows, markdown_table

    names = [name.strip() for name in models.split(",") if name.strip()] if models else None
    table = run_compare(
        names, out, data=data, test=test, epochs=epochs, max_train_rows=max_train_rows, config_file=config
    )
    if world().is_main:  # under torchrun every process returns the table; print it once
        typer.echo(markdown_table(*display_rows(table)) + f"report: {out / 'report.html'}")


@app.command()
def report(directory: Path = typer.Argument(..., help="a directory written by `lorabench compare`")) -> None:
    """Re-render a comparison's results and report.html from its run records, without training."""
    from lorabench.api import render_report
    from lorabench.report import display_rows, markdown_table

    table = render_report(directory)
    typer.echo(markdown_table(*display_rows(table)) + f"report: {directory / 'report.html'}")


THRESHOLD_HELP = "decision threshold on P(positive) for two classes (default: the run's validation-F1 threshold)"


@app.command()
def predict(
    run: Path = typer.Option(..., "--run", "-r", help="a finished run directory"),
    data: Path = typer.Option(..., "--data", "-d", help="CSV / Parquet / JSON Lines file of texts"),
    out: Path = typer.Option(..., "--out", "-o", help="output file: .csv or .jsonl"),
    threshold: float | None = typer.Option(None, help=THRESHOLD_HELP),
    submission: bool = typer.Option(False, "--submission", help="write exactly Kaggle's id,target"),
    text_column: str = typer.Option("text"),
    id_column: str = typer.Option("id"),
    batch_size: int | None = typer.Option(
        None, min=1, help="texts per model call (default: the run's eval batch size)"
    ),
) -> None:
    """Score a file of texts with a trained run: id, target (label) and score per row."""
    from lorabench.predict import predict_file

    result = predict_file(
        run,
        data,
        out,
        threshold=threshold,
        submission=submission,
        text_column=text_column,
        id_column=id_column,
        batch_size=batch_size,
    )
    typer.echo(json.dumps(result))


@app.command()
def export(
    run: Path = typer.Option(..., "--run", "-r", help="a finished run directory"),
    out: Path = typer.Option(..., "--out", "-o", help="directory to write (new, or an earlier export)"),
    merge: bool = typer.Option(False, "--merge", help="merge the adapter into the base: a plain Transformers model"),
) -> None:
    """Export a run: its adapter + head as they are, or merged into a plain Transformers checkpoint."""
    from lorabench.export import export_run

    typer.echo(json.dumps(export_run(run, out, merge=merge)))


@app.command()
def serve(
    run: Path = typer.Option(..., "--run", "-r", help="a finished run directory"),
    host: str = typer.Option("127.0.0.1", help="address to bind; the default accepts local clients only"),
    port: int = typer.Option(8000),
    max_texts: int = typer.Option(64, min=1, help="most texts per request (413 beyond)"),
    max_chars: int = typer.Option(2000, min=1, help="most characters per text (413 beyond)"),
    threshold: float | None = typer.Option(None, help=THRESHOLD_HELP),
    batch_size: int | None = typer.Option(None, min=1, help="texts per model call"),
) -> None:
    """Serve a run over HTTP: POST /predict, GET /health, GET /info, OpenAPI at /docs."""
    from lorabench.serve import serve as serve_run

    serve_run(
        run, host=host, port=port, max_texts=max_texts, max_chars=max_chars, threshold=threshold, batch_size=batch_size
    )


class SweepBackend(str, Enum):
    optuna = "optuna"
    wandb = "wandb"
    ray = "ray"


SPACE_HELP = "search-space YAML (default: the study's, src/lorabench/presets/spaces/study.yaml)"


@app.command()
def sweep(
    model: str | None = typer.Option(None, "--model", "-m", help="preset name, local model directory or hub id"),
    data: str | None = typer.Option(None, "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="sweep directory: trials, database, report (rerun to resume)"),
    trials: int = typer.Option(30, min=1, help="finished trials wanted (the study ran 30)"),
    backend: SweepBackend = typer.Option(SweepBackend.optuna, help="optuna: embedded; wandb: W&B sweep; ray: Ray Tune"),
    storage: str | None = typer.Option(None, help="Optuna storage URL (default: sqlite:///OUT/study.db)"),
    space: Path | None = typer.Option(None, help=SPACE_HELP),
    epochs: int | None = typer.Option(None, min=1),
    max_train_rows: int | None = typer.Option(None, min=1),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="stop hopeless trials after an epoch"),
    seed: int = typer.Option(0, help="the sampler's seed"),
    address: str | None = typer.Option(None, help="Ray cluster address (ray backend; default: a local instance)"),
    cpus_per_trial: float = typer.Option(1.0, help="CPUs each Ray trial reserves"),
    gpus_per_trial: float = typer.Option(0.0, help="GPUs each Ray trial reserves"),
) -> None:
    """Tune LoRA hyperparameters (Bayesian search, best validation F1); writes trials.csv, best.json, charts."""
    from lorabench.api import SweepSettings
    from lorabench.api import sweep as run_sweep

    settings = SweepSettings.build(
        model=model,
        data=data,
        out=out,
        trials=trials,
        backend=_value(backend),
        storage=storage,
        space=space,
        epochs=epochs,
        max_train_rows=max_train_rows,
        prune=prune,
        seed=seed,
        address=address,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
    )
    typer.echo(json.dumps(run_sweep(settings)))


@app.command("sweep-agent")
def sweep_agent(
    model: str | None = typer.Option(None, "--model", "-m"),
    data: str | None = typer.Option(None, "--data", "-d"),
    out: Path = typer.Option(..., "--out", "-o"),
    space: Path | None = typer.Option(None, help=SPACE_HELP),
    epochs: int | None = typer.Option(None, min=1),
    max_train_rows: int | None = typer.Option(None, min=1),
) -> None:
    """One trial of a W&B sweep; `wandb agent` runs this (see OUT/wandb_sweep.yaml)."""
    from lorabench.api import SweepSettings
    from lorabench.sweep.wandb_backend import agent

    agent(
        SweepSettings.build(
            model=model, data=data, out=out, backend="wandb", space=space, epochs=epochs, max_train_rows=max_train_rows
        )
    )


def main() -> None:
    """Console entry point: one clear line instead of a traceback unless --debug."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(standalone_mode=False)
    except LorabenchError as err:
        _fail(err, 2)
    except KeyboardInterrupt:
        _fail(LorabenchError("interrupted"), 130)
    except typer.Abort:
        _fail(LorabenchError("aborted"), 1)
    except Exception as err:  # click's usage errors carry their own exit code
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        _fail(err, 1)


def _fail(err: BaseException, code: int) -> None:
    if _state["debug"]:
        import traceback

        traceback.print_exception(err)
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    prefix = "error" if isinstance(err, LorabenchError) else f"error ({type(err).__name__})"
    print(f"{prefix}: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
