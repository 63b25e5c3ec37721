"""``hilbed provision``: bring every SSH node to the controller's code, fast and idempotently.

1. Build the project wheel once per source state (``pip wheel --no-deps``,
   cached by a hash of the sources, so the same sources give the same wheel
   and the same hash on every run).
2. For every node in parallel: one command reads the node's marker
   (``<workdir>/provision.json``) through the node's venv; a node that already
   has this wheel, its role's extras and every asset is done (warm path: one
   connection, one command).
3. Otherwise push what is missing (wheel, setup script, content-hashed assets
   and codec artifacts) and run ``orchestrator/lab/nodesetup.py`` there: it makes
   or reuses the venv, installs the wheel and only the missing dependencies,
   verifies the import and writes the marker.

Local nodes need nothing: they run from this checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from hilbed.orchestrator.lab.transport import REPO_ROOT, Transport, shell_path
from hilbed.orchestrator.roles import ROLES
from hilbed.orchestrator.ui import make_console

SOURCE_DIRS = ("hilbed", "orchestrator", "firmware_bridge", "nodes", "analysis")
SOURCE_FILES = ("pyproject.toml", "setup.py", "README.md")
#: requirement name -> import name, where they differ
IMPORT_NAMES = {"pillow": "PIL", "pyserial": "serial", "pyyaml": "yaml", "scikit-learn": "sklearn"}
SETUP_NAME = ".hilbed-setup.py"


class ProvisionError(RuntimeError):
    """Provisioning failed on a node; the message names the node and the fix."""


def cache_root() -> Path:
    from hilbed.nodes.paths import cache_dir
    return cache_dir()


# ------------------------------------------------------------------ wheel ---

def _source_files(root: Path) -> list[Path]:
    out = [root / f for f in SOURCE_FILES if (root / f).exists()]
    for d in SOURCE_DIRS:
        for p in sorted((root / d).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo") \
                    and not p.name.endswith((".tmp", ".swp")):
                out.append(p)
    return out


def source_hash(root: Path = REPO_ROOT) -> str:
    """A hash of everything that goes into the wheel (names and contents)."""
    h = hashlib.sha256()
    for p in _source_files(root):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha256: str
    source_hash: str
    version: str
    requires: tuple[tuple[str, str | None], ...]  # (requirement, extra or None)
    built_s: float = 0.0

    @property
    def name(self) -> str:
        return self.path.name

    def requirements(self, extras: Iterable[str]) -> dict[str, str]:
        """import name -> requirement for the base dependencies plus ``extras``."""
        ex = set(extras)
        out: dict[str, str] = {}
        for req, extra in self.requires:
            if extra is not None and extra not in ex:
                continue
            name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip()
            if name.lower() == "hilbed":
                continue
            out[IMPORT_NAMES.get(name.lower(), name.replace("-", "_"))] = req
        return out


def _wheel_meta(path: Path) -> tuple[str, tuple]:
    with zipfile.ZipFile(path) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    version = re.search(r"^Version: (.+)$", meta, re.M).group(1).strip()
    reqs = []
    for m in re.finditer(r"^Requires-Dist: (.+)$", meta, re.M):
        text = m.group(1).strip()
        req, _, marker = text.partition(";")
        em = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        reqs.append((req.strip(), em.group(1) if em else None))
    return version, tuple(reqs)


def build_wheel(root: Path = REPO_ROOT, cache: Path | None = None, force: bool = False) -> Wheel:
    """The project wheel for the current sources (built once, then taken from the cache)."""
    sh = source_hash(root)
    out_dir = (cache or cache_root()) / "wheels" / sh
    found = sorted(out_dir.glob("hilbed-*.whl")) if out_dir.exists() else []
    t0 = time.monotonic()
    if not found or force:
        tmp = Path(tempfile.mkdtemp(prefix="hilbed-wheel-"))
        try:
            src = tmp / "src"
            src.mkdir()
            for f in SOURCE_FILES:
                if (root / f).exists():
                    shutil.copy2(root / f, src / f)
            for d in SOURCE_DIRS:
                shutil.copytree(root / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                   "--disable-pip-version-check", "-q", "-w", str(tmp / "dist"), str(src)]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise ProvisionError(f"building the hilbed wheel failed: {p.stderr.strip()[-800:]}")
            built = next((tmp / "dist").glob("hilbed-*.whl"))
            out_dir.mkdir(parents=True, exist_ok=True)
            dest = out_dir / built.name
            shutil.copyfile(built, dest.with_suffix(".part"))
            os.replace(dest.with_suffix(".part"), dest)
            found = [dest]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    path = found[-1]
    version, reqs = _wheel_meta(path)
    return Wheel(path, hashlib.sha256(path.read_bytes()).hexdigest(), sh, version, reqs,
                 round(time.monotonic() - t0, 3))


# ----------------------------------------------------------------- assets ---

@dataclass(frozen=True)
class Asset:
    """A file or a codec-artifact directory to push, named by its content hash.

    ``roles``: the node roles that read it (empty: every node), so an edge gets the model and a client the
    traces, not each other's files. ``what`` says what it is in check failures ("trace of condition x").
    """
    name: str
    local: Path
    sha256: str
    kind: str = "file"  # file | artifact
    roles: tuple[str, ...] = ()
    what: str = ""
    #: a node without it can still run, only slower (the model: the edge then trains or fetches it itself)
    optional: bool = False

    @property
    def remote(self) -> str:
        """Where it lands, relative to the node's workdir."""
        if self.kind == "artifact":
            return f"artifacts/{self.name}"
        return f"assets/{self.sha256[:16]}/{self.name}"

    def for_roles(self, roles: Iterable[str]) -> bool:
        return not self.roles or bool(set(self.roles) & set(roles))


