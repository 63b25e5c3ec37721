"""Console output: rich on a terminal, wide plain text in logs and CI."""

from __future__ import annotations

import os
import sys

from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    # logs and CI: no 80-column wrapping of tables
    return Console(stderr=stderr, highlight=False, width=int(os.environ.get("COLUMNS", "160")))
