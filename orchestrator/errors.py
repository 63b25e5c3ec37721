"""Errors the CLI reports as one line without a traceback."""


class RunError(RuntimeError):
    """A run could not start or had to stop; the message says why and what to do."""