_HASHES: dict[tuple, str] = {}


def _sha256(path: Path) -> str:
    """A file's sha256, cached by (path, size, mtime): runs map the same traces many times."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def file_asset(path: Path, roles: Iterable[str] = (), what: str = "") -> Asset:
    path = Path(path)
    return Asset(path.name, path, _sha256(path), roles=tuple(roles), what=what or path.name)


def artifact_asset(path: Path, roles: Iterable[str] = (), what: str = "") -> Asset:
    """A codec artifact directory ``<kind>-<sha12>``: its name is already its content id."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return Asset(Path(path).name, Path(path), h.hexdigest(), "artifact", tuple(roles), what or Path(path).name)


#: link kinds whose traces the controller reads itself (kernel shaping): nothing to push for them
CONTROLLER_TRACE_KINDS = ("tc",)
ARTIFACT_ID = re.compile(r"[a-z0-9_.+-]+-[0-9a-f]{12}")


def trace_assets(scenario: Any) -> dict[tuple[str, str], Asset]:
    """(condition, "trace" | "downlink_trace") -> the trace file a client's shaper reads."""
    out: dict[tuple[str, str], Asset] = {}
    for cond in scenario.conditions:
        if cond.link.kind in CONTROLLER_TRACE_KINDS:
            continue
        for attr in ("trace", "downlink_trace"):
            p = getattr(cond.link, attr, None)
            if p:
                out[(cond.name, attr)] = file_asset(Path(p), ("client",), f"{attr} of condition {cond.name}")
    return out


def artifact_assets(scenario: Any) -> list[Asset]:
    """Codec artifacts the scenario's codec params name (clients encode, the edge decodes)."""
    try:
        from hilbed.nodes.codecs.artifacts import default_root
        art_root = default_root()
    except ImportError:
        art_root = cache_root() / "artifacts"
    out = []
    for c in scenario.codecs:
        for v in _strings(c.params):
            cand = art_root / v
            if ARTIFACT_ID.fullmatch(v) and cand.is_dir():
                out.append(artifact_asset(cand, ("client", "edge"), f"artifact {v} of codec {c.display}"))
    return out


