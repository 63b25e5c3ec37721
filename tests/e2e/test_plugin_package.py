"""An installed plug-in package (examples/plugin) adds a codec and a model through entry points only.

The package is pip-installed (editable, no deps) into the running venv for
this module and uninstalled afterwards; a scenario on the embedded testbed
uses its ``gray-jpeg`` codec and ``example-mean:`` model. A broken entry
point (a distribution made of a bare dist-info on PYTHONPATH) is reported by
``hilbed plugins`` with its package name while the example still loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SCENARIO = """\
name: plug
workload: {model: "example-mean:", dataset: synthetic, images_per_trial: 4, seed: 5}
stream: {period_ms: 120}
codecs: [{codec: gray-jpeg, params: {quality: 40}}, {codec: jpeg, params: {quality: 40}}]
conditions:
  - {name: direct, link: {kind: direct}, deadline_ms: 2000}
"""


def _cli(*args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", *args], cwd=cwd,
                          env=env or dict(os.environ), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def example_plugin(repo):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    p = subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(repo / "examples/plugin")],
                       capture_output=True, text=True, timeout=300)
    if p.returncode:
        pytest.fail("pip install of examples/plugin failed: " + p.stderr[-1500:])
    yield
    subprocess.run([*pip, "uninstall", "-y", "hilbed-example-plugin"], capture_output=True, text=True, timeout=300)


def test_installed_codec_and_model_run_a_scenario(tmp_path, repo, example_plugin):
    (tmp_path / "testbed.yaml").write_text((repo / "testbed.yaml").read_text())
    (tmp_path / "plug.yaml").write_text(SCENARIO)
    env = {k: v for k, v in os.environ.items() if k not in ("HILBED_PLUGINS", "HILBED_NO_ENTRY_POINTS")}
    p = _cli("run", str(tmp_path / "plug.yaml"), "--testbed", str(tmp_path / "testbed.yaml"), "-q", "--no-report",
             cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    run_dir = next((tmp_path / "runs").iterdir())
    df = pd.read_parquet(run_dir / "results.parquet")
    assert sorted(df.codec.unique()) == ["gray-jpeg", "jpeg"] and len(df) == 8
    assert df.decoded.all()
    by = df.groupby("codec").bytes_total.mean()
    assert by["gray-jpeg"] < by["jpeg"]  # only luma travelled, so the plug-in's encode ran on the client
    model = json.loads((run_dir / "manifest.json").read_text())["model"]
    facts = model["facts"]
    assert model["model"] == "example-mean:" and len(model["classes"]) == 10
    assert facts["plugin"] == "hilbed-example-plugin" and facts["num_classes"] == 10 and facts["input_size"] == 32
    assert len(facts["sha256"]) == 64 and facts["sha256_of"] == "state_dict"


def test_without_entry_points_the_plugin_names_are_unknown(tmp_path, example_plugin):
    (tmp_path / "plug.yaml").write_text(SCENARIO)
    env = dict(os.environ, HILBED_NO_ENTRY_POINTS="1")
    p = _cli("validate", str(tmp_path / "plug.yaml"), cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 2 and "example-mean" in p.stderr and "allowed" in p.stderr, p.stderr
    env.pop("HILBED_NO_ENTRY_POINTS")
    p = _cli("validate", str(tmp_path / "plug.yaml"), cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr


def test_a_broken_entry_point_is_named_with_its_package(tmp_path, example_plugin):
    info = tmp_path / "site" / "broken_plug-9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plug\nVersion: 9.9\n")
    (info / "entry_points.txt").write_text("[hilbed.codecs]\nbad = broken_plug_missing.codec:Nope\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    env.pop("HILBED_NO_ENTRY_POINTS", None)
    p = _cli("plugins", "--json", cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    rows = {r["distribution"] + "/" + r["entry_point"]: r for r in json.loads(p.stdout)["plugins"]}
    bad = rows["broken-plug/bad"]
    assert not bad["ok"] and "broken-plug 9.9" in bad["error"] and "ModuleNotFoundError" in bad["error"]
    assert rows["hilbed-example-plugin/gray-jpeg"]["ok"] and rows["hilbed-example-plugin/gray-jpeg"]["registered"] \
        == ["codec gray-jpeg"]
    assert rows["hilbed-example-plugin/example-mean"]["registered"] == ["model example-mean"]
    # the one-line notice every process prints names the package
    notice = [line for line in p.stderr.splitlines() if "failed to load" in line]
    assert len(notice) == 1 and "broken-plug" in notice[0]
