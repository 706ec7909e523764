"""Bad input through the real CLI: one clear line on stderr, exit status 2, no traceback, nothing written.

Most cases run `lorabench.cli.main` in this process (a subprocess costs seconds of imports each); the cases in
`test_real_entry_point` run `python -m lorabench.cli` to show the installed path behaves the same. Data cases
pass `--model` pointing at a directory that does not exist: if a data check were missing, the run would stop
there with a different message, so the test fails fast instead of training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import Result, smollm2_gguf


def assert_refused(result: Result, *fragments: str) -> None:
    """Exit 2, exactly one `error:` line naming the problem, no traceback."""
    assert result.code == 2, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])


def rows(n: int = 12, **columns) -> pd.DataFrame:
    """n labelled rows in the disaster tweets' layout (id, text, target), two classes."""
    frame = pd.DataFrame(
        {
            "id": range(1, n + 1),
            "text": [f"tweet {i} about {'fire' if i % 2 else 'sunshine'}" for i in range(n)],
            "target": [i % 2 for i in range(n)],
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, pd.DataFrame):
        content.to_csv(path, index=False)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# Each case builds its input under tmp and returns (data options, fragments the error line must contain).
def _missing_file(tmp):
    return ["--data", tmp / "nowhere" / "train.csv"], ["not found", "train.csv"]


def _missing_directory(tmp):
    return ["--data", tmp / "no_such_dir"], ["not found", "no_such_dir"]


def _directory_without_train(tmp):
    write(tmp / "d" / "test.csv", rows().drop(columns="target"))
    return ["--data", tmp / "d"], ["no training data", "train.csv"]


def _unknown_format(tmp):
    data = write(tmp / "train.xlsx", b"PK\x03\x04 not really a spreadsheet")
    return ["--data", data], ["unknown data format", ".xlsx"]


def _wrong_delimiter(tmp):
    return ["--data", write(tmp / "train.csv", rows().to_csv(index=False, sep=";"))], ["';'", "delimit"]


def _wrong_delimiter_with_commas_in_text(tmp):
    frame = rows(text=["fire" + ", smoke" * (i % 3) for i in range(12)])  # rows of 2, 3, 4 ','-fields
    return ["--data", write(tmp / "train.csv", frame.to_csv(index=False, sep=";"))], ["';'", "delimit"]


def _latin1(tmp):
    text = rows(text=[f"caf\u00e9 fire {i}" for i in range(12)]).to_csv(index=False)
    return ["--data", write(tmp / "train.csv", text.encode("latin-1"))], ["not UTF-8", "0xe9", "iconv"]


def _empty_file(tmp):
    return ["--data", write(tmp / "train.csv", b"")], ["empty"]


def _header_only(tmp):
    return ["--data", write(tmp / "train.csv", "id,text,target\n")], ["header but no rows"]


def _missing_text_column(tmp):
    data = write(tmp / "train.csv", rows().rename(columns={"text": "tweet"}))
    return ["--data", data], ["no text column 'text'", "tweet"]


def _missing_label_column(tmp):
    return ["--data", write(tmp / "train.csv", rows().drop(columns="target"))], ["no label column 'target'"]


def _fractional_label(tmp):
    data = write(tmp / "train.csv", rows(target=[0.5] + [i % 2 for i in range(1, 12)]))
    return ["--data", data], ["'0.5'", "neither an integer"]


def _negative_label(tmp):
    return ["--data", write(tmp / "train.csv", rows(target=[-1] + [i % 2 for i in range(1, 12)]))], [">= 0", "-1"]


def _single_class(tmp):
    return ["--data", write(tmp / "train.csv", rows(target=[1] * 12))], ["single class"]


def _duplicate_test_ids(tmp):
    write(tmp / "d" / "train.csv", rows())
    write(tmp / "d" / "test.csv", rows(id=[1, 2, 3, 3, 5, 6, 7, 8, 9, 9, 11, 12]).drop(columns="target"))
    return ["--data", tmp / "d"], ["test data has 2 duplicate ids", "3, 9", "column 'id'"]


def _missing_test_ids(tmp):
    write(tmp / "d" / "train.csv", rows())
    write(tmp / "d" / "test.csv", rows(id=[1, 2, None] + list(range(4, 13))).drop(columns="target"))
    return ["--data", tmp / "d"], ["test data has 1 rows without an id"]


def _validation_label_unseen_in_training(tmp):
    write(tmp / "d" / "train.csv", rows())
    write(tmp / "d" / "validation.csv", rows(target=[7] * 12))
    return ["--data", tmp / "d"], ["labels 7", "do not occur in the training data"]


def _corrupt_parquet(tmp):
    return ["--data", write(tmp / "train.parquet", b"PAR1 this is not parquet PAR1")], ["cannot parse", "parquet"]


def _broken_jsonl(tmp):
    data = write(tmp / "train.jsonl", '{"text": "fire", "target": 1}\n{"text": "oops", \n')
    return ["--data", data], ["cannot parse", "jsonl"]


def _missing_test_file(tmp):
    return ["--data", write(tmp / "train.csv", rows()), "--test", tmp / "test.csv"], ["not found", "test.csv"]


DATA_CASES = {
    "missing_file": _missing_file,
    "missing_directory": _missing_directory,
    "directory_without_train": _directory_without_train,
    "unknown_format": _unknown_format,
    "wrong_delimiter": _wrong_delimiter,
    "wrong_delimiter_with_commas_in_text": _wrong_delimiter_with_commas_in_text,
    "latin1": _latin1,
    "empty_file": _empty_file,
    "header_only": _header_only,
    "missing_text_column": _missing_text_column,
    "missing_label_column": _missing_label_column,
    "fractional_label": _fractional_label,
    "negative_label": _negative_label,
    "single_class": _single_class,
    "duplicate_test_ids": _duplicate_test_ids,
    "missing_test_ids": _missing_test_ids,
    "validation_label_unseen_in_training": _validation_label_unseen_in_training,
    "corrupt_parquet": _corrupt_parquet,
    "broken_jsonl": _broken_jsonl,
    "missing_test_file": _missing_test_file,
}


@pytest.fixture
def absent_model(tmp_path) -> Path:
    return tmp_path / "absent-model"


@pytest.mark.parametrize("command", ["data", "train"])
@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_is_refused_in_one_line(case, command, cli, tmp_path, absent_model):
    data_args, fragments = DATA_CASES[case](tmp_path / "in")
    out = tmp_path / "out"
    if command == "data":
        result = cli("data", *data_args)
    else:
        result = cli("train", "--model", absent_model, "--out", out, "--epochs", 1, *data_args)
    assert_refused(result, *fragments)
    assert not out.exists()


def test_unreadable_file_is_refused(cli, tmp_path, monkeypatch, absent_model):
    data = write(tmp_path / "train.csv", rows())
    real_read_bytes = Path.read_bytes

    def denied(path):
        if path == data:  # root reads a chmod 000 file anyway, so the refusal is simulated
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    result = cli("train", "--model", absent_model, "--data", data, "--out", tmp_path / "out")
    assert_refused(result, "cannot read", "permission denied")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_read_permission_is_refused(cli, tmp_path, absent_model):
    data = write(tmp_path / "train.csv", rows())
    data.chmod(0)
    assert_refused(cli("data", "--data", data), "cannot read", "permission denied")


def test_empty_texts_are_skipped_and_counted_or_refused_when_strict(cli, tmp_path):
    texts = ["", "   ", None] + [f"fire {i}" for i in range(9)]
    data = write(tmp_path / "train.csv", rows(text=texts))
    result = cli("data", "--data", data, "--json")
    assert result.code == 0, result
    stats = json.loads(result.stdout)
    assert "skipped 3 train rows with an empty or missing text" in stats["notes"]
    assert stats["splits"]["train"]["rows"] + stats["splits"]["validation"]["rows"] == 9
    assert_refused(cli("data", "--data", data, "--strict"), "3 empty or missing texts", "--strict")


def test_duplicate_training_ids_are_noted_not_refused(cli, tmp_path):
    data = write(tmp_path / "train.csv", rows(id=[1, 1] + list(range(3, 13))))
    result = cli("data", "--data", data, "--json")
    assert result.code == 0, result
    assert "train data has 1 duplicate ids (e.g. 1) in column 'id'" in json.loads(result.stdout)["notes"]


# ---- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--lr", "-0.001"], ["train.lr", "greater than 0"]),
        (["--lora-r", "0"], ["lora.r", "greater than 0"]),
        (["--lora-dropout", "1.0"], ["lora.dropout", "less than 1"]),
        (["--epochs", "0"], ["train.epochs"]),
        (["--batch-size", "-4"], ["train.batch_size"]),
        (["--max-length", "1"], ["train.max_length"]),
        (["--save-every-steps", "0"], ["train.save_every_steps"]),
    ],
)
def test_invalid_config_values_are_named(flags, fragments, cli, tmp_path, absent_model):
    data = write(tmp_path / "train.csv", rows())
    result = cli("train", "--model", absent_model, "--data", data, "--out", tmp_path / "out", *flags)
    assert_refused(result, "invalid config value", *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content, fragments",
    [
        ("train:\n  learning_rate: 0.001\n", ["unknown config key 'train.learning_rate'"]),
        ("optimiser: {name: adam}\n", ["unknown config key 'optimiser'"]),
        ("lora:\n  r: 0\n", ["lora.r"]),
        ("train: [1, 2\n", ["cannot read config file"]),
        ("- just\n- a list\n", ["must hold a mapping"]),
    ],
)
def test_bad_config_file_is_named(content, fragments, cli, tmp_path, absent_model):
    config = write(tmp_path / "run.yaml", content)
    data = write(tmp_path / "train.csv", rows())
    result = cli("train", "--model", absent_model, "--data", data, "--config", config, "--out", tmp_path / "out")
    assert_refused(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_missing_config_file(cli, tmp_path, absent_model):
    result = cli("train", "--config", tmp_path / "nope.yaml", "--out", tmp_path / "out")
    assert_refused(result, "config file not found", "nope.yaml")


# ---- models ---------------------------------------------------------------------------------------------------


def _copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _not_a_model(tmp, tiny):
    write(tmp / "m" / "notes.txt", "hello")
    return ["--model", tmp / "m"], ["not a model directory", "no config.json"]


def _model_path_is_a_file(tmp, tiny):
    return ["--model", write(tmp / "model.txt", "hello")], ["not a directory"]


def _model_path_missing(tmp, tiny):
    return ["--model", tmp / "gone"], ["does not exist"]


def _config_json_broken(tmp, tiny):
    model = _copy_model(tiny, tmp / "m")
    write(model / "config.json", "{not json")
    return ["--model", model], ["config.json is not valid JSON"]


def _unknown_model_type(tmp, tiny):
    model = _copy_model(tiny, tmp / "m")
    config = json.loads((model / "config.json").read_text())
    write(model / "config.json", json.dumps({**config, "model_type": "no-such-architecture"}))
    return ["--model", model], ["model_type 'no-such-architecture'"]


def _no_weights(tmp, tiny):
    model = _copy_model(tiny, tmp / "m")
    (model / "model.safetensors").unlink()
    return ["--model", model], ["no model weights"]


def _no_tokenizer(tmp, tiny):
    model = _copy_model(tiny, tmp / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink()
    return ["--model", model], ["no tokenizer files"]


def _truncated_safetensors(tmp, tiny):
    model = _copy_model(tiny, tmp / "m")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["--model", model], ["model.safetensors is not a valid safetensors file", "download it again"]


def _garbled_safetensors(tmp, tiny):
    model = _copy_model(tiny, tmp / "m")
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    return ["--model", model], ["not a valid safetensors file"]


def _missing_shard(tmp, tiny):
    model = _copy_model(tiny, tmp / "m")
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    write(model / "model.safetensors.index.json", json.dumps(index))
    return ["--model", model], ["lacks weight files", "model-00002-of-00002.safetensors"]


def _gguf_wrong_magic(tmp, tiny):
    write(tmp / "m" / "model.gguf", b"NOPE" + os.urandom(256))
    return ["--model", tmp / "m", "--gguf-file", "model.gguf"], ["not a valid GGUF file", "magic"]


def _gguf_garbage_after_magic(tmp, tiny):
    write(tmp / "m" / "model.gguf", b"GGUF" + os.urandom(4096))
    return ["--model", tmp / "m", "--gguf-file", "model.gguf"], ["not a valid GGUF file"]


def _gguf_unknown_architecture(tmp, tiny):
    import gguf
    import numpy as np

    (tmp / "m").mkdir(parents=True)
    writer = gguf.GGUFWriter(str(tmp / "m" / "model.gguf"), "no-such-architecture")  # well formed, but no reader
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return ["--model", tmp / "m", "--gguf-file", "model.gguf"], ["architecture no-such-architecture is not supported"]


def _gguf_missing(tmp, tiny):
    (tmp / "m").mkdir(parents=True)
    return ["--model", tmp / "m", "--gguf-file", "model.gguf"], ["GGUF file model.gguf not found"]


MODEL_CASES = {
    "not_a_model": _not_a_model,
    "model_path_is_a_file": _model_path_is_a_file,
    "model_path_missing": _model_path_missing,
    "config_json_broken": _config_json_broken,
    "unknown_model_type": _unknown_model_type,
    "no_weights": _no_weights,
    "no_tokenizer": _no_tokenizer,
    "truncated_safetensors": _truncated_safetensors,
    "garbled_safetensors": _garbled_safetensors,
    "missing_shard": _missing_shard,
    "gguf_wrong_magic": _gguf_wrong_magic,
    "gguf_garbage_after_magic": _gguf_garbage_after_magic,
    "gguf_missing": _gguf_missing,
    "gguf_unknown_architecture": _gguf_unknown_architecture,
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model_is_refused_before_loading(case, cli, tmp_path, tiny_models, small_data):
    model_args, fragments = MODEL_CASES[case](tmp_path / "in", tiny_models["roberta"])
    out = tmp_path / "out"
    result = cli("train", *model_args, "--data", small_data, "--out", out, "--epochs", 1)
    assert_refused(result, *fragments)
    assert not out.exists()


def test_truncated_real_gguf_is_refused(cli, tmp_path, small_data):
    real = smollm2_gguf()
    model = tmp_path / "m"
    model.mkdir()
    with open(real, "rb") as handle:
        (model / "model.gguf").write_bytes(handle.read(30_000_000))  # an interrupted download
    result = cli(
        "train", "--model", model, "--gguf-file", "model.gguf", "--data", small_data, "--out", tmp_path / "out"
    )
    assert_refused(result, "model.gguf is truncated", "30,000,000", "download it again")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def two_way_model(tmp_path_factory, tiny_models) -> Path:
    """A local checkpoint that already carries a 2-way classification head."""
    from transformers import AutoModelForSequenceClassification

    target = tmp_path_factory.mktemp("headed") / "model"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["roberta"], num_labels=2)
    model.save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_models["roberta"] / name, target / name)
    return target


def test_more_classes_than_the_model_head(cli, tmp_path, two_way_model):
    three = rows(30, target=["fire", "flood", "calm"] * 10)
    data = write(tmp_path / "train.csv", three)
    result = cli("train", "--model", two_way_model, "--data", data, "--out", tmp_path / "out", "--epochs", 1)
    assert_refused(result, "classification head", "3 classes")
    assert not (tmp_path / "out").exists()


def test_long_texts_are_truncated_and_counted(cli, tmp_path, tiny_models):
    from transformers import AutoTokenizer

    frame = rows(40)
    frame.loc[::4, "text"] = [" ".join(["earthquake"] * (50 + i)) for i in range(10)]  # 10 texts far too long
    data = write(tmp_path / "d" / "train.csv", frame)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["roberta"])
    too_long = sum(len(tokenizer(text)["input_ids"]) > 24 for text in frame["text"])
    assert too_long == 10
    out = tmp_path / "out"
    result = cli(
        "-q",
        "train",
        "--model",
        tiny_models["roberta"],
        "--data",
        data,
        "--out",
        out,
        "--epochs",
        1,
        "--max-length",
        24,
        "--batch-size",
        8,
    )
    assert result.code == 0, result
    assert json.loads((out / "summary.json").read_text())["truncated_texts"] == 10