def model_file(spec: str, size: int, *, prepare: bool = False) -> Path | None:
    """The controller's weights file for a model spec, where the edge should get it pushed.

    ``synthetic-cnn``: the cached trained model (trained here first when ``prepare``); ``cifar-resnet:NAME``:
    the catalog's file (fetched when ``prepare``); ``cifar-resnet:``/``torchscript:``/``onnx:`` absolute paths
    and ``torchvision:NAME@/abs/file``. None where the node finds the model itself (a relative path is the
    node's own, relative to its workdir; code-built models).
    """
    prefix, _, arg = spec.partition(":")
    if prefix == "synthetic-cnn" and not arg:
        from hilbed.orchestrator.run.inputs import _synthetic_cnn_key
        path = cache_root() / "models" / f"synthetic-cnn-{_synthetic_cnn_key(size)}.pt"
        if not path.is_file() and prepare:
            from hilbed.nodes.workload.models import TrainConfig, synthetic_cnn
            synthetic_cnn(TrainConfig(size=size))  # trained once on the controller, then cached
        return path if path.is_file() else None
    if prefix == "cifar-resnet":
        from hilbed.nodes.workload.catalog import CATALOG, weights_path
        if arg in CATALOG:
            if prepare:
                return weights_path(arg)
            found = CATALOG[arg].locate()
            return found[1] if found and found[1].is_file() else None
    if prefix == "torchvision":
        arg = arg.partition("@")[2]
    elif prefix not in ("cifar-resnet", "torchscript", "onnx"):
        return None
    p = Path(arg).expanduser() if arg else None
    return p if p is not None and p.is_absolute() and p.is_file() else None


def node_model_spec(spec: str, node_path: str) -> str:
    """``spec`` with its weights file replaced by where the node has the pushed copy."""
    prefix, _, arg = spec.partition(":")
    if prefix == "torchvision":
        return f"torchvision:{arg.partition('@')[0]}@{node_path}"
    return f"{prefix}:{node_path}"


def model_asset(spec: str, size: int, *, prepare: bool = False) -> Asset | None:
    path = model_file(spec, size, prepare=prepare)
    if path is None:
        return None
    a = file_asset(path, ("edge",), f"model {spec}")
    return Asset(a.name, a.local, a.sha256, a.kind, a.roles, a.what, optional=True)


def assets_of(scenario: Any, *, prepare_model: bool = False) -> list[Asset]:
    """Everything nodes read of a loaded scenario: traces, codec artifacts, the model's weights."""
    out: dict[tuple, Asset] = {}
    found = [*trace_assets(scenario).values(), *artifact_assets(scenario)]
    m = model_asset(scenario.workload.model, scenario.workload.image_size, prepare=prepare_model)
    if m is not None:
        found.append(m)
    for a in found:
        key = (a.sha256, a.name)
        if key in out:  # one file used twice: pushed once, to every role that reads it
            a = Asset(a.name, a.local, a.sha256, a.kind, tuple(sorted(set(out[key].roles) | set(a.roles))),
                      out[key].what, out[key].optional and a.optional)
        out[key] = a
    return list(out.values())


def scenario_assets(scenario_paths: Iterable[str | Path], prepare_model: bool = True) -> list[Asset]:
    """Trace files the scenarios name, codec artifacts their codec params refer to and their model's weights
    (the default model is trained here once, so no edge trains it on its first run)."""
    from hilbed.orchestrator.config import load_scenario
    out: dict[tuple, Asset] = {}
    for sp in scenario_paths:
        for a in assets_of(load_scenario(sp), prepare_model=prepare_model):
            out.setdefault((a.sha256, a.name, a.roles), a)
    return list(out.values())


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


# ------------------------------------------------------------------- nodes ---

@dataclass
class NodeResult:
    node: str
    state: str  # warm | cold | local | failed
    steps: list[str] = field(default_factory=list)
    version: str | None = None
    python: str | None = None
    seconds: float = 0.0
    error: str | None = None
    marker: dict | None = None

    @property
    def ok(self) -> bool:
        return self.state != "failed"


def node_extras(roles: Iterable[str]) -> list[str]:
    """The optional-dependency groups a node's roles need (from the roles table)."""
    return sorted({ROLES[r].extra for r in roles if r in ROLES and ROLES[r].extra})


def _q(workdir: str) -> str:
    return shell_path(workdir)


