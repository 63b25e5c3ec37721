"""Errors the CLI reports as one line without a traceback (exit status 1).

Every layer of the orchestrator raises these; nothing imports an error from
the runner.
"""


class RunError(RuntimeError):
    """A run could not start or had to stop; the message says why and what to do."""


class RunStopped(RunError):
    """The run stopped cleanly (too many incidents, a node stayed away); ``hilbed resume`` continues it."""


class SetupError(RunError):
    """A link kind or role could not be set up as the scenario asks (radio ports, tc rights...)."""
