"""The one exception type that means "the user's input is wrong" (the CLI prints it as one line, exit 2)."""


class LorabenchError(Exception):
    """Bad input or an impossible request; the message is shown to the user as is."""


def first_line(err: BaseException) -> str:
    """An exception's message as one line, or its type's name when it has none (library errors can be empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
