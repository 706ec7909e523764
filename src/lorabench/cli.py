"""The `lorabench` command: a thin typer layer over the Python API.

The settings' flags are not declared here: `schema_options` builds each from its pydantic field (name, type,
choices, help), so a setting is written once, in lorabench.core.config or the sweep's settings, and `--set
section.key=value` reaches every other one. Errors in the user's input arrive as LorabenchError and are printed as
one line with exit status 2; any other failure prints one line too (exit 1), and `--debug` shows the traceback
with its chained causes. Each command imports its own stack (torch, pandas, fastapi, optuna...) when it runs, so
`--help`, `--version` and usage errors answer at once.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lorabench import __version__
from lorabench.core.config import (
    COMMA_SEPARATED,
    DATA_COLUMNS,
    DataConfig,
    ExportFormat,
    LoraSettings,
    ModelConfig,
    Quantization,
    SweepSettings,
    TrainSettings,
    merge,
    parse_assignments,
    preset_dict,
    preset_names,
    validate,
)
from lorabench.core.console import set_progress
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.schemas import DataChecks, LabelIssues
from lorabench.core.settings import ServeSettings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: typer's rich help labels every flag <bool>
    help="Fine-tune pretrained language models with LoRA for text classification.",
)
_state = {"debug": False}

SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "lora": LoraSettings,
    "train": TrainSettings,
}
# Friendlier names than --name / --source for the two settings every command takes.
FLAGS = {"model.name": ("--model", "-m"), "data.source": ("--data", "-d"), "model": ("--model", "-m"), "data": ("--data", "-d")}  # fmt: skip
# where str.splitlines splits, as escape sequences
ESCAPED_LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode() for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}
SET_HELP = "any run setting as section.key=value, e.g. --set train.warmup=0.05 (repeatable)"


def _flag(section: str, key: str) -> tuple[str, ...]:
    path = f"{section}.{key}" if section else key
    if path in FLAGS:
        return FLAGS[path]
    return ("--" + (f"lora-{key}" if section == "lora" else key).replace("_", "-"),)


def _option_type(annotation: Any) -> Any:
    """The type a flag parses to: the field's own, with `bool | Literal["auto"]` as a plain on/off flag (auto stays
    the config's) and lists or mappings left out (None; they come through --set or a config file)."""
    if get_origin(annotation) in (list, dict):
        return None
    members = [member for member in get_args(annotation) if member is not type(None)] or [annotation]
    if get_origin(annotation) is Literal:
        return annotation
    if bool in members:
        return bool
    member = members[0]
    return member if get_origin(member) is Literal or member in (int, float, str, Path) else None


def _parameter(schema: type[BaseModel], section: str, key: str) -> inspect.Parameter | None:
    """One keyword parameter whose default is the typer option for `schema.key` (None: no flag for it)."""
    field = schema.model_fields[key]
    kind = str if COMMA_SEPARATED in field.metadata else _option_type(field.annotation)
    if kind is None:
        return None
    names = _flag(section, key)
    if kind is bool:
        names = (f"{names[0]}/--no-{names[0][2:]}", *names[1:])
    name = f"{section}__{key}" if section else key
    option = typer.Option(None, *names, help=field.description)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None)


def schema_options(fields: dict[str, tuple[type[BaseModel], list[str]]]) -> Callable:
    """Decorator: adds an option per schema field (`{section: (schema, keys)}`; section "" for flat settings)
    and hands the command the given values as one nested `overrides` mapping (None = not given)."""

    def decorate(command: Callable) -> Callable:
        generated = [
            parameter
            for section, (schema, keys) in fields.items()
            for key in keys
            if (parameter := _parameter(schema, section, key)) is not None
        ]

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            overrides: dict[str, Any] = {}
            for parameter in generated:
                section, _, key = parameter.name.rpartition("__")
                value = values.pop(parameter.name)
                (overrides.setdefault(section, {}) if section else overrides)[key] = value
            return command(overrides=overrides, **values)

        own = [p for p in inspect.signature(command).parameters.values() if p.name != "overrides"]
        wrapper.__signature__ = inspect.Signature(own + generated)
        return wrapper

    return decorate


def run_settings(*sections: str) -> dict[str, tuple[type[BaseModel], list[str]]]:
    return {section: (SECTIONS[section], list(SECTIONS[section].model_fields)) for section in sections}


