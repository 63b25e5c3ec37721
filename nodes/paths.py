"""Where hilbed keeps trained models and codec artifacts on a machine (torch-free)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``HILBED_CACHE_DIR``, else the platform's user cache dir (``~/.cache/hilbed`` on Linux)."""
    env = os.environ.get("HILBED_CACHE_DIR")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir
        return Path(user_cache_dir("hilbed"))
    except ImportError:
        return Path.home() / ".cache" / "hilbed"
