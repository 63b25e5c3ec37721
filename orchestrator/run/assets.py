"""The path of a controller file on a node: what the run hands an agent instead of a controller path.

A local node reads the controller's own file. An SSH node reads the copy
provisioning pushed (``hilbed provision --scenario``): content-hashed under
``<workdir>/assets/<sha16>/<name>`` (codec artifacts under
``<workdir>/artifacts/<id>``), so the path names the content and a changed
file is a new path, never a silently different one. Files a node writes for
the run (link logs, its medium file) go under ``<workdir>/runs/<run_id>/`` and
link logs are fetched back into the run's logs.

The workdir may start with ``~``, which only the node can expand: it is
resolved once per node through its transport.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from hilbed.nodes.events import RunEvent
from hilbed.orchestrator.lab.provision import Asset, assets_of, file_asset, model_asset, node_model_spec
from hilbed.orchestrator.lab.transport import shell_path

STATE_KEY = "node_files"
#: a node's file (a link log) could not be copied back (TODO(lead): a RunEvent member, then drop this)


class NodeFiles:
    """Answers "where is controller file X on node N" for one run (kept in ``ctx.state``)."""

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self._workdirs: dict[str, str] = {}
        self._assets: dict[str, Asset | None] = {}
        self._model: Asset | None | bool = False  # False: not looked up yet

    # -- nodes -----------------------------------------------------------
    def is_remote(self, node: str) -> bool:
        return self.ctx.testbed.nodes[node].transport.kind != "local"

    def workdir(self, node: str) -> str:
        """The node's workdir as an absolute path on the node (``~`` expanded there, once)."""
        if node not in self._workdirs:
            wd = self.ctx.testbed.nodes[node].transport.workdir.rstrip("/") or "/"
            if wd.startswith("~"):
                r = self.ctx.transport(node).run(f"cd {shell_path(wd)} 2>/dev/null || mkdir -p {shell_path(wd)} "
                                                 f"&& cd {shell_path(wd)} && pwd", timeout=30)
                got = r.stdout.strip().splitlines()[-1] if r.ok and r.stdout.strip() else ""
                if not got.startswith("/"):
                    raise RuntimeError(f"node {node}: cannot resolve its workdir {wd}: "
                                       f"{(r.stderr or r.stdout).strip()[:200]}")
                wd = got
            self._workdirs[node] = wd
        return self._workdirs[node]

    def run_dir(self, node: str) -> str:
        """Where the node writes this run's files (link logs, medium file)."""
        if not self.is_remote(node):
            return str(self.ctx.store.logs)
        return f"{self.workdir(node)}/runs/{self.ctx.store.run_id}"

    # -- files the controller has ----------------------------------------
    def asset(self, local: str | Path) -> Asset:
        key = str(Path(local))
        if key not in self._assets:
            self._assets[key] = file_asset(Path(local))
        return self._assets[key]  # type: ignore[return-value]

    def asset_path(self, node: str, a: Asset) -> str:
        """Where ``a`` is on ``node`` (the controller's file on a local node)."""
        if not self.is_remote(node):
            return str(a.local)
        return f"{self.workdir(node)}/{a.remote}"

    def path(self, node: str, local: str | Path) -> str:
        """The node's path of the controller file ``local`` (its pushed copy on an SSH node)."""
        if not self.is_remote(node):
            return str(local)
        return self.asset_path(node, self.asset(local))

    # -- the run's own files ---------------------------------------------
    def medium_file(self, node: str) -> str:
        """The medium file the node's agents read (and a jammer there writes): the run's one file on this
        machine, a node-local one elsewhere (the controller relays the jammer's load into it)."""
        if not self.is_remote(node):
            return str(self.ctx.medium_file)
        return f"{self.run_dir(node)}/medium.json"

    def log_path(self, node: str, name: str) -> str:
        """A log the node writes for this run; :meth:`fetch` brings a remote one into the run's logs."""
        return f"{self.run_dir(node)}/{name}"

    def fetch(self, node: str, name: str, optional: bool = False) -> Path | None:
        """Copy the node's ``log_path(node, name)`` into the run's logs (a local node wrote it there already).

        Returns the local file, or None when the transport cannot copy or the file is not there
        (``optional``: no event for a missing one)."""
        dest = self.ctx.store.logs / name
        if not self.is_remote(node):
            return dest if dest.exists() else None
        remote = self.log_path(node, name)
        part = dest.with_name(dest.name + ".part")
        try:
            self.ctx.transport(node).get(remote, part)
            part.replace(dest)
            return dest
        except NotImplementedError:
            self.ctx.event(RunEvent.NODE_FILE_NOT_FETCHED, node=node, path=remote, error="the transport cannot copy files")
        except Exception as exc:
            if not (optional and isinstance(exc, FileNotFoundError)):
                self.ctx.event(RunEvent.NODE_FILE_NOT_FETCHED, node=node, path=remote, error=f"{type(exc).__name__}: {exc}")
        part.unlink(missing_ok=True)
        return None

    # -- the model -------------------------------------------------------
    def model(self) -> Asset | None:
        """The model's weights file provisioning pushes to the edge (None: the edge finds the model itself)."""
        if self._model is False:
            w = self.ctx.scenario.workload
            self._model = model_asset(w.model, w.image_size)
        return self._model  # type: ignore[return-value]

    def model_spec(self, node: str) -> str:
        """What the edge's ``load`` gets: the scenario's spec, or on an SSH node the same model read from the
        pushed copy (when the pre-run check found it there; else the node loads or trains it itself)."""
        spec = self.ctx.scenario.workload.model
        if not self.is_remote(node):
            return spec
        a = self.model()
        if a is None or not self.present(node, a):
            return spec
        return node_model_spec(spec, self.asset_path(node, a))

    # -- what a node needs -----------------------------------------------
    def needed(self, node: str) -> list[Asset]:
        """Every pushed file the node's roles read in this scenario (nothing for a local node)."""
        if not self.is_remote(node):
            return []
        roles = self.ctx.testbed.nodes[node].roles
        return [a for a in assets_of(self.ctx.scenario) if a.for_roles(roles)]

    def present(self, node: str, a: Asset) -> bool:
        """Whether the pre-run check found ``a`` on ``node`` with its hash (True where nothing was checked)."""
        seen = self.ctx.state.get("assets_checked", {}).get(node)
        return True if seen is None else a.sha256 in seen


