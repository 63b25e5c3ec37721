"""Node processes cap their numeric libraries' thread pools (the client: one thread by default; the embedded
run's manifest check is in tests/nodes/codecs/test_codec_pnc.py)."""

from __future__ import annotations

import os

import pytest

from hilbed.nodes.agent import THREAD_ENV, limit_compute_threads


def test_limit_sets_the_pool_variables_and_a_loaded_torch(monkeypatch):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    for var in THREAD_ENV:
        monkeypatch.setenv(var, "8")  # restored at teardown
    try:
        assert limit_compute_threads(0) == 1  # never below one
        assert all(os.environ[v] == "1" for v in THREAD_ENV) and torch.get_num_threads() == 1
        assert limit_compute_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