def test_window_beyond_the_models_positions_is_refused(cli, tmp_path, tiny_models):
    """The tiny RoBERTa numbers 130 positions from padding_idx + 1: 128 tokens a row. A longer row is named in one
    line before anything is written, when training (LoRA, probe, SetFit) and when a run predicts."""
    long_text = " ".join(["earthquake"] * 300)
    short = write(tmp_path / "short" / "train.csv", rows(20))
    frame = rows(20)
    frame.loc[0, "text"] = long_text
    data = write(tmp_path / "long" / "train.csv", frame)
    fragments = ("at most 128 tokens", "train.max_length 200", "--max-length 128")
    for method in ("lora", "probe", "setfit"):
        out = tmp_path / f"out-{method}"
        result = cli("train", "--model", tiny_models["roberta"], "--method", method, "--data", data, "--out", out,
                     "--max-length", 200)  # fmt: skip
        assert_refused(result, *fragments)
        assert not out.exists()
    run = tmp_path / "run"
    result = cli("-q", "train", "--model", tiny_models["roberta"], "--data", short, "--out", run, "--max-length", 200,
                 "--epochs", 1)  # fmt: skip
    assert result.code == 0, result
    texts = write(tmp_path / "texts.csv", pd.DataFrame({"id": [1, 2], "text": ["fire", long_text]}))
    result = cli("predict", "--run", run, "--data", texts, "--out", tmp_path / "predicted.csv")
    assert_refused(result, *fragments)
    assert not (tmp_path / "predicted.csv").exists()
    result = cli("-q", "train", "--model", tiny_models["roberta"], "--data", data, "--out", tmp_path / "fits",
                 "--max-length", 128, "--epochs", 1)  # fmt: skip
    assert result.code == 0, result


