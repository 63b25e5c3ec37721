"""Shared test setup.

Models and artifacts are cached in ``.hilbed-cache`` at the repository root
(unless HILBED_CACHE_DIR is set), so the default model is trained once per
checkout and reused by every test and by `make run`'s subprocess agents.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HILBED_CACHE_DIR", str(REPO / ".hilbed-cache"))
# node health history and local leases of test runs never reach the user's state dir
os.environ.setdefault("HILBED_STATE_DIR", tempfile.mkdtemp(prefix="hilbed-test-state-"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# namespace lab with real sshd (tests/e2e/test_netns_*.py); small filesystems for disk faults
pytest_plugins = ["tests.netns_fixtures", "tests.disk_fixtures"]

SHARED_DATA = REPO.parent / "shared" / "data"
# named datasets and weights (docs/data.md): tests read the shared folder as the mirror and never download
if SHARED_DATA.is_dir():
    os.environ.setdefault("HILBED_DATA_MIRROR", str(SHARED_DATA))
os.environ.setdefault("HILBED_DATA_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_model():
    """The default model (trained on first use, then cached)."""
    from hilbed.nodes.workload.models import load_model
    return load_model("synthetic-cnn", "cpu", 32)
