"""The hilbed pytest plugin, tested the way pytest plugins are: pytester runs small test files with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
PLUGIN = ["-p", "hilbed.orchestrator.pytest_plugin"]

FIXTURE_TESTS = """
import pytest

def test_testbed(hilbed_testbed, hilbed_testbed_path):
    assert hilbed_testbed.name == "embedded" and hilbed_testbed_path.name == "testbed.yaml"
    assert hilbed_testbed.edge == "edge"

def test_nodes(hilbed_nodes):
    assert sorted(hilbed_nodes) == ["client-1", "edge", "jammer"]
    assert hilbed_nodes["client-1"].roles == ["client"]

def test_radios(hilbed_radios):
    assert sorted(hilbed_radios) == ["client-1", "edge"]
    assert {r.protocol for r in hilbed_radios.values()} == {"spinel"}
    assert hilbed_radios["edge"].channel == 15

@pytest.mark.hilbed_requires(roles=["jammer"], radio=True)
def test_needs_jammer_and_radio():
    pass

@pytest.mark.hilbed_requires(roles=["camera"])
def test_needs_camera():
    pass

@pytest.mark.hilbed_requires(nodes=["gpu-2"])
def test_needs_gpu2():
    pass
"""


@pytest.fixture(autouse=True)
def _only_this_plugin(monkeypatch):
    """Inner sessions load just the plugin under test (faster, and independent of what else is installed)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture
def testbed(pytester) -> Path:
    return Path(shutil.copy(REPO / "testbed.yaml", pytester.path / "testbed.yaml"))


def test_fixtures_skip_without_a_testbed(pytester):
    pytester.makepyfile(FIXTURE_TESTS)
    r = pytester.runpytest(*PLUGIN, "-rs")
    r.assert_outcomes(skipped=6)
    r.stdout.fnmatch_lines(["*no hilbed testbed (give --hilbed-testbed TESTBED_YAML)*"])


def test_fixtures_parse_the_testbed(pytester, testbed):
    pytester.makepyfile(FIXTURE_TESTS)
    r = pytester.runpytest(*PLUGIN, "--hilbed-testbed", str(testbed), "-rs")
    r.assert_outcomes(passed=4, skipped=2)
    r.stdout.fnmatch_lines([
        "hilbed testbed: embedded (*testbed.yaml): client-1?client+radio?, edge?edge+radio?, jammer?jammer?",
        "*testbed embedded has no node with role 'camera'*",
        "*testbed embedded has no node 'gpu-2'*",
    ])


def test_ini_option_and_radio_marker(pytester):
    (pytester.path / "lab.yaml").write_text(
        "name: bench\nnodes:\n  pi: {roles: [client]}\n  gpu: {roles: [edge]}\n", encoding="utf-8")
    pytester.makeini("[pytest]\nhilbed_testbed = lab.yaml\n")
    pytester.makepyfile("""
        import pytest
        def test_name(hilbed_testbed, hilbed_radios):
            assert hilbed_testbed.name == "bench" and hilbed_radios == {}
        @pytest.mark.hilbed_requires(radio=True)
        def test_radio():
            pass
    """)
    r = pytester.runpytest(*PLUGIN, "-rs")
    r.assert_outcomes(passed=1, skipped=1)
    r.stdout.fnmatch_lines(["*testbed bench has no radio*"])


def test_invalid_testbed_names_file_and_line(pytester):
    (pytester.path / "bad.yaml").write_text(
        "name: bad\nnodes:\n  pi: {roles: [client]}\n  gpu: {roles: [edge], transprt: {kind: local}}\n",
        encoding="utf-8")
    pytester.makepyfile("def test_x(hilbed_testbed):\n    pass\n")
    r = pytester.runpytest(*PLUGIN, "--hilbed-testbed", "bad.yaml")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--hilbed-testbed: bad.yaml:4: nodes.gpu.transprt: unknown field (allowed: roles, *"])
    r = pytester.runpytest(*PLUGIN, "--hilbed-testbed", "missing.yaml")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--hilbed-testbed: file not found: *missing.yaml*"])


def _model_cached() -> bool:
    from hilbed.nodes.workload.models import cache_dir
    return any((cache_dir() / "models").glob("synthetic-cnn-*.pt"))


@pytest.mark.skipif(not _model_cached(), reason="the default model is not trained yet (`make run` trains it once)")
def test_hilbed_run_replays_a_scenario(pytester, testbed):
    """A lab's own HIL test: a real run on the embedded testbed through the hilbed_run fixture."""
    pytester.makepyfile("""
        def test_direct_link(hilbed_run):
            res = hilbed_run({
                "name": "plugin-check",
                "workload": {"images_per_trial": 3},
                "stream": {"period_ms": 100},
                "codecs": [{"codec": "jpeg", "params": {"quality": 50}, "label": "jpeg-q50"}],
                "conditions": [{"name": "direct", "link": {"kind": "direct"}}],
            })
            assert res.state == "complete" and len(res.df) == 3
            cell = res.cell("jpeg-q50", "direct")
            assert cell.n == 3 and cell.miss_rate == 0.0
            assert res.manifest["scenario"]["name"] == "plugin-check"
            assert (res.run_dir / "results.parquet").exists()
    """)
    r = pytester.runpytest(*PLUGIN, "--hilbed-testbed", str(testbed), "--hilbed-results-dir",
                           str(pytester.path / "runs"))
    r.assert_outcomes(passed=1)
    assert len(list((pytester.path / "runs").glob("plugin-check-*"))) == 1
