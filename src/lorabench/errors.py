"""The one exception type that means "the user's input is wrong" (the CLI prints it as one line, exit 2)."""


class LorabenchError(Exception):
    """Bad input or an impossible request; the message is shown to the user as is."""
