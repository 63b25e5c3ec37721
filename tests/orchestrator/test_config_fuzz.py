"""Seeded mutation fuzzing of the shipped YAML: only ConfigError (with a line) escapes, nothing hangs.

The engine is ``benchmarks/config_fuzz.py`` (run it with ``--cases 10000``
for the full count); here a few thousand cases run in-process, each under a
2 s SIGALRM limit, with a wall-clock cap so a slow machine runs fewer cases
rather than time out.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys

import pytest

pytestmark = pytest.mark.slow  # a few thousand mutated files: `make test` runs it, `make test-fast` does not

from hilbed.orchestrator.yamlsrc import ConfigError


@pytest.fixture(scope="module")
def fuzz(repo):
    spec = importlib.util.spec_from_file_location("hilbed_config_fuzz", repo / "benchmarks" / "config_fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_mutations_only_raise_config_errors(fuzz, repo):
    counts = fuzz.run(5000, seed=20240601, limit_s=2.0, repo=repo, deadline_s=60)
    report = json.dumps(counts.as_dict(), indent=1)
    assert counts.cases >= 500, report
    assert counts.tracebacks == 0, report
    assert counts.hangs == 0, report
    assert counts.errors_without_line == 0, report
    assert counts.multi_line_errors == 0, report
    assert counts.ok > 0 and counts.config_errors > 0, report  # the mutator neither breaks nor spares everything
    assert counts.max_seconds < 2.0, report


def test_mutator_is_deterministic(fuzz, repo):
    seeds = fuzz.seed_files(repo)
    assert {p.name for p, _ in seeds} >= {"testbed.yaml", "lab-testbed.yaml", "quickstart.yaml"}
    a = [fuzz.mutate(random.Random(7), seeds[0][1]) for _ in range(3)]
    b = [fuzz.mutate(random.Random(7), seeds[0][1]) for _ in range(3)]
    assert a == b


def test_shipped_files_load_unmutated(fuzz, repo):
    for path, data in fuzz.seed_files(repo):
        try:
            fuzz.run_case(path, data)
        except ConfigError as exc:  # progressive.yaml needs ../shared/data only at run time, not to validate
            pytest.fail(exc.one_line())
