"""Node side of ``hilbed provision``: one run per node, standard library only.

The controller copies this file to ``<workdir>/.hilbed-setup.py`` next to the
wheel and runs it with the node's Python and one JSON argument. It creates or
reuses ``<workdir>/venv`` (``--system-site-packages``, no pip of its own, so it
is fast and works offline), installs the hilbed wheel into it, installs only
the dependencies the venv cannot already import, checks the pushed assets,
verifies that the venv imports the provisioned code, and writes the marker
``<workdir>/provision.json`` last (atomically). It prints one JSON object.

Kept free of hilbed imports: it runs before hilbed exists on the node.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import site
import subprocess
import sys
import time
import venv
import zipfile

MARKER = "provision.json"
VERIFY = (
    "import json, sys, importlib.metadata as m, importlib.util as u\n"
    "import hilbed.nodes as nodes, hilbed.orchestrator\n"
    "mk = None\n"
    "try:\n"
    "    mk = json.load(open(sys.argv[1]))\n"
    "except Exception:\n"
    "    pass\n"
    "print(json.dumps({'version': m.version('hilbed'), 'nodes': nodes.__file__, 'prefix': sys.prefix,\n"
    "                  'python': sys.version.split()[0], 'marker': mk,\n"
    "                  'missing': [n for n in sys.argv[2:] if u.find_spec(n) is None]}))\n"
)


def boot_time() -> int | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def venv_paths(vdir: str) -> tuple[str, str]:
    py = os.path.join(vdir, "bin", "python")
    purelib = os.path.join(vdir, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    return py, purelib


def ensure_venv(vdir: str, steps: list) -> None:
    py, purelib = venv_paths(vdir)
    cfg = os.path.join(vdir, "pyvenv.cfg")
    if os.path.exists(py) and os.path.exists(cfg) and os.path.isdir(purelib):
        return
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True, clear=True).create(vdir)
    steps.append("venv created")


def inherit_base_packages(vdir: str, steps: list) -> None:
    """Make the node interpreter's own packages visible when it is itself a venv.

    ``--system-site-packages`` exposes the *base* interpreter's packages; when
    the node's python is a virtualenv (a lab sharing one Python), its
    site-packages are added as plain paths (their .pth files are not run).
    """
    _, purelib = venv_paths(vdir)
    pth = os.path.join(purelib, "_hilbed_base.pth")
    if sys.prefix == sys.base_prefix:
        if os.path.exists(pth):
            os.remove(pth)
        return
    dirs = [d for d in site.getsitepackages() if d.startswith(sys.prefix) and os.path.isdir(d)]
    text = "".join(d + "\n" for d in dirs)
    old = open(pth).read() if os.path.exists(pth) else None
    if old != text:
        with open(pth, "w") as f:
            f.write(text)
        steps.append(f"inherits packages of {sys.prefix}")


def _record_rows(data: bytes) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(data.decode("utf-8"))) if row]


def remove_installed(purelib: str, dist: str) -> int:
    """Remove a previous install of ``dist`` (every file its RECORD lists)."""
    removed = 0
    norm = dist.lower().replace("-", "_")
    for entry in os.listdir(purelib):
        if entry.endswith(".dist-info") and entry.split("-")[0].lower().replace("-", "_") == norm:
            rec = os.path.join(purelib, entry, "RECORD")
            if os.path.exists(rec):
                with open(rec, "rb") as f:
                    for row in _record_rows(f.read()):
                        p = os.path.normpath(os.path.join(purelib, row[0]))
                        if os.path.isfile(p):
                            os.remove(p)
                            removed += 1
            shutil.rmtree(os.path.join(purelib, entry), ignore_errors=True)
    return removed


def unpack_wheel(wheel: str, vdir: str) -> dict:
    """Install a pure-Python wheel (PEP 427): unpack, spread .data, write scripts, update RECORD."""
    py, purelib = venv_paths(vdir)
    bindir = os.path.dirname(py)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        distinfo = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        wheel_meta = zf.read(f"{distinfo}/WHEEL").decode()
        if "Root-Is-Purelib: true" not in wheel_meta:
            raise RuntimeError(f"{os.path.basename(wheel)} is not a pure-Python wheel: install it with pip")
        dist = distinfo.split("-")[0]
        remove_installed(purelib, dist)
        datadir = distinfo[: -len(".dist-info")] + ".data/"
        installed: list[str] = []
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename
            if name.startswith(datadir):
                kind, _, rel = name[len(datadir):].partition("/")
                base = {"purelib": purelib, "platlib": purelib, "scripts": bindir, "data": vdir}.get(kind)
                if base is None:
                    continue
                dest = os.path.join(base, rel)
            else:
                dest = os.path.join(purelib, name)
            dest = os.path.normpath(dest)
            if not dest.startswith(os.path.normpath(vdir) + os.sep):
                raise RuntimeError(f"unsafe path in wheel: {name}")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with zf.open(info) as src, open(dest + ".tmp", "wb") as out:
                shutil.copyfileobj(src, out)
            os.replace(dest + ".tmp", dest)
            installed.append(os.path.relpath(dest, purelib))
        scripts = []
        if f"{distinfo}/entry_points.txt" in names:
            section = None
            for line in zf.read(f"{distinfo}/entry_points.txt").decode().splitlines():
                line = line.strip()
                if line.startswith("["):
                    section = line.strip("[]")
                elif "=" in line and section == "console_scripts":
                    sname, target = (x.strip() for x in line.split("=", 1))
                    mod, _, func = target.partition(":")
                    spath = os.path.join(bindir, sname)
                    with open(spath, "w") as f:
                        f.write(f"#!{py}\nimport sys\nfrom {mod} import {func.split('.')[0]}\n"
                                f"if __name__ == '__main__':\n    sys.exit({func}())\n")
                    os.chmod(spath, 0o755)
                    scripts.append(sname)
                    installed.append(os.path.relpath(spath, purelib))
    dist_dir = os.path.join(purelib, distinfo)
    with open(os.path.join(dist_dir, "INSTALLER"), "w") as f:
        f.write("hilbed\n")
    rows = []
    for rel in installed + [os.path.join(distinfo, "INSTALLER")]:
        p = os.path.join(purelib, rel)
        if rel.endswith(f"{distinfo}/RECORD") or rel == os.path.join(distinfo, "RECORD"):
            continue
        with open(p, "rb") as f:
            data = f.read()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append([rel, f"sha256={digest}", str(len(data))])
    rows.append([os.path.join(distinfo, "RECORD"), "", ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    with open(os.path.join(dist_dir, "RECORD"), "w") as f:
        f.write(buf.getvalue())
    return {"files": len(installed), "scripts": scripts}


def pip_install(py: str, args: list[str], timeout: float = 900) -> None:
    cmd = [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"pip install failed: {(p.stderr or p.stdout).strip()[-600:]}")


def run_verify(py: str, workdir: str, imports: list[str]) -> dict:
    p = subprocess.run([py, "-I", "-c", VERIFY, os.path.join(workdir, MARKER), *imports], capture_output=True,
                       text=True, cwd=workdir, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"the venv cannot import hilbed: {p.stderr.strip()[-400:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(spec: dict) -> dict:
    t0 = time.monotonic()
    workdir = os.path.abspath(os.path.expanduser(spec["workdir"]))
    vdir = os.path.join(workdir, "venv")
    steps: list[str] = []
    os.makedirs(workdir, exist_ok=True)
    marker_path = os.path.join(workdir, MARKER)
    old = None
    if os.path.exists(marker_path):
        try:
            with open(marker_path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
    ensure_venv(vdir, steps)
    inherit_base_packages(vdir, steps)
    py, purelib = venv_paths(vdir)

    wheel = os.path.join(workdir, spec["wheel"])
    want = spec["wheel_sha256"]
    same_wheel = bool(old) and old.get("wheel_sha256") == want and os.path.isdir(purelib) and any(
        e.startswith("hilbed-") and e.endswith(".dist-info") for e in os.listdir(purelib))
    if not same_wheel or "venv created" in steps:
        if not os.path.exists(wheel):
            raise RuntimeError(f"{wheel} is missing: run `hilbed provision --force`")
        got = sha256_file(wheel)
        if got != want:
            raise RuntimeError(f"wheel checksum mismatch ({got[:12]} != {want[:12]}): transfer damaged")
        if spec.get("installer", "unpack") == "pip":
            pip_install(py, ["--no-deps", "--force-reinstall", "--no-index", "--no-compile", wheel])
            steps.append("wheel installed (pip)")
        else:
            unpack_wheel(wheel, vdir)
            steps.append("wheel installed")

    # dependencies: only what the venv cannot import yet
    reqs: dict[str, str] = spec.get("requirements", {})  # import name -> requirement
    check = run_verify(py, workdir, sorted(reqs))
    missing = check["missing"]
    if missing:
        want = [reqs[m] for m in missing]
        pip_install(py, [*spec.get("pip_args", []), *want])
        steps.append("installed " + ", ".join(want))
        check = run_verify(py, workdir, sorted(reqs))
        if check["missing"]:
            raise RuntimeError("still missing after pip: " + ", ".join(reqs[m] for m in check["missing"]))
    if not os.path.realpath(check["nodes"]).startswith(os.path.realpath(vdir) + os.sep):
        raise RuntimeError(f"the venv imports hilbed from {check['nodes']}, not from the provisioned wheel")
    if check["version"] != spec["version"]:
        raise RuntimeError(f"installed hilbed {check['version']} != expected {spec['version']}")

    assets = {}
    for a in spec.get("assets", []):
        p = os.path.join(workdir, a["path"])
        if not os.path.exists(p):
            raise RuntimeError(f"asset {a['name']} missing at {p}")
        if a.get("kind") == "file" and sha256_file(p) != a["sha256"]:
            raise RuntimeError(f"asset {a['name']} checksum mismatch")
        assets[a["sha256"]] = {"name": a["name"], "path": a["path"], "kind": a.get("kind", "file")}
    old_assets = (old or {}).get("assets", {}) if same_wheel else {}
    for k, v in old_assets.items():
        if k not in assets and os.path.exists(os.path.join(workdir, v["path"])):
            assets[k] = v

    marker = {
        "wheel_sha256": want, "wheel": spec["wheel"], "source_hash": spec.get("source_hash"),
        "version": check["version"], "extras": sorted(set(spec.get("extras", [])) |
                                                      set((old or {}).get("extras", []) if same_wheel else [])),
        "python": check["python"], "base_python": sys.executable, "venv": vdir,
        "boot_time": boot_time(), "boot_id": boot_id(), "provisioned_at": time.time(),
        "assets": assets, "node": spec.get("node"),
    }
    tmp = marker_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(marker, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker_path)
    return {"ok": True, "steps": steps, "marker": marker, "seconds": round(time.monotonic() - t0, 3)}


if __name__ == "__main__":
    try:
        out = main(json.loads(sys.argv[1]))
    except Exception as exc:  # one JSON line either way; the controller names the node
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))
    sys.exit(0 if out.get("ok") else 1)
