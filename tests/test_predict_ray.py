"""`predict --backend ray`: Ray Data reads a file, a folder or a glob of shards and two model replicas score it,
with the local path's output (ids in input order, labels, scores); a broken shard is named in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lorabench.core.errors import LorabenchError
from lorabench.core.settings import PredictBackend
from lorabench.workflows.predict import predict_file
from lorabench.workflows.predict_ray import predict_on_ray

pytestmark = pytest.mark.slow  # a local Ray and its worker processes

TWO = PredictBackend(backend="ray", replicas=2)


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
    predict_on_ray(root / "run", tmp_path / "shards", tmp_path / "ray.jsonl", TWO, chunk_rows=40)
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
                 "--submission", "--backend", "ray", "--replicas", "2")  # fmt: skip
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
        predict_on_ray(root / "run", tmp_path / "shards", out, TWO)
    message = str(failure.value)
    assert "b.csv" in message and "text" in message and "\n" not in message
    assert not out.exists() and not list(tmp_path.glob(".scores.csv.*"))

    (tmp_path / "shards" / "b.csv").unlink()
    (tmp_path / "shards" / "c.parquet").write_bytes(b"PAR1 not parquet")  # refused before Ray starts work
    with pytest.raises(LorabenchError, match=r"c\.parquet"):
        predict_on_ray(root / "run", tmp_path / "shards", out, TWO)
    assert not out.exists()


def test_a_run_the_replicas_cannot_load_is_named_not_retried(ray_setup, tmp_path):
    """A replica's constructor that raises would make Ray restart it forever: the error comes with its first block."""
    from lorabench.models.tfidf import TfidfClassifier

    root, _ = ray_setup
    shutil.copytree(root / "run", tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / TfidfClassifier.model_dir)
    with pytest.raises(LorabenchError, match="cannot load the tfidf model") as failure:
        predict_on_ray(tmp_path / "run", root / "texts.csv", tmp_path / "scores.csv", TWO)
    assert "\n" not in str(failure.value) and not (tmp_path / "scores.csv").exists()


def test_local_backend_refuses_the_ray_settings(cli, tmp_path):
    result = cli("predict", "--run", tmp_path, "--data", tmp_path / "x.csv", "--out", tmp_path / "o.csv",
                 "--replicas", "3")  # fmt: skip
    assert result.code == 2 and "--replicas apply to --backend ray" in result.stderr