def data_options(*keys: str, section: str = "data") -> dict[str, tuple[type[BaseModel], list[str]]]:
    """The data settings `keys` and the user's columns (DATA_COLUMNS): one set of flags for every command that
    reads data, handed to it as overrides[section]."""
    return {section: (DataConfig, [*keys, *DATA_COLUMNS])}


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
@schema_options(run_settings("model", "data", "lora", "train"))
def train(
    overrides: dict,
    out: Path = typer.Option(..., "--out", "-o", help="run directory to write"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML/JSON run config"),
    assignments: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
) -> None:
    """Fine-tune one model with LoRA (or fit another kind) and write its run record."""
    from lorabench import api
    from lorabench.core.storage import CONFIG_FILE
    from lorabench.training.distributed import world

    model = overrides["model"].pop("name")
    if resume and model is None and config is None:  # `train --resume --out RUN` continues RUN as configured
        if not (out / CONFIG_FILE).is_file():
            raise LorabenchError(f"nothing to resume: {out} holds no lorabench run (give --model to start one)")
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
    _print_stats(stats)
    if issues is not None:
        _print_label_issues(issues)


def _print_stats(stats: dict) -> None:
    console = Console(markup=False, emoji=False)  # class and column names, paths and notes are shown as they are
    names = [str(n) for n in stats["label_names"]]
    table = Table(title=f"data: {stats['source']}")
    for column in ["split", "rows", *[f"class {n}" for n in names], "max chars", "max words"]:
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, entry in stats["splits"].items():
        counts = entry.get("class_counts", {})
        table.add_row(split, str(entry["rows"]), *[str(counts.get(n, "-")) for n in names],
                      str(entry["max_chars"]), str(entry["max_words"]))  # fmt: skip
    console.print(table)
    missing = Table(title="missing values per column")
    for column in ("split", "column", "missing"):
        missing.add_column(column, justify="right" if column == "missing" else "left")
    for split, columns in stats["missing"].items():
        for column, count in columns.items():
            missing.add_row(split, column, str(count))
    console.print(missing)
    weights = ", ".join(f"{n}: {w}" for n, w in stats["class_weights"].items())
    console.print(f"class weights n / (k * count): {weights}")
    _print_checks(console, stats)
    if stats["windows"]:
        _print_windows(console, stats["windows"])
    for note in stats["notes"]:
        console.print(f"note: {note}")


def _print_windows(console: Console, windows: list[dict]) -> None:
    table = Table(title="texts longer than each model's window (train.max_length, in its own tokens)")
    for column in ("model", "window", "longer", "share", "longest"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in windows:
        if row["longer"] is None:
            table.add_row(row["model"], str(row["window"] or "-"), row["error"], "", "")
        else:
            table.add_row(row["model"], str(row["window"]), f"{row['longer']:,} of {row['texts']:,}",
                          f"{row['share']:.0%}", str(row["longest"]))  # fmt: skip
    console.print(table)


def _print_checks(console: Console, stats: dict) -> None:
    checks = DataChecks.model_validate(stats["checks"])
    table = Table(title=f"checks of the split ({checks.labelled_rows} labelled rows)")
    for column in ("check", "texts", "rows", "examples"):
        table.add_column(column, justify="right" if column in ("texts", "rows") else "left")
    for label, groups in checks.labelled_groups():
        table.add_row(label, str(groups.texts), str(groups.rows), escape("\n".join(groups.examples)))
    console.print(table)
    split = stats["split"]
    rows = split["rows"]
    console.print(
        f"validation: {split['validation_rows_in_train_normalised']} of {rows['validation']} rows have a near "
        f"duplicate in train ({split['validation_rows_in_train']} the exact text); split with "
        f"duplicates: {split['duplicates']}, conflicts: {split['conflicts']}"
    )
    if split["grouped_rows"]:
        grouped = split["grouped_rows"]
        console.print(
            f"duplicates: group would split {grouped['train']} / {grouped['validation']} rows (now {rows['train']} / "
            f"{rows['validation']}) with no near duplicate on both sides"
        )


ISSUE_HEADERS = {"given_label": "given", "predicted_label": "predicted", "given_label_prob": "P(given)"}


def _print_label_issues(issues: LabelIssues) -> None:
    from lorabench.workflows.label_issues import OOF_FILE

    console = Console(markup=False, emoji=False)
    rows = "validation rows" if issues.only_validation else "out-of-fold rows"
    console.print(
        f"label issues: {issues.flagged_rows} of {issues.checked_rows} {rows} flagged (cleanlab, lowest "
        f"probability of the given label first); all in {issues.out}"
    )
    if issues.only_validation:
        console.print(f"note: only validation rows were checked: {issues.run} has no {OOF_FILE} (train --folds K)")
    if issues.top:
        table = Table(title=f"the {len(issues.top)} likeliest label errors")
        for column in issues.top[0]:
            header = ISSUE_HEADERS.get(column, column)
            table.add_column(header, justify="left" if column in ("id", "text") else "right")
        for row in issues.top:
            table.add_row(*[str(value).translate(ESCAPED_LINE_BREAKS) for value in row.values()])
        console.print(table)
    if issues.conflicting_texts_checked:
        unchecked = issues.conflicting_texts - issues.conflicting_texts_checked
        console.print(
            f"conflicting texts flagged: {issues.conflicting_texts_flagged}/{issues.conflicting_texts_checked}"
            + (f" ({unchecked} more in the data were not checked)" if unchecked else "")
        )


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
@schema_options({**data_options("source", "test", "max_train_rows"), "train": (TrainSettings, ["epochs"])})
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
) -> None:
    """Train several models on the identical split; write results.csv, results.md, charts and report.html."""
    from lorabench import api
    from lorabench.training.distributed import world

    names = [name.strip() for name in models.split(",") if name.strip()] if models else None
    table = api.compare(names, out, overrides=overrides, config_file=config, seeds=seeds, ensemble=ensemble)
    if world().is_main:  # under torchrun every process returns the table; print it once
        typer.echo(results_text(table, out))


@app.command()
def report(directory: Path = typer.Argument(..., help="a directory written by `lorabench compare`")) -> None:
    """Re-render a comparison's results and report.html from its run records, without training."""
    from lorabench import api

    table = api.render_report(directory)
    typer.echo(results_text(table, directory))


def results_text(table, out: Path) -> str:
    """What compare and report print: the verdict, the results table, and where the report is."""
    from lorabench.workflows.report import display_rows, markdown_table, verdict_of

    verdict = "\n".join(verdict_of(table).sentences)
    return f"{verdict}\n\n{markdown_table(*display_rows(table))}report: {out / 'report.html'}"


THRESHOLD_HELP = "decision threshold on P(positive) for two classes (default: the run's validation-F1 threshold)"
BATCH_HELP = "texts per model call (default: the run's eval batch size)"


@app.command()
@schema_options(data_options())
def predict(
    overrides: dict,
    run: Path = typer.Option(..., "--run", "-r", help="a finished run directory"),
    data: Path = typer.Option(..., "--data", "-d", help="CSV / Parquet / JSON Lines file of texts"),
    out: Path = typer.Option(..., "--out", "-o", help="output file: .csv or .jsonl"),
    threshold: float | None = typer.Option(None, help=THRESHOLD_HELP),
    submission: bool = typer.Option(False, "--submission", help="write exactly Kaggle's id,target"),
    probabilities: bool = typer.Option(
        False, "--probabilities", help="add prob_<class> per class, as the run's val/test_predictions.csv"
    ),
    batch_size: int | None = typer.Option(None, min=1, help=BATCH_HELP),
) -> None:
    """Score a file of texts with a trained run: its id, the predicted label and score per row, named and built
    from the run's columns (its config.yaml's data settings) unless the column flags say otherwise."""
    from lorabench import api

    result = api.predict_file(run, data, out, threshold=threshold, submission=submission, batch_size=batch_size,
                              probabilities=probabilities, **overrides["data"])  # fmt: skip
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
    try:
        app(standalone_mode=False)
    except LorabenchError as err:
        _fail(err, 2)
    except KeyboardInterrupt:
        _fail(LorabenchError("interrupted"), 130)
    except typer.Abort:
        _fail(LorabenchError("aborted"), 1)
    except typer.TyperException as err:  # a usage error (typer's own click): one line naming the option, exit 2
        message = err.format_message() if hasattr(err, "format_message") else first_line(err)
        _fail(LorabenchError(message), 2)
    except Exception as err:
        _fail(err, 1)


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
