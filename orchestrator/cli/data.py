"""``hilbed data``: sub-commands (being built; see the issue notes)."""

from __future__ import annotations


def register(sub) -> None:
    """Add this module's sub-commands to the parser (none yet)."""
