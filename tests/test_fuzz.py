"""Property-based fuzzing of `lorabench data` and `lorabench train --model tfidf` with generated data files.

Every generated file - random column names and order, CSV / TSV / JSON Lines / Parquet, four encodings, two line
endings, four quoting styles (one of them none at all), malformed lines, empty, blank and huge cells, labels of
every type, one or many classes, duplicate or missing ids, `--strict`, a test file, other text and label columns -
must end in exit 0 with a sane record, or in exit 2 with one `error:` line on stderr and nothing written. Never a
traceback, never exit 1. The examples are derandomized, so every run (and CI) tries the same ones;
`--hypothesis-show-statistics` shows which ways of going wrong they tried and how each run ended.

Each failure the fuzzer found has its own regression test at the end, with the minimal file it shrank to.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import lorabench.cli
from conftest import Result
from lorabench.models import tfidf

SUFFIXES = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl", "parquet": ".parquet"}
# "none": cells joined as they are, like a naive export; a delimiter, quote or line break in a cell breaks the row
QUOTING = {"minimal": csv.QUOTE_MINIMAL, "all": csv.QUOTE_ALL, "nonnumeric": csv.QUOTE_NONNUMERIC, "none": None}
JUNK_LINES = {
    "csv": ["", "a", ",,,,,,,,", '"unclosed', "x,y,z"],
    "jsonl": ["", "[1, 2]", "42", "null", "{}", '"text"', '{"text": ', '{"text": "x", "target": 1'],
}
WORDS = ["fire", "flood", "smoke", "sunny", "storm", "calm", "quake", "rescue", "beach", "party"]
# Cells that have broken parsers, consoles or error messages elsewhere: markup, emoji codes, delimiters, quotes,
# line breaks, NA spellings, numbers in disguise, padding, non-ASCII, Unicode line separators, a stray BOM.
NASTY = [
    "[/]",
    "[bold]x[/bold]",
    ":fire:",
    "a,b",
    'say "hi"',
    "line\nbreak",
    "cr\rret",
    "tab\there",
    "NULL",
    "nan",
    "None",
    "NA",
    "-1",
    "1e3",
    "0x10",
    "  padded  ",
    "\u00e9t\u00e9",
    "\u2028",
    "\ufeffbom",
]
# Column names pandas treats specially (read_json converts "date"-like columns) or that collide with defaults.
SPECIAL_NAMES = ["label", "tweet", "sentence", "date", "created_at", "timestamp", "id", "Unnamed: 0", "", " text "]
NOT_SHOWN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


@dataclass
class DataSpec:
    """One generated data set: the train file's columns (name -> cells), how it is written, the CLI flags."""

    fmt: str
    encoding: str
    newline: str
    quoting: str
    ensure_ascii: bool
    columns: dict[str, list]
    text_column: str
    label_column: str
    text_flag: str | None  # what --text-column / --label-column give, if anything
    label_flag: str | None
    junk: str | None  # a malformed line inserted into the file
    strict: bool
    as_json: bool
    test_columns: dict[str, list] | None
    stem: str
    out_name: str