def read_marker(t: Transport, workdir: str, imports: Iterable[str] = (), timeout: float = 60) -> dict | None:
    """The node's provision state as its venv sees it, or None when there is no working venv."""
    from hilbed.orchestrator.lab.nodesetup import MARKER, VERIFY
    wd = _q(workdir)
    args = " ".join(shlex.quote(x) for x in [f"{MARKER}", *imports])
    r = t.run(f"cd {wd} 2>/dev/null && [ -x venv/bin/python ] && venv/bin/python -I -c {shlex.quote(VERIFY)} {args}",
              timeout=timeout)
    if not r.ok:
        return None
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _read_remote_json(t: Transport, remote: str) -> dict | None:
    with tempfile.TemporaryDirectory(prefix="hilbed-marker-") as d:
        try:
            t.get(remote, Path(d) / "m.json")
            return json.loads((Path(d) / "m.json").read_text())
        except (OSError, ValueError):
            return None


def _warm(state: dict | None, wheel: Wheel, extras: list[str], assets: list[Asset]) -> bool:
    """Does ``state`` (a marker, or what the node's venv reported) say there is nothing to do?"""
    if not state or not state.get("marker"):
        return False
    m = state["marker"]
    if m.get("wheel_sha256") != wheel.sha256 or state.get("version") != wheel.version:
        return False
    if not set(extras) <= set(m.get("extras", [])) or state.get("missing"):
        return False
    if "nodes" in state and not os.path.normpath(state["nodes"]).startswith(os.path.normpath(state["prefix"]) + os.sep):
        return False  # the venv imports hilbed from somewhere else
    have = m.get("assets", {})
    return all(a.sha256 in have for a in assets)


def provision_node(node: str, cfg: Any, t: Transport, wheel: Wheel, assets: list[Asset], *,
                   pip_args: list[str] | None = None, force: bool = False, installer: str = "unpack") -> NodeResult:
    t0 = time.monotonic()
    tcfg = cfg.transport
    if tcfg.kind == "local":
        return NodeResult(node, "local", ["runs from this checkout"], wheel.version, sys.version.split()[0])
    extras = node_extras(cfg.roles)
    reqs = wheel.requirements(extras)
    workdir = tcfg.workdir
    base = workdir.rstrip("/")
    wd = _q(workdir)
    try:
        # the marker over SFTP: no remote shell at all when the node is new
        have = {} if force else (_read_remote_json(t, f"{base}/provision.json") or {})
        if have and _warm({"marker": have, "version": have.get("version")}, wheel, extras, assets):
            state = read_marker(t, workdir, sorted(reqs))  # the venv itself confirms what the marker says
            if _warm(state, wheel, extras, assets):
                return NodeResult(node, "warm", [], state["version"], state["python"],
                                  round(time.monotonic() - t0, 3), marker=state["marker"])
        steps = []
        t.put(Path(__file__).with_name("nodesetup.py"), f"{base}/{SETUP_NAME}")
        remote_wheel = f"wheels/{wheel.sha256[:16]}/{wheel.name}"
        if force or have.get("wheel_sha256") != wheel.sha256:
            t.put(wheel.path, f"{base}/{remote_wheel}")
            steps.append("wheel pushed")
        have_assets = have.get("assets", {}) if have.get("wheel_sha256") == wheel.sha256 else {}
        pushed = 0
        for a in assets:
            if a.sha256 in have_assets and not force:
                continue
            _push_asset(t, workdir, a)
            pushed += 1
        if pushed:
            steps.append(f"{pushed} asset(s) pushed")
        spec = {"workdir": workdir, "wheel": remote_wheel, "wheel_sha256": wheel.sha256, "version": wheel.version,
                "source_hash": wheel.source_hash, "extras": extras, "requirements": reqs,
                "pip_args": list(pip_args or []), "installer": installer, "node": node,
                "assets": [{"name": a.name, "sha256": a.sha256, "path": a.remote, "kind": a.kind} for a in assets]}
        r = t.run(f"{shlex.quote(tcfg.python)} {wd}/{SETUP_NAME} {shlex.quote(json.dumps(spec))}", timeout=1800)
        try:
            out = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            out = {"ok": False, "error": (r.stderr or r.stdout).strip()[-500:] or f"exit status {r.returncode}"}
        if not out.get("ok"):
            raise ProvisionError(out.get("error", "node setup failed"))
        m = out["marker"]
        return NodeResult(node, "cold", steps + out["steps"], m["version"], m["python"],
                          round(time.monotonic() - t0, 3), marker=m)
    except Exception as exc:
        from hilbed.orchestrator.lab.ssh import SSHError
        msg = str(exc) if isinstance(exc, SSHError) else f"{type(exc).__name__}: {exc}"
        if "pip install failed" in msg:
            msg += " (fix: give the node network access, or pass --pip-arg=--no-index --pip-arg=--find-links=DIR)"
        return NodeResult(node, "failed", [], seconds=round(time.monotonic() - t0, 3), error=msg)


