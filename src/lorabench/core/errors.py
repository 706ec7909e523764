"""The one exception type that means "the user's input is wrong" (the CLI prints it as one line, exit 2), and the
wrapping that turns a library's failure during a stage of the work into one such line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class LorabenchError(Exception):
    """Bad input or an impossible request; the message is shown to the user as is."""


class InternalError(Exception):
    """A check of lorabench's own work failed: a bug, not the user's input (the CLI exits 1, not 2)."""


def first_line(err: BaseException) -> str:
    """An exception's message as one line, or its type's name when it has none (library errors can be empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# What to try next, by the kind of failure (matched on the exception's type name, so no library is imported here).
NEXT_STEPS = {
    "OutOfMemoryError": "lower train.batch_tokens (or --eval-batch-size), or use a smaller model",
    "MemoryError": "lower train.batch_tokens (or --eval-batch-size), or use a smaller model",
    "SafetensorError": "the weights file is damaged: download or train it again",
    "OSError": "check that the files exist and are readable",
}


@contextmanager
def stage(what: str, subject: str) -> Iterator[None]:
    """Report any failure inside the block, but lorabench's own, as one line naming the stage, what it worked
    on and a next step; the original stays attached as the cause (`--debug` shows it)."""
    try:
        yield
    except (LorabenchError, InternalError):
        raise
    except Exception as err:
        name = type(err).__name__
        hint = NEXT_STEPS.get(name, "rerun with --debug to see the cause")
        raise LorabenchError(f"{subject}: {what} failed ({name}: {first_line(err)}); {hint}") from err