# ---- the output directory ---------------------------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def other_run(tmp_path, small_data, tiny_models) -> Path:
    """An output directory holding (the config of) another run: same model and data, another lr."""
    from lorabench.api import resolve_config
    from lorabench.core.storage import RunDir

    run = RunDir(tmp_path / "run")
    run.prepare(
        resolve_config(
            str(tiny_models["roberta"]), overrides={"data": {"source": str(small_data)}, "train": {"lr": 0.5}}
        ),
        resume=False,
    )
    write(run.file("metrics.jsonl"), '{"epoch": 1}\n')
    return run.path


@pytest.mark.parametrize("resume", [False, True])
def test_output_dir_with_a_different_run_is_left_alone(resume, cli, other_run, small_data, tiny_models):
    before = _snapshot(other_run)
    args = ["train", "--model", tiny_models["roberta"], "--data", small_data, "--out", other_run, "--lr", "0.001"]
    assert_refused(cli(*args, *(["--resume"] if resume else [])), "already holds a different run")
    assert _snapshot(other_run) == before


def test_output_dir_with_the_same_run_needs_resume(cli, other_run, small_data, tiny_models):
    result = cli("train", "--model", tiny_models["roberta"], "--data", small_data, "--out", other_run, "--lr", "0.5")
    assert_refused(result, "already holds this run", "--resume")


