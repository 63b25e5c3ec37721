"""The node side of provisioning (orchestrator/lab/nodesetup.py), run here as a node would run it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hilbed.orchestrator.lab.provision import build_wheel, node_extras

SETUP = Path(__file__).resolve().parents[3] / "orchestrator" / "lab" / "nodesetup.py"


@pytest.fixture(scope="module")
def wheel():
    return build_wheel()


def _setup(workdir: Path, wheel_path: Path, sha: str, version: str, **extra) -> dict:
    rel = f"wheels/{sha[:16]}/{wheel_path.name}"
    (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(wheel_path, workdir / rel)
    spec = {"workdir": str(workdir), "wheel": rel, "wheel_sha256": sha, "version": version, "source_hash": "test",
            "extras": node_extras(["client"]), "requirements": {"numpy": "numpy>=1.24"}, "node": "n1", **extra}
    p = subprocess.run([sys.executable, str(SETUP), json.dumps(spec)], capture_output=True, text=True, timeout=300)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert (p.returncode == 0) == bool(out.get("ok")), p.stderr
    return out


def _venv_py(wd: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(wd / "venv" / "bin" / "python"), "-I", "-c", code], capture_output=True, text=True, cwd=wd)


def test_cold_then_warm(tmp_path, wheel):
    out = _setup(tmp_path, wheel.path, wheel.sha256, wheel.version)
    assert out["ok"], out
    assert "venv created" in out["steps"] and "wheel installed" in out["steps"]
    marker = json.loads((tmp_path / "provision.json").read_text())
    assert marker["wheel_sha256"] == wheel.sha256 and marker["extras"] == ["client"]
    assert marker["boot_time"] and marker["version"] == wheel.version
    r = _venv_py(tmp_path, "import hilbed.nodes as nodes, hilbed.orchestrator.cli; print(nodes.__file__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(tmp_path / "venv")), "the venv must import the provisioned copy"
    hb = subprocess.run([str(tmp_path / "venv" / "bin" / "hilbed"), "--help"], capture_output=True, text=True)
    assert hb.returncode == 0 and "provision" in hb.stdout  # console script from the wheel's entry points

    again = _setup(tmp_path, wheel.path, wheel.sha256, wheel.version)
    assert again["ok"] and again["steps"] == []  # nothing to do


def test_a_new_wheel_replaces_the_old_files(tmp_path, wheel):
    assert _setup(tmp_path, wheel.path, wheel.sha256, wheel.version)["ok"]
    assert _venv_py(tmp_path, "import hilbed.nodes.wire").returncode == 0
    smaller = tmp_path / "b" / wheel.path.name
    smaller.parent.mkdir()
    with zipfile.ZipFile(wheel.path) as src, zipfile.ZipFile(smaller, "w") as dst:
        for info in src.infolist():
            if info.filename != "hilbed/nodes/wire.py":
                dst.writestr(info, src.read(info))
    import hashlib
    sha = hashlib.sha256(smaller.read_bytes()).hexdigest()
    out = _setup(tmp_path, smaller, sha, wheel.version)
    assert out["ok"] and "wheel installed" in out["steps"] and "venv created" not in out["steps"]
    r = _venv_py(tmp_path, "import hilbed.nodes.wire")
    assert r.returncode != 0 and "hilbed.nodes.wire" in r.stderr  # the stale module is gone


def test_damaged_transfer_is_refused(tmp_path, wheel):
    out = _setup(tmp_path, wheel.path, "0" * 64, wheel.version)
    assert not out["ok"] and "checksum mismatch" in out["error"]
    assert not (tmp_path / "provision.json").exists()


def test_only_missing_dependencies_go_to_pip_and_offline_failure_is_clear(tmp_path, wheel):
    out = _setup(tmp_path, wheel.path, wheel.sha256, wheel.version,
                 requirements={"numpy": "numpy>=1.24", "hilbed_no_such_dep": "hilbed-no-such-dep==1.0"},
                 pip_args=["--no-index"])
    assert not out["ok"]
    assert "pip install failed" in out["error"] and "hilbed-no-such-dep" in out["error"]
    assert not (tmp_path / "provision.json").exists(), "no marker unless everything is in place"


def test_pip_installer(tmp_path, wheel):
    out = _setup(tmp_path, wheel.path, wheel.sha256, wheel.version, installer="pip")
    assert out["ok"], out
    assert "wheel installed (pip)" in out["steps"]
    r = _venv_py(tmp_path, "import hilbed.nodes as nodes; print(nodes.__file__)")
    assert r.stdout.strip().startswith(str(tmp_path / "venv")), r.stderr
