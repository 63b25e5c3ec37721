"""Default input files of the command line: from the working directory, else from the repository."""

from __future__ import annotations

from pathlib import Path

from hilbed.orchestrator.lab.transport import REPO_ROOT

DEFAULT_TESTBED = "testbed.yaml"
DEFAULT_SCENARIO = "scenarios/quickstart.yaml"


def default_path(name: str) -> str:
    """``name`` if it exists here, else the repository's copy, else ``name`` (the loader then says it is missing)."""
    if Path(name).exists():
        return name
    cand = REPO_ROOT / name
    return str(cand) if cand.exists() else name