def test_resume_without_a_run_names_the_problem(cli, tmp_path):
    assert_refused(cli("train", "--resume", "--out", tmp_path / "typo"), "nothing to resume", "typo")
    assert not (tmp_path / "typo").exists()


def test_output_dir_with_other_files_or_a_file(cli, tmp_path, small_data, absent_model):
    write(tmp_path / "busy" / "thesis.tex", "precious")
    assert_refused(
        cli("train", "--model", absent_model, "--data", small_data, "--out", tmp_path / "busy"),
        "not empty and holds no lorabench run",
    )
    assert _snapshot(tmp_path / "busy") == {"thesis.tex": b"precious"}
    write(tmp_path / "file", "x")
    assert_refused(
        cli("train", "--model", absent_model, "--data", small_data, "--out", tmp_path / "file"), "not a directory"
    )


# ---- the installed entry point ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_entry_point(tmp_path):
    """`python -m lorabench.cli` as a user runs it: exit 2, one line, no traceback, no output directory."""
    data = write(tmp_path / "train.csv", rows().to_csv(index=False).encode("utf-8") + b"99,caf\xe9,1\n")
    out = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "lorabench.cli", "train", "--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_refused(Result(completed.returncode, completed.stdout, completed.stderr), "not UTF-8")
    assert not out.exists()
    with_debug = subprocess.run(
        [sys.executable, "-m", "lorabench.cli", "--debug", "data", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert with_debug.returncode == 2 and "Traceback" in with_debug.stderr  # --debug shows where it failed


# ---- the other commands (compare, report, predict, export, serve, sweep) -----------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_models, small_data) -> Path:
    from lorabench.api import resolve_config, train

    out = tmp_path_factory.mktemp("finished") / "run"
    train(
        resolve_config(
            str(tiny_models["roberta"]),
            overrides={"data": {"source": str(small_data)}, "train": {"epochs": 1, "max_length": 48}},
        ),
        out,
    )
    return out


def _latin1_file(tmp: Path) -> Path:
    return write(tmp / "texts.csv", b"id,text,target\n1,caf\xe9 on fire,1\n2,calm,0\n")


def _texts_file(tmp: Path) -> Path:
    return write(tmp / "good.csv", "id,text\n1,forest fire near the town\n2,what a lovely day\n")


@pytest.mark.parametrize(
    "command",
    [
        lambda tmp, run: (
            ["predict", "--run", tmp / "nope", "--data", _texts_file(tmp), "--out", tmp / "out.csv"],
            ["run directory not found"],
        ),
        lambda tmp, run: (
            [
                "predict",
                "--run",
                write(tmp / "empty" / "x.txt", "x").parent,
                "--data",
                _texts_file(tmp),
                "--out",
                tmp / "out.csv",
            ],
            ["not a lorabench run"],
        ),
        lambda tmp, run: (
            ["predict", "--run", run, "--data", _latin1_file(tmp), "--out", tmp / "out.csv"],
            ["utf-8", "0xe9"],
        ),
        lambda tmp, run: (
            ["predict", "--run", run, "--data", write(tmp / "t.csv", "id,tweet\n1,fire\n"), "--out", tmp / "out.csv"],
            ["'text'"],
        ),
        lambda tmp, run: (["export", "--run", tmp / "nope", "--out", tmp / "out"], ["not a lorabench run"]),
        lambda tmp, run: (["report", tmp / "nope"], ["holds no comparison"]),
        lambda tmp, run: (["serve", "--run", tmp / "nope"], ["run directory not found"]),
        lambda tmp, run: (
            ["compare", "--models", run, "--data", _latin1_file(tmp), "--out", tmp / "out", "--epochs", 1],
            ["not UTF-8"],
        ),
    ],
    ids=[
        "predict-no-run",
        "predict-not-a-run",
        "predict-latin1",
        "predict-no-text-column",
        "export-no-run",
        "report-no-dir",
        "serve-no-run",
        "compare-latin1",
    ],
)
def test_other_commands_refuse_bad_input(command, cli, tmp_path, finished_run):
    args, fragments = command(tmp_path, finished_run)
    assert_refused(cli(*args), *fragments)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.csv").exists()


def test_sweep_refuses_bad_data(cli, tmp_path, tiny_models):
    result = cli(
        "-q",
        "sweep",
        "--model",
        tiny_models["roberta"],
        "--data",
        _latin1_file(tmp_path),
        "--out",
        tmp_path / "out",
        "--trials",
        1,
    )
    assert_refused(result, "not UTF-8")


def test_sweep_writes_nothing_for_bad_data(cli, tmp_path, tiny_models):
    cli(
        "-q",
        "sweep",
        "--model",
        tiny_models["roberta"],
        "--data",
        _latin1_file(tmp_path),
        "--out",
        tmp_path / "out",
        "--trials",
        1,
    )
    assert not (tmp_path / "out").exists()
