"""Fixtures for tests over real SSH: a namespace lab with real sshd per host.

Load with ``pytest_plugins = ["tests.netns_fixtures"]`` in tests/conftest.py.
Every fixture that creates something removes it in a finalizer, also when the
test fails. Tests using them skip (with the reason) where the lab cannot run:
not root, no iproute2, no sshd.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_SCENARIO = """\
name: {name}
workload: {{dataset: synthetic, model: synthetic-cnn, images_per_trial: {images}, image_size: 32, seed: 0}}
stream: {{period_ms: {period}}}
codecs:
{codecs}
conditions:
  - name: direct
    link: {{kind: direct}}
    jamming: {jamming}
"""


def write_scenario(path: Path, name: str = "netns-smoke", images: int = 5, period_ms: int = 100,
                   codecs: tuple[str, ...] = ("{codec: jpeg, params: {quality: 50}, label: jpeg-q50}",),
                   jamming: str = "none") -> Path:
    path.write_text(TINY_SCENARIO.format(name=name, images=images, period=period_ms, jamming=jamming,
                                         codecs="\n".join(f"  - {c}" for c in codecs)))
    return path


@pytest.fixture(scope="session")
def netns_ok() -> None:
    from hilbed.orchestrator.lab.netns_lab import unavailable_reason
    why = unavailable_reason()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="session")
def netns_lab(netns_ok, tmp_path_factory):
    """Three SSH hosts (edge, client-1, jammer) for the whole session; removed at the end."""
    from hilbed.orchestrator.lab.netns_lab import NetnsLab
    pid = os.getpid()
    lab = NetnsLab(3, name=f"ht{pid % 10000}", subnet=100 + pid % 150)
    lab.up()
    yield lab
    lab.down()


@pytest.fixture(scope="session")
def lab_testbed(netns_lab, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("netns-lab")
    return netns_lab.write_testbed(d / "testbed.yaml", results_dir=str(d / "runs"))


@pytest.fixture(scope="session")
def provisioned_lab(netns_lab, lab_testbed):
    """The lab with every host provisioned once (cold); returns (lab, testbed path, first report)."""
    from hilbed.orchestrator.config import load_testbed
    from hilbed.orchestrator.lab.provision import provision
    rep = provision(load_testbed(lab_testbed))
    assert rep.ok, {n: r.error for n, r in rep.results.items()}
    return netns_lab, lab_testbed, rep


@pytest.fixture
def lab_transports(provisioned_lab):
    """SSH transports to every lab host, closed after the test."""
    from hilbed.orchestrator.config import load_testbed
    from hilbed.orchestrator.lab.ssh import SSHTransport
    _, tb_path, _ = provisioned_lab
    tb = load_testbed(tb_path)
    trs = {n: SSHTransport(n, c.transport) for n, c in tb.nodes.items()}
    yield trs
    for t in trs.values():
        t.close()
