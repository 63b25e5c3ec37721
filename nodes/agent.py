"""The agent side of the controller protocol: JSON lines on stdin/stdout.

Requests ``{"id", "op", "args"}`` get exactly one reply ``{"id", "ok": true,
"result"}`` or ``{"id", "ok": false, "error"}``; agents may also emit
unsolicited ``{"event": name, ...}`` lines. The transport only carries bytes,
so the same agent runs as a local subprocess or over an SSH channel. When stdin
closes (the controller died or the channel dropped) the agent runs its teardown
and exits: a node never outlives its controller.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from hilbed.nodes.events import AgentEvent

log = logging.getLogger("hilbed.agent")


class AgentError(Exception):
    """An error reported to the controller without a traceback."""


class Agent:
    """Base class. Subclasses register ops with :meth:`op` or define ``op_<name>`` methods."""

    name = "agent"
    #: ops answered on the reader thread (must be quick), e.g. the clock probe
    inline_ops = frozenset({"clock", "ping", "medium"})

    def __init__(self) -> None:
        self._out_lock = threading.Lock()
        # Protocol lines go to the real stdout; stray prints go to stderr.
        self._out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
        sys.stdout = sys.stderr
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"{self.name}-op")
        self._stopping = threading.Event()
        self.started_at = time.time()

    # -- protocol ---------------------------------------------------------
    def send(self, obj: dict) -> None:
        line = json.dumps(obj, separators=(",", ":"), default=_json_default)
        with self._out_lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (BrokenPipeError, ValueError, OSError):
                self._stopping.set()

    def event(self, name: str | AgentEvent, **fields: Any) -> None:
        self.send({"event": name, "node_time_ns": time.time_ns(), **fields})

    def _handle(self, req: dict) -> None:
        rid = req.get("id")
        op = req.get("op")
        fn: Callable | None = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if fn is None:
            self.send({"id": rid, "ok": False, "error": f"unknown op {op!r}"})
            return
        try:
            result = fn(**(req.get("args") or {}))
            self.send({"id": rid, "ok": True, "result": result})
        except AgentError as exc:
            self.send({"id": rid, "ok": False, "error": str(exc)})
        except Exception as exc:  # report, keep serving
            log.error("op %s failed:\n%s", op, traceback.format_exc())
            self.send({"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    # -- built-in ops -----------------------------------------------------
    def op_ping(self) -> dict:
        return {"name": self.name, "pid": os.getpid()}

    def op_clock(self) -> dict:
        """One NTP-style sample: the node's wall clock at reply time."""
        return {"t_ns": time.time_ns()}

    def op_facts(self) -> dict:
        import platform
        return {"python": platform.python_version(), "platform": platform.platform(),
                "hostname": platform.node(), "pid": os.getpid(), "agent": self.name,
                "uptime_s": _uptime_s(), "started_at": self.started_at, "packages": _package_versions()}

    def op_host_load(self) -> dict:
        """How busy this node is now (for the manifest's before/after facts)."""
        from hilbed.nodes.hostload import host_load
        return host_load()

    def op_medium(self, load: float, mbps: float, level: str | None = None, t_start: float | None = None,
                  t_end: float | None = None, path: str | None = None) -> dict:
        """The jammer's measured load, relayed by the controller: written into this node's medium file, which
        its shaped links read (the jammer runs on another machine). ``t_start``/``t_end``: the measurement
        window in this node's clock; the reply says how old the measurement was when it arrived."""
        from hilbed.nodes.link.medium import node_medium_path, write_medium
        p = path or str(node_medium_path())
        now = time.time()
        write_medium(p, load, mbps, t=now, level=level, relayed=True, t_window_end=t_end)
        return {"path": p, "age_s": None if t_end is None else round(now - float(t_end), 4)}

    def op_shutdown(self) -> dict:
        threading.Thread(target=self._exit, args=(0,), daemon=True).start()
        return {}

    # -- lifecycle --------------------------------------------------------
    def setup(self) -> None:
        """Called once before serving."""

    def teardown(self) -> None:
        """Called exactly once on every exit path (EOF, signal, shutdown op)."""

    _torn_down = False
    _td_lock = threading.Lock()

    def _teardown_once(self) -> None:
        with self._td_lock:
            if self._torn_down:
                return
            self._torn_down = True
        try:
            self.teardown()
        except Exception:
            log.error("teardown failed:\n%s", traceback.format_exc())

    def _exit(self, code: int) -> None:
        self._stopping.set()
        self._teardown_once()
        try:
            self._out.flush()
        except Exception:
            pass
        os._exit(code)

    def serve(self) -> None:
        logging.basicConfig(level=os.environ.get("HILBED_LOG", "INFO"), stream=sys.stderr,
                            format=f"%(asctime)s {self.name} %(levelname)s %(message)s")
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, lambda s, f: self._exit(128 + s))
        self.setup()
        self.event(AgentEvent.READY, agent=self.name, pid=os.getpid())
        stdin = sys.stdin.buffer
        while not self._stopping.is_set():
            line = stdin.readline()
            if not line:
                break  # controller gone
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError:
                self.send({"id": None, "ok": False, "error": f"bad request line: {line[:80]!r}"})
                continue
            if req.get("op") in self.inline_ops:
                self._handle(req)
            else:
                self._pool.submit(self._handle, req)
        log.info("stdin closed: tearing down")
        self._exit(0)


#: distributions whose versions a run's provenance records per node
PROVENANCE_PACKAGES = ("hilbed", "numpy", "pillow", "torch", "torchvision", "pyserial", "compressai", "onnxruntime")


def _package_versions() -> dict:
    from importlib import metadata
    out = {}
    for name in PROVENANCE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _uptime_s() -> float | None:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def _json_default(o: Any) -> Any:
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: the thread pools numeric libraries size from the environment when they load
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_compute_threads(n: int) -> int:
    """Cap torch's and BLAS's intra-op threads at ``n`` for this process; returns ``n``.

    A client encodes one image at a time: a pool of threads gains nothing on a 32 px encoder, and on a
    shared host a spinning OpenMP pool costs tens of ms per call (measured: the entropic student's encode
    1.8 ms with one thread, 27-73 ms with two on a loaded 2-core machine). Set before torch loads, so the
    pools are sized once; if torch is already in, it is told as well.
    """
    n = max(1, int(n))
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n


def run_agent(agent_cls: type[Agent]) -> None:
    """Serve ``agent_cls`` on stdin/stdout, after importing the plug-ins named in HILBED_PLUGINS."""
    from hilbed.nodes.plugins import load_plugins
    for p in load_plugins():
        if not p.ok:
            print(f"hilbed: plug-in {p.module} failed to load: {p.error}", file=sys.stderr, flush=True)
    agent_cls().serve()
