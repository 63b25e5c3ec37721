"""hilbed: hardware-in-the-loop testbed for DNN inference offloading over constrained links.

The subpackages (``hilbed.orchestrator``, ``hilbed.nodes``, ``hilbed.analysis``,
``hilbed.firmware_bridge``) live at the repository's top level, as the
project's layout requires; ``pyproject.toml`` maps them under this name for
installs. In a source checkout (this file imported from the repository, for
example with the repository on ``sys.path``) the same mapping is made here,
so both ways give one set of modules.
"""

from __future__ import annotations

from pathlib import Path

SUBPACKAGES = ("orchestrator", "nodes", "analysis", "firmware_bridge")

_here = Path(__file__).resolve().parent
if not (_here / "orchestrator").is_dir() and (_here.parent / "orchestrator" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # type: ignore[name-defined]  # noqa: F821

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("hilbed")
except PackageNotFoundError:  # pragma: no cover - a bare checkout
    __version__ = "0+unknown"