def node_files(ctx: Any) -> NodeFiles:
    """The run's :class:`NodeFiles` (made on first use)."""
    nf = ctx.state.get(STATE_KEY)
    if nf is None:
        nf = ctx.state[STATE_KEY] = NodeFiles(ctx)
    return nf


#: ctx.state key: (node, role) -> the medium file that agent follows in the current condition (the relay's readers)
MEDIUM_READERS = "medium_readers"


def medium_reader(ctx: Any, node: str, role: str) -> str:
    """The medium file ``node``'s ``role`` agent should follow in the current condition; registers it with the
    relay (a link kind's ``client_spec`` calls this for a link that follows the jammer's load)."""
    path = node_files(ctx).medium_file(node)
    with ctx.lock:
        ctx.state.setdefault(MEDIUM_READERS, {})[(node, role)] = path
    return path


# --------------------------------------------------------- asset check ---

#: run by the node's venv Python: sha256 of each file (artifact dirs hashed like provisioning's artifact_asset)
_HASH_SCRIPT = r"""
import hashlib, json, os, sys
def f(p):
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return h
out = {}
for p in sys.argv[1:]:
    try:
        if os.path.isdir(p):
            h = hashlib.sha256()
            items = sorted((os.path.relpath(os.path.join(r, n), p) for r, _, fs in os.walk(p) for n in fs),
                           key=lambda rel: rel.split(os.sep))  # the order of pathlib's sorted(rglob())
            for rel in items:
                h.update(rel.encode() + b"\0" + f(os.path.join(p, rel)).digest())
            out[p] = h.hexdigest()
        else:
            out[p] = f(p).hexdigest()
    except OSError:
        out[p] = None
print(json.dumps(out))
"""


def hash_on_node(t: Any, workdir: str, rel_paths: list[str], timeout: float = 120) -> dict[str, str | None]:
    """sha256 of each ``workdir``-relative path on the node (None: missing or unreadable), one command."""
    import json

    if not rel_paths:
        return {}
    args = " ".join(shlex.quote(p) for p in rel_paths)
    r = t.run(f"cd {shell_path(workdir)} && venv/bin/python -I -c {shlex.quote(_HASH_SCRIPT)} {args}",
              timeout=timeout)
    if not r.ok:
        raise RuntimeError((r.stderr or r.stdout).strip()[-300:] or f"exit status {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])