def _push_asset(t: Transport, workdir: str, a: Asset) -> None:
    base = workdir.rstrip("/")
    if a.kind == "file":
        t.put(a.local, f"{base}/{a.remote}")
        return
    # an artifact directory: files into a temporary directory, then one rename
    tmpdir = f"artifacts/.{a.name}.{os.getpid()}"
    for p in sorted(a.local.rglob("*")):
        if p.is_file():
            t.put(p, f"{base}/{tmpdir}/{p.relative_to(a.local)}")
    wd = _q(workdir)
    t.run(f"cd {wd} && if [ -d {shlex.quote(a.remote)} ]; then rm -rf {shlex.quote(tmpdir)}; "
          f"else mv {shlex.quote(tmpdir)} {shlex.quote(a.remote)}; fi", check=True)


@dataclass
class ProvisionReport:
    wheel: Wheel
    results: dict[str, NodeResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values())


def provision(testbed: Any, transports: dict[str, Transport] | None = None, *, nodes: Iterable[str] | None = None,
              assets: list[Asset] | None = None, pip_args: list[str] | None = None, force: bool = False,
              jobs: int = 32, installer: str = "unpack",
              on_result: Callable[[NodeResult], None] | None = None) -> ProvisionReport:
    """Provision ``testbed``'s nodes in parallel. Transports given are reused (and left open)."""
    from hilbed.orchestrator.lab.connect import make_transport
    t0 = time.monotonic()
    wheel = build_wheel()
    names = list(nodes) if nodes else list(testbed.nodes)
    unknown = [n for n in names if n not in testbed.nodes]
    if unknown:
        raise ProvisionError(f"unknown node(s): {', '.join(unknown)} (testbed has: {', '.join(testbed.nodes)})")
    own: dict[str, Transport] = {}
    trs = dict(transports or {})

    def one(n: str) -> NodeResult:
        cfg = testbed.nodes[n]
        if cfg.transport.kind == "local":
            res = provision_node(n, cfg, None, wheel, [])  # type: ignore[arg-type]
        else:
            t = trs.get(n)
            if t is None:
                try:
                    t = own[n] = make_transport(n, cfg)
                except Exception as exc:
                    return NodeResult(n, "failed", error=str(exc))
            mine = [a for a in assets or [] if a.for_roles(cfg.roles)]
            res = provision_node(n, cfg, t, wheel, mine, pip_args=pip_args, force=force, installer=installer)
        if on_result:
            on_result(res)
        return res

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(names)))) as ex:
            results = dict(zip(names, ex.map(one, names)))
    finally:
        for t in own.values():
            try:
                t.close()
            except Exception:
                pass
    return ProvisionReport(wheel, results, round(time.monotonic() - t0, 3))


def render_report(rep: ProvisionReport, console=None) -> None:
    from rich.table import Table
    con = console or make_console()
    tbl = Table(title=f"provision: hilbed {rep.wheel.version} wheel {rep.wheel.sha256[:12]} "
                      f"(sources {rep.wheel.source_hash})")
    for col in ("node", "state", "python", "what was done", "s"):
        tbl.add_column(col, justify="right" if col == "s" else "left")
    colors = {"warm": "green", "cold": "cyan", "local": "dim", "failed": "red"}
    for r in rep.results.values():
        what = r.error if r.error else (", ".join(r.steps) or "up to date")
        tbl.add_row(r.node, f"[{colors[r.state]}]{r.state}[/]", r.python or "-", what, f"{r.seconds:.2f}")
    con.print(tbl)
    bad = [r for r in rep.results.values() if not r.ok]
    con.print(f"{len(rep.results) - len(bad)}/{len(rep.results)} nodes ready in {rep.seconds:.1f} s")
