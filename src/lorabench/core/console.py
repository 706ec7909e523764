"""Console output shared by every stage: rich progress bars that can be silenced for tests and services."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
_enabled = {"progress": True}


def quiet_libraries() -> None:
    """Silence the load reports, de-quantization bars and deprecation chatter of the HF libraries."""
    import transformers  # deferred: seconds to import, and only the stages that load a model call this

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if not sys.stderr.isatty():  # tqdm bars that libraries draw themselves (GGUF loading) are \r frames in a log
        os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers|peft")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"transformers|peft")


def set_progress(enabled: bool) -> None:
    _enabled["progress"] = enabled


def progress_enabled() -> bool:
    return _enabled["progress"]


@contextmanager
def progress_hidden() -> Iterator[None]:
    """Silence progress for a block (e.g. the per-chunk bars inside a file-level bar), then restore it."""
    previous = _enabled["progress"]
    _enabled["progress"] = False
    try:
        yield
    finally:
        _enabled["progress"] = previous


def say(message: str) -> None:
    """One human-readable line on stderr (stdout stays free for results), printed as is: messages carry paths,
    column names and ids, and rich would read their `[...]` as markup and `:name:` as emoji codes."""
    if _enabled["progress"]:
        # soft_wrap: a long line stays one line (a terminal wraps it itself), so a log keeps each path whole
        console.print(message, highlight=False, markup=False, emoji=False, soft_wrap=True)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None):
        self._progress, self._task = progress, task

    def advance(self, amount: int = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=amount, **fields)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[_Bar]:
    """A progress bar with count, elapsed and remaining time; a no-op when progress is off."""
    if not _enabled["progress"]:
        yield _Bar(None, None)
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=console, transient=not sys.stderr.isatty()) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, info=""))