names = st.one_of(
    st.sampled_from(SPECIAL_NAMES),
    st.sampled_from(NASTY),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=10),
)
blank = st.sampled_from([None, "", " ", "\t \n"])
huge = st.sampled_from([5_000, 150_000]).map(lambda n: ("storm surge " * (n // 12 + 1))[:n])
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)
numbers = st.integers(0, 10**10).map(str)
chars = st.characters(exclude_categories=("Cs",))
anything = st.text(max_size=30)
TEXT_STYLES = {
    "words": words,
    "numbers": numbers,
    "chars": chars,
    "any": anything,
    "mixed": st.one_of(words, numbers, chars, anything, st.sampled_from(NASTY), huge),
}
LABEL_KINDS = {
    "int": st.one_of(st.integers(-1, 6), st.just(2**70)),
    "str": st.one_of(st.sampled_from(["pos", "neg", "neutral", "spam"]), st.text(max_size=8), st.sampled_from(NASTY)),
    "float": st.sampled_from([0.0, 1.0, 2.0, 0.5, 1e300, math.nan, math.inf]),
    "bool": st.booleans(),
}
LABEL_KINDS["mixed"] = st.one_of(*LABEL_KINDS.values())


@st.composite
def cells(draw, n: int, style: str, allow_blank: bool) -> list:
    text = TEXT_STYLES[style]
    return draw(st.lists(st.one_of(text, text, text, blank) if allow_blank else text, min_size=n, max_size=n))


@st.composite
def id_cells(draw, n: int) -> list | None:
    mode = draw(st.sampled_from(["none", "unique", "unique", "duplicates", "missing", "strings"]))
    if mode == "none":
        return None
    if mode == "duplicates":
        return draw(st.lists(st.integers(1, max(1, n // 2)), min_size=n, max_size=n))
    if mode == "strings":
        return draw(st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=5)), min_size=n, max_size=n))
    ids = list(range(1, n + 1))
    if mode == "missing":
        ids = [None if draw(st.booleans()) else i for i in ids]
    return ids


# The ways a file can go wrong, each switched on for some examples: an example draws at most three, so most
# files can be trained on and the checks of a finished run get exercised as often as the refusals.
RISKS = [
    *["encoding", "rows", "blank", "style", "labels", "classes", "missing", "strict", "test", "names", "flags", "ids"],
    *["paths", "junk"],
]
SAFE_LABELS = {
    "int": st.integers(0, 6),
    "str": st.sampled_from(["pos", "neg", "neutral", "spam", "fire"]),
    "bool": st.booleans(),
}


@st.composite
def data_specs(draw) -> DataSpec:
    risks = draw(st.sets(st.sampled_from(RISKS), min_size=1, max_size=3))
    for risk in risks:
        event(f"risk {risk}")

    def risky(risk: str, safe, strategy):
        return draw(strategy) if risk in risks else safe

    fmt = draw(st.sampled_from(list(SUFFIXES)))
    text_column = risky("names", "text", st.one_of(names, st.just("text")))
    label_column = risky("names", "target", st.one_of(names, st.just("target")))
    if label_column == text_column:
        label_column += "_label"
    n = draw(st.integers(8, 40)) if "rows" not in risks else draw(st.sampled_from([0, 1, 3, 4]))
    style = risky("style", "words", st.sampled_from(["mixed", "numbers", "chars", "any"]))
    allow_blank = "blank" in risks
    kind = draw(st.sampled_from(list(LABEL_KINDS if "labels" in risks else SAFE_LABELS)))
    classes = risky("classes", draw(st.integers(2, 2 if kind == "bool" else 4)), st.just(1))
    values = LABEL_KINDS[kind] if "labels" in risks else SAFE_LABELS[kind]
    pool = draw(st.lists(values, min_size=classes, max_size=classes, unique_by=repr))

    def table(rows: int, with_labels: bool) -> dict[str, list]:
        columns = {text_column: draw(cells(rows, style, allow_blank))}
        if with_labels:  # every class in turn, so the split gives training rows of each (or a label missing)
            labels = [pool[(i + draw(st.integers(0, 1))) % len(pool)] for i in range(rows)]
            if "missing" in risks and rows:
                labels[draw(st.integers(0, rows - 1))] = None
            columns[label_column] = labels
        ids = risky("ids", list(range(1, rows + 1)) if draw(st.booleans()) else None, id_cells(rows))
        if ids is not None and "id" not in columns:
            columns["id"] = ids
        for extra in draw(st.lists(names, max_size=2)):
            if extra not in columns:
                columns[extra] = draw(st.lists(st.one_of(blank, anything), min_size=rows, max_size=rows))
        order = draw(st.permutations(list(columns)))
        return {name: columns[name] for name in order}

    columns = table(n, with_labels=True)
    test_columns = None
    if "test" in risks:
        test_columns = table(draw(st.integers(1, 8)), with_labels=draw(st.booleans()))
    return DataSpec(
        fmt=fmt,
        encoding=risky("encoding", "utf-8", st.sampled_from(["utf-8-sig", "utf-16", "latin-1"])),
        newline=draw(st.sampled_from(["\n", "\r\n"])),
        quoting=draw(st.sampled_from(list(QUOTING))) if fmt in ("csv", "tsv") else "minimal",
        ensure_ascii=draw(st.booleans()),
        columns=columns,
        text_column=text_column,
        label_column=label_column,
        text_flag=risky(
            "flags",
            text_column if text_column != "text" or draw(st.booleans()) else None,
            st.one_of(st.none(), st.just(label_column), names),
        ),
        label_flag=risky(
            "flags",
            label_column if label_column != "target" or draw(st.booleans()) else None,
            st.one_of(st.none(), st.just(text_column), names),
        ),
        junk=risky("junk", None, st.sampled_from(JUNK_LINES["jsonl" if fmt == "jsonl" else "csv"])),
        strict="strict" in risks,
        as_json=draw(st.integers(0, 3)) != 3,
        test_columns=test_columns,
        stem=risky("paths", "train", st.sampled_from(["my data [/]", "da:fire:ta"])),
        out_name=risky("paths", "out", st.sampled_from(["run [/]", "r:fire:un"])),
    )


# ---- writing the files ----------------------------------------------------------------------------------------


def _as_read(value, spec: DataSpec):
    """What a cell reads back as, before lorabench interprets it: CSV holds strings, Latin-1 loses characters."""
    if value is None:
        return None
    if spec.fmt in ("csv", "tsv"):
        value = str(value)
    if isinstance(value, str) and spec.encoding == "latin-1":
        value = value.encode("latin-1", "replace").decode("latin-1")
    return value


def write_table(path: Path, columns: dict[str, list], spec: DataSpec) -> dict[str, list]:
    """Write `columns` in the spec's format; returns the cells as the file holds them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.fmt == "parquet":
        arrays = {}
        for name, values in columns.items():
            try:
                arrays[name] = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # mixed types, ints past int64: strings
                values = [None if v is None else str(v) for v in values]
                columns = {**columns, name: values}
                arrays[name] = pa.array(values, type=pa.string())
        pq.write_table(pa.table(arrays), path)
        return columns
    delimiter = "\t" if spec.fmt == "tsv" else ","
    lines = []
    for i, row in enumerate([list(columns), *zip(*columns.values(), strict=True)]):
        if spec.fmt == "jsonl":
            if i > 0:  # no header line
                lines.append(json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=spec.ensure_ascii))
        elif spec.quoting == "none":
            lines.append(delimiter.join("" if v is None else str(v) for v in row))
        else:
            # the terminator "\r\n" makes the writer quote every cell with a \r or \n in it (it is cut off here)
            buffer = io.StringIO(newline="")
            csv.writer(buffer, delimiter=delimiter, quoting=QUOTING[spec.quoting], lineterminator="\r\n").writerow(row)
            lines.append(buffer.getvalue()[:-2])
    if spec.junk is not None:
        lines.insert(len(lines) // 2 + 1, spec.junk)
    text = "".join(line + spec.newline for line in lines)
    path.write_bytes(text.encode(spec.encoding, "replace"))
    if spec.fmt in ("csv", "tsv"):  # pandas names a column without a name after its position
        columns = {name or f"Unnamed: {i}": values for i, (name, values) in enumerate(columns.items())}
    return {name: [_as_read(v, spec) for v in values] for name, values in columns.items()}


# ---- what a sane outcome is -----------------------------------------------------------------------------------


def label_name(value) -> str | None:
    """The class name lorabench should make of a label cell (None: refused), computed independently."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else None
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number.is_integer() else None


def is_blank(text) -> bool:
    return text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip()


def assert_one_line_refusal(result: Result, shown: list, failure: BaseException | None) -> str:
    """Exit 2, one `error:` line on stderr that holds the whole message, and no warnings printed before it."""
    assert result.code == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not shown, [str(w.message) for w in shown]  # a real run would print them on stderr too
    for part in str(failure or "").strip().splitlines():  # a name with a line break must not cut the message
        assert part in lines[0], (part, lines[0])
    return lines[0]


def files_under(directory: Path) -> dict[str, int | None]:
    """Every file (with its size) and folder under `directory`."""
    return {str(p.relative_to(directory)): p.stat().st_size if p.is_file() else None for p in directory.rglob("*")}


def run_cli(cli, *args) -> tuple[Result, list, BaseException | None]:
    """Run the command; also return the warnings a real run would print and the exception reported, if any."""
    failures = []

    def fail(err, code):
        failures.append(err)
        real_fail(err, code)

    real_fail = lorabench.cli._fail
    with warnings.catch_warnings(record=True) as caught, mock.patch.object(lorabench.cli, "_fail", fail):
        result = cli(*args)
    note(f"{args[0]}: exit {result.code}\nstdout: {result.stdout[:2000]}\nstderr: {result.stderr[:2000]}")
    shown = [w for w in caught if not issubclass(w.category, NOT_SHOWN)]
    return result, shown, failures[0] if failures else None


def check_data_file(spec: DataSpec, cli, tmp: Path) -> None:
    """Run `data` and `train --model tfidf` on the spec's files and check the outcome (the property)."""
    note(repr(spec))
    written = write_table(tmp / f"{spec.stem}{SUFFIXES[spec.fmt]}", spec.columns, spec)
    flags = [f"--data={tmp / f'{spec.stem}{SUFFIXES[spec.fmt]}'}"]
    if spec.test_columns is not None:
        write_table(tmp / f"test{SUFFIXES[spec.fmt]}", spec.test_columns, spec)
        flags.append(f"--test={tmp / f'test{SUFFIXES[spec.fmt]}'}")
    if spec.text_flag is not None:
        flags.append(f"--text-column={spec.text_flag}")
    if spec.label_flag is not None:
        flags.append(f"--label-column={spec.label_flag}")
    if spec.strict:
        flags.append("--strict")
    before = files_under(tmp)

    data, shown, failure = run_cli(cli, "data", *flags, *(["--json"] if spec.as_json else []))
    assert "Traceback" not in data.stderr
    assert files_under(tmp) == before
    stats = None
    if data.code == 0:
        if spec.as_json:
            stats = json.loads(data.stdout)
            assert stats["splits"]["train"]["rows"] > 0
        else:
            assert "class weights" in data.stdout
    else:
        data_error = assert_one_line_refusal(data, shown, failure)

    out = tmp / spec.out_name
    train, shown, failure = run_cli(cli, "train", "--model", "tfidf", f"--out={out}", *flags)
    assert "Traceback" not in train.stderr
    event(f"{spec.fmt} {spec.encoding}: train exit {train.code}")
    if train.code != 0:
        error = assert_one_line_refusal(train, shown, failure)
        event("refused: " + re.sub(r"'.*?'|\S*/\S*|\d+", "_", error)[7:60])
        assert not out.exists(), files_under(out)
        assert files_under(tmp) == before
        if data.code != 0:
            assert error == data_error  # both commands read the data the same way
        return
    assert data.code == 0, "data refused what train accepted"
    json.loads(train.stdout)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert 0 <= summary["val"]["f1"] <= 1
    assert len(summary["label_names"]) >= 2
    predictions = pd.read_csv(out / "val_predictions.csv", dtype=str, keep_default_na=False)
    assert len(predictions) == summary["rows"]["validation"]
    assert set(predictions["prediction"]) <= {str(name) for name in summary["label_names"]}
    outside = {
        k: v for k, v in files_under(tmp).items() if not ((tmp / k).is_relative_to(out) or out.is_relative_to(tmp / k))
    }
    assert outside == before

    # The record holds the file's classes and rows, nothing invented, nothing lost (in a well-formed file).
    if stats is not None:
        assert stats["label_names"] == summary["label_names"]
    if spec.junk is not None or spec.quoting == "none":
        return
    text_column = "text" if spec.text_flag is None else spec.text_flag
    label_column = "target" if spec.label_flag is None else spec.label_flag
    assert text_column in written and label_column in written
    expected_names = {label_name(v) for v in written[label_column] if v is not None}
    assert {str(name) for name in summary["label_names"]} <= expected_names
    kept = [t for t in written[text_column] if not is_blank(t)]
    assert summary["rows"]["train"] + summary["rows"]["validation"] == len(kept)
    if stats is not None:
        assert max(stats["splits"][s]["max_chars"] for s in ("train", "validation")) == max(map(len, map(str, kept)))


# The same 60 examples on every run (about 12 s on 2 cores). To search further with fresh random examples:
# LORABENCH_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py
SEARCH = int(os.environ.get("LORABENCH_FUZZ_EXAMPLES", "0"))


@pytest.mark.slow
@settings(
    max_examples=SEARCH or 60,
    deadline=None,
    derandomize=not SEARCH,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=data_specs())
def test_any_data_file_is_trained_or_refused_in_one_line(spec, cli):
    # The property is about reading files, not about C: one C over 2 folds still runs choose_c on every odd
    # label set, at 2 logistic-regression fits per example instead of 25.
    with tempfile.TemporaryDirectory() as tmp, mock.patch.multiple(tfidf, C_GRID=[1.0], CV_FOLDS=2):
        check_data_file(spec, cli, Path(tmp))


# ---- regressions: the minimal files the fuzzer found ----------------------------------------------------------


def refusal_line(result: Result) -> str:
    """Exit 2 and exactly one `error:` line on stderr, which is returned."""
    assert result.code == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def labelled_csv(path: Path, texts: list, labels: list, **columns) -> Path:
    pd.DataFrame({"text": texts, "target": labels, **columns}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "texts", [list("abcdefgh"), [str(100 + i) for i in range(8)]], ids=["single-characters", "unique-numbers"]
)
def test_tfidf_refuses_texts_without_a_vocabulary_and_leaves_no_run_directory(texts, cli, tmp_path):
    """Found: exit 1 `error (ValueError): empty vocabulary; ...` (or `After pruning, no terms remain`), --out left
    holding config.yaml, and the note on the skipped empty text printed before the error line."""
    data = labelled_csv(tmp_path / "train.csv", [*texts, ""], [i % 2 for i in range(9)])
    line = refusal_line(cli("train", "--model", "tfidf", "--data", data, "--out", tmp_path / "out"))
    assert line.startswith("error: tfidf: the training texts give no vocabulary ("), line
    assert "texts); check that the text column holds the texts" in line
    assert not (tmp_path / "out").exists()


def test_markup_and_emoji_codes_in_paths_names_and_ids_are_printed_as_they_are(cli, tmp_path):
    """Found: `train --out 'run [/]'` wrote the whole record, then exited 1 with `error (MarkupError): closing tag
    '[/]' ... has nothing to close` on its last message; `data` did the same with a class named '[/]': rich read
    the user's text as markup (and ':fire:' as an emoji)."""
    data = labelled_csv(
        tmp_path / "train.csv", ["fire smoke", "calm beach"] * 6, ["[/]", ":fire:"] * 6, id=["[/b]"] * 12
    )
    result = cli("train", "--model", "tfidf", "--data", data, "--out", tmp_path / "run [/]")
    assert result.code == 0, result
    assert "note: train data has 1 duplicate ids (e.g. [/b])" in result.stderr
    assert (tmp_path / "run [/]" / "summary.json").is_file()
    table = cli("data", "--data", data)
    assert table.code == 0, table
    assert "class [/]" in table.stdout and "class :fire:" in table.stdout


def test_prediction_files_stay_readable_when_ids_or_class_names_hold_a_carriage_return(cli, tmp_path):
    """Found: a JSON Lines label '0\\r0' went into val_predictions.csv unquoted (Python < 3.13's csv writer quotes
    a \\r only when rows end with one), so the file read back with more rows than the validation split has."""
    data = tmp_path / "train.jsonl"
    rows = [
        {"id": f"row\r{i}", "text": "fire smoke" if i % 2 else "calm beach", "target": ["0", "0\r0"][i % 2]}
        for i in range(12)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "out"
    assert cli("train", "--model", "tfidf", "--data", data, "--out", out).code == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    predictions = pd.read_csv(out / "val_predictions.csv", dtype=str, keep_default_na=False)
    assert len(predictions) == summary["rows"]["validation"] == 3
    assert set(predictions["prediction"]) <= {"0", "0\r0"}
    assert predictions["id"].str.startswith("row\r").all()


def test_an_error_line_shows_line_breaks_in_names_escaped_instead_of_cutting_the_message(cli, tmp_path):
    """Found: `--label-column $'\\r'` printed `error: train data has no label column '` and nothing more: the
    message was cut at the line break in the name, losing the columns the file has."""
    data = labelled_csv(tmp_path / "train.csv", ["fire"] * 8, [0, 1] * 4)
    result = cli("train", "--model", "tfidf", "--data", data, "--out", tmp_path / "out", "--label-column", "\r")
    assert refusal_line(result) == "error: train data has no label column '\\r' (columns: text, target)"


@pytest.mark.parametrize("command", ["train", "data"])
def test_the_label_column_is_refused_as_the_text_column(command, cli, tmp_path):
    """Found: `--text-column target` trained on the labels themselves (read as texts 'False' / 'True'), and the
    cleaned texts became the class names; a model handed its answer is no model."""
    data = labelled_csv(tmp_path / "train.csv", ["fire smoke", "calm beach"] * 6, [True, False] * 6)
    flags = ["--model", "tfidf", "--out", tmp_path / "out"] if command == "train" else []
    result = cli(command, "--data", data, "--text-column", "target", *flags)
    assert "data.text_column and data.label_column are both 'target'" in refusal_line(result)
    assert not (tmp_path / "out").exists()
