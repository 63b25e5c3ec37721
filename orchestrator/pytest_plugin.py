"""pytest plugin: write your own hardware-in-the-loop tests against a hilbed testbed.

Enable it with ``-p hilbed.orchestrator.pytest_plugin`` (or the ``pytest11`` entry
point) and point it at a testbed::

    pytest --hilbed-testbed lab-testbed.yaml tests/hil/

Fixtures (all skip the test when no testbed was given):

- ``hilbed_testbed``: the parsed testbed (:class:`hilbed.orchestrator.config.TestbedCfg`);
- ``hilbed_testbed_path``: its file;
- ``hilbed_nodes``: node name -> :class:`NodeCfg`;
- ``hilbed_radios``: node name -> :class:`RadioCfg` for nodes with a radio;
- ``hilbed_run``: ``hilbed_run(scenario_path_or_dict, **overrides)`` replays a
  scenario with :class:`hilbed.orchestrator.run.runner.Runner` and returns a
  :class:`HilbedResult` (run directory, records DataFrame, summary).

A marker skips tests the testbed cannot serve, like labgrid's ``lg_feature``::

    @pytest.mark.hilbed_requires(roles=["jammer"], radio=True)

The plugin imports nothing heavy until a fixture is used, so having it
installed costs other test suites nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser) -> None:
    g = parser.getgroup("hilbed", "hilbed hardware-in-the-loop testbed")
    g.addoption("--hilbed-testbed", action="store", default=None, metavar="TESTBED_YAML",
                help="testbed to run hilbed fixtures on (also the hilbed_testbed ini option)")
    g.addoption("--hilbed-results-dir", action="store", default=None, metavar="DIR",
                help="where hilbed_run puts run directories (default: a pytest temporary directory)")
    parser.addini("hilbed_testbed", "default testbed YAML for hilbed fixtures", default=None)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "hilbed_requires(roles=None, radio=False, nodes=None): skip unless the "
                            "hilbed testbed has nodes with these roles / a radio / these node names")
    config._hilbed_testbed = None
    p = _testbed_path(config)
    if p is None:
        return
    if not p.exists():
        raise pytest.UsageError(f"--hilbed-testbed: file not found: {p}")
    from hilbed.orchestrator.config import load_testbed
    from hilbed.orchestrator.yamlsrc import ConfigError
    try:  # a bad testbed stops the session before any test, with file:line, the field and what is allowed
        config._hilbed_testbed = load_testbed(p)
    except ConfigError as exc:
        raise pytest.UsageError(f"--hilbed-testbed: {exc.one_line()}") from None


def _testbed_path(config) -> Path | None:
    opt = config.getoption("--hilbed-testbed", default=None) or config.getini("hilbed_testbed")
    if not opt:
        return None
    p = Path(opt)
    if not p.is_absolute() and not p.exists():
        p = Path(config.rootpath) / p
    return p


def pytest_report_header(config) -> str | None:
    tb = getattr(config, "_hilbed_testbed", None)
    if tb is None:
        return None
    p = _testbed_path(config)
    nodes = ", ".join(f"{n}[{'/'.join(c.roles)}{'+radio' if c.radio else ''}]" for n, c in tb.nodes.items())
    return f"hilbed testbed: {tb.name} ({p}): {nodes}"


@pytest.fixture(scope="session")
def hilbed_testbed_path(pytestconfig) -> Path:
    p = _testbed_path(pytestconfig)
    if p is None:
        pytest.skip("no hilbed testbed (give --hilbed-testbed TESTBED_YAML)")
    return p.resolve()


@pytest.fixture(scope="session")
def hilbed_testbed(hilbed_testbed_path, pytestconfig):
    """The parsed testbed (validated when the session started)."""
    return pytestconfig._hilbed_testbed


@pytest.fixture(scope="session")
def hilbed_nodes(hilbed_testbed) -> dict:
    return dict(hilbed_testbed.nodes)


@pytest.fixture(scope="session")
def hilbed_radios(hilbed_testbed) -> dict:
    return {n: c.radio for n, c in hilbed_testbed.nodes.items() if c.radio is not None}


@pytest.fixture(autouse=True)
def _hilbed_requires(request):
    m = request.node.get_closest_marker("hilbed_requires")
    if m is None:
        return
    tb = request.getfixturevalue("hilbed_testbed")
    roles = m.kwargs.get("roles") or (m.args[0] if m.args else [])
    for role in [roles] if isinstance(roles, str) else roles:
        if not tb.nodes_with(role):
            pytest.skip(f"testbed {tb.name} has no node with role {role!r}")
    if m.kwargs.get("radio") and not any(c.radio for c in tb.nodes.values()):
        pytest.skip(f"testbed {tb.name} has no radio")
    for n in m.kwargs.get("nodes") or []:
        if n not in tb.nodes:
            pytest.skip(f"testbed {tb.name} has no node {n!r}")


@dataclass
class HilbedResult:
    """What :func:`hilbed_run` returns: the run directory and its records."""

    run_dir: Path
    outcome: Any
    df: Any
    summary: Any

    @property
    def state(self) -> str:
        return self.outcome.state

    @property
    def manifest(self) -> dict:
        from hilbed.analysis.load import load_manifest
        return load_manifest(self.run_dir)

    def cell(self, codec_label: str, condition: str):
        """The summary row of one codec variant x condition (a pandas Series)."""
        s = self.summary
        rows = s[(s["codec_label"] == codec_label) & (s["condition"] == condition)]
        if len(rows) != 1:
            raise KeyError(f"no summary row for {codec_label!r} x {condition!r}")
        return rows.iloc[0]


def _deep_update(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


@pytest.fixture
def hilbed_run(hilbed_testbed, hilbed_testbed_path, pytestconfig, tmp_path_factory):
    """Replay a scenario (a YAML path or a dict) on the testbed; returns a :class:`HilbedResult`.

    Keyword overrides are merged into the scenario (``workload={"images_per_trial": 5}``).
    ``report=True`` also builds the HTML report. A run that does not complete fails the test.
    """
    import yaml

    from hilbed.orchestrator.run.runner import Runner

    results = pytestconfig.getoption("--hilbed-results-dir")
    out_dir = Path(results).resolve() if results else tmp_path_factory.mktemp("hilbed-runs")
    out_dir.mkdir(parents=True, exist_ok=True)
    n = [0]

    def run(scenario: str | Path | dict, *, report: bool = False, **overrides) -> HilbedResult:
        n[0] += 1
        if isinstance(scenario, dict) or overrides:
            if isinstance(scenario, dict):
                data = copy.deepcopy(scenario)
                base_dir = Path(pytestconfig.rootpath)
            else:
                data = yaml.safe_load(Path(scenario).read_text(encoding="utf-8"))
                base_dir = Path(scenario).resolve().parent
            _deep_update(data, overrides)
            spath = out_dir / f"scenario-{data.get('name', 'scenario')}-{n[0]}.yaml"
            # traces are relative to the scenario: resolve them against where the scenario came from
            for cond in data.get("conditions") or []:
                link = cond.get("link") or {}
                for k in ("trace", "downlink_trace"):
                    if link.get(k) and not Path(link[k]).is_absolute():
                        link[k] = str((base_dir / link[k]).resolve())
            spath.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        else:
            spath = Path(scenario)
        runner = Runner(hilbed_testbed_path, spath, results_dir=out_dir, quiet=True, make_report=report)
        outcome = runner.execute()
        from hilbed.analysis.load import load_run
        from hilbed.analysis.metrics import summary
        df = load_run(outcome.run_dir)
        res = HilbedResult(outcome.run_dir, outcome, df, summary(df) if len(df) else None)
        if outcome.state != "complete":
            pytest.fail(f"hilbed run {outcome.run_dir} ended {outcome.state!r}")
        return res

    return run
