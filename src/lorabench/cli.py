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
from typing import Optional

import typer

from lorabench.errors import LorabenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune pretrained language models with LoRA for text classification.")
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


def _value(option):
    return option.value if isinstance(option, Enum) else option


@app.command()
def train(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="preset name, local model directory or hub id"),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="run directory to write"),
    test: Optional[str] = typer.Option(None, "--test", help="a test file (labels optional)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML/JSON run config"),
    epochs: Optional[int] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None),
    lora_r: Optional[int] = typer.Option(None),
    lora_alpha: Optional[float] = typer.Option(None),
    lora_dropout: Optional[float] = typer.Option(None),
    lora_bias: Optional[LoraBias] = typer.Option(None),
    max_length: Optional[int] = typer.Option(None),
    max_train_rows: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    precision: Optional[Precision] = typer.Option(None),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    tracking: Optional[Tracking] = typer.Option(None),
    gguf_file: Optional[str] = typer.Option(None, help="GGUF file name inside the model directory"),
    text_column: Optional[str] = typer.Option(None),
    label_column: Optional[str] = typer.Option(None),
    strict: Optional[bool] = typer.Option(None, "--strict", help="refuse empty texts instead of skipping them"),
    trust_remote_code: Optional[bool] = typer.Option(None, "--trust-remote-code", help="allow a model's own Python code"),
    allow_pickle: Optional[bool] = typer.Option(None, "--allow-pickle", help="allow pickle (.bin) weights"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
) -> None:
    """Fine-tune one model with LoRA and write its run record."""
    from lorabench.api import train as train_run
    from lorabench.config import resolve_config

    overrides = {
        "model": {"gguf_file": gguf_file, "trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle},
        "data": {"source": data, "test": test, "text_column": text_column, "label_column": label_column,
                 "max_train_rows": max_train_rows, "strict": strict},
        "lora": {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "bias": _value(lora_bias)},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "max_length": max_length, "seed": seed,
                  "precision": _value(precision), "gradient_checkpointing": gradient_checkpointing,
                  "tracking": _value(tracking)},
    }
    run_config = resolve_config(model, config, overrides)
    summary = train_run(run_config, out, resume=resume)
    typer.echo(json.dumps({key: summary[key] for key in ("model", "best_epoch", "val", "test", "train_seconds",
                                                          "peak_memory_mb", "trainable_percent")}))


@app.command()
def data(
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP),
    test: Optional[str] = typer.Option(None, "--test"),
    text_column: Optional[str] = typer.Option(None),
    label_column: Optional[str] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
) -> None:
    """Show the data's statistics: rows per split, classes, missing values, text lengths, class weights."""
    from lorabench.config import DataConfig
    from lorabench.data import describe

    overrides = {"source": data, "test": test, "text_column": text_column, "label_column": label_column}
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
        table.add_row(split, str(entry["rows"]), *[str(counts.get(n, "-")) for n in names],
                      str(entry["max_chars"]), str(entry["max_words"]))
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
def presets() -> None:
    """List the model presets."""
    from lorabench.config import preset_dict, preset_names

    for name in preset_names():
        typer.echo(f"{name}\t{preset_dict(name)['model']['source']}")


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
