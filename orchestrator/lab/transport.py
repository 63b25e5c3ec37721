"""How the controller reaches a node: run commands, copy files, start agents.

``LocalTransport`` uses subprocesses on this machine (the embedded testbed);
``SSHTransport`` (hilbed.orchestrator.lab.ssh) does the same over SSH. Agents are driven
through :class:`AgentHandle`, which only needs a byte stream in each
direction, so local and remote agents behave the same.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from hilbed.orchestrator.errors import RunError

log = logging.getLogger("hilbed.agent")

#: how often wait_ready looks whether the agent died; how long it waits for a dead agent's exit status
READY_POLL_S = 0.05
EXIT_WAIT_S = 1.0
#: lines (and at most bytes) of a dead agent's log quoted in the error
LOG_TAIL_LINES = 5
LOG_TAIL_BYTES = 16384

REPO_ROOT = Path(__file__).resolve().parents[2]  # orchestrator/lab/transport.py -> the checkout (or site-packages/hilbed)


def shell_path(p: str) -> str:
    """A node path for a shell command line, ``~`` left for the node's shell to expand."""
    if p == "~":
        return '"$HOME"'
    if p.startswith("~/"):
        return '"$HOME"/' + shlex.quote(p[2:])
    return shlex.quote(p)


def local_shell_path(p: str) -> str:
    """A path on this machine for a command line the user pastes: quoted, ``~/`` left to their shell."""
    if p.startswith("~/"):
        return "~/" + shlex.quote(p[2:])
    return shlex.quote(p)


class AgentFailed(RuntimeError):
    """An agent died, timed out or answered with an error."""


@dataclass
class CommandResult:
    cmd: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class AgentProcess:
    """A running agent: a byte pipe each way plus lifecycle control."""

    stdin: IO[bytes]
    stdout: IO[bytes]
    #: the agent's stderr log and its size before this start: the tail after it is this agent's last words
    log_path: Path | None = None
    log_offset: int = 0

    def alive(self) -> bool:
        raise NotImplementedError

    def wait(self, timeout: float) -> int | None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return None


class LocalAgentProcess(AgentProcess):
    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.stdin = popen.stdin  # type: ignore[assignment]
        self.stdout = popen.stdout  # type: ignore[assignment]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)

    @property
    def pid(self) -> int | None:
        return self.popen.pid


class Transport:
    """Interface shared by local and SSH transports."""

    kind = "abstract"

    def __init__(self, node: str):
        self.node = node
        #: why the channel last failed (kept by transports that can tell), for incident reports
        self.last_error: str | None = None

    def run(self, cmd: str | list[str], timeout: float | None = 60, check: bool = False) -> CommandResult:
        raise NotImplementedError

    def put(self, local: str | Path, remote: str) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: str | Path) -> None:
        raise NotImplementedError

    def start_agent(self, module: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> AgentProcess:
        raise NotImplementedError

    def reconnect(self) -> "Transport":
        """Re-open the channel after the node dropped (SSH); a local node has nothing to re-open."""
        return self

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.kind


class LocalTransport(Transport):
    kind = "local"

    def __init__(self, node: str, python: str | None = None):
        super().__init__(node)
        self.python = python or sys.executable

    def run(self, cmd: str | list[str], timeout: float | None = 60, check: bool = False) -> CommandResult:
        shell = isinstance(cmd, str)
        p = subprocess.run(cmd, shell=shell, capture_output=True, text=True, timeout=timeout)
        text = cmd if shell else shlex.join(cmd)
        res = CommandResult(text, p.returncode, p.stdout, p.stderr)
        if check and not res.ok:
            raise RuntimeError(f"{self.node}: {text!r} failed ({p.returncode}): {p.stderr.strip()[:300]}")
        return res

    def put(self, local: str | Path, remote: str) -> None:
        Path(remote).expanduser().parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, Path(remote).expanduser())

    def get(self, remote: str, local: str | Path) -> None:
        shutil.copyfile(Path(remote).expanduser(), local)

    def start_agent(self, module: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> AgentProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        full_env.update(env or {})
        with open(log_path, "ab") as logf:
            offset = logf.tell()
            popen = subprocess.Popen([self.python, "-m", module, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=logf, env=full_env, cwd=str(REPO_ROOT),
                                     start_new_session=True)
        proc = LocalAgentProcess(popen)
        proc.log_path, proc.log_offset = log_path, offset
        return proc

    def describe(self) -> str:
        return f"local ({self.python})"


class AgentHandle:
    """Controller side of one agent's JSON-lines channel."""

    def __init__(self, node: str, role: str, proc: AgentProcess,
                 on_event: Callable[[str, str, dict], None] | None = None, log_path: Path | None = None):
        self.node, self.role, self.proc = node, role, proc
        self.on_event = on_event
        #: the agent's stderr log; its last lines go into the error when the agent dies before it is ready
        self.log_path = Path(log_path) if log_path is not None else getattr(proc, "log_path", None)
        self._log_offset = getattr(proc, "log_offset", 0) if log_path is None or \
            Path(log_path) == getattr(proc, "log_path", None) else 0
        #: the first exception the event handler raised (the channel goes on; the run decides what it means)
        self.handler_error: BaseException | None = None
        self.handler_errors = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.ready = threading.Event()
        self.dead = threading.Event()
        self.death_reason = ""
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name=f"agent-{node}-{role}")
        self._reader.start()

    def _read_loop(self) -> None:
        try:
            for raw in self.proc.stdout:
                line = raw.strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # not protocol: ignore
                if not isinstance(msg, dict):
                    continue
                if "event" in msg:
                    if msg["event"] == "ready":
                        self.ready.set()
                    if self.on_event:
                        try:
                            self.on_event(self.node, self.role, msg)
                        except Exception as exc:  # a bad handler must not kill the channel
                            self._handler_failed(msg, exc)
                    continue
                rid = msg.get("id")
                if type(rid) is not int:
                    continue  # not a reply to anything we asked
                with self._lock:
                    fut = self._pending.pop(rid, None)
                if fut is not None and not fut.done():
                    if msg.get("ok"):
                        fut.set_result(msg.get("result"))
                    else:
                        fut.set_exception(AgentFailed(f"{self.node}/{self.role}: {msg.get('error')}"))
        except (OSError, ValueError):
            pass
        except Exception as exc:  # never leave the handle alive-looking with a dead reader
            self.death_reason = self.death_reason or f"reader failed: {type(exc).__name__}: {exc}"
            log.debug("reader of %s/%s failed", self.node, self.role, exc_info=exc)
        self.death_reason = self.death_reason or "channel closed"
        self.dead.set()
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(AgentFailed(f"{self.node}/{self.role}: agent exited ({self.death_reason})"))

    def _handler_failed(self, msg: dict, exc: Exception) -> None:
        """Keep the first error and log one line: a RunError (the store refused a write) is reported by
        the run when it next writes; anything else is a bug: its first occurrence is a warning line, the
        rest (and every traceback) are at debug level, so a handler failing on every record cannot flood
        the terminal."""
        first = self.handler_error is None
        if first:
            self.handler_error = exc
        self.handler_errors += 1
        level = logging.WARNING if first and not isinstance(exc, RunError) else logging.DEBUG
        log.log(level, "%s/%s: handling event %r failed: %s: %s", self.node, self.role, msg.get("event"),
                type(exc).__name__, exc)
        log.debug("event handler traceback", exc_info=exc)

    def call_async(self, op: str, **args) -> Future:
        rid = next(self._ids)
        fut: Future = Future()
        with self._lock:
            if self.dead.is_set():
                fut.set_exception(AgentFailed(f"{self.node}/{self.role}: agent is not running"))
                return fut
            self._pending[rid] = fut
        line = json.dumps({"id": rid, "op": op, "args": args}, separators=(",", ":")) + "\n"
        try:
            with self._write_lock:
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
        except (OSError, ValueError) as exc:
            with self._lock:
                self._pending.pop(rid, None)
            fut.set_exception(AgentFailed(f"{self.node}/{self.role}: cannot write to agent: {exc}"))
        return fut

    def call(self, op: str, timeout: float | None = 60, **args):
        fut = self.call_async(op, **args)
        try:
            return fut.result(timeout)
        except TimeoutError:
            raise AgentFailed(f"{self.node}/{self.role}: {op} timed out after {timeout} s") from None

    def wait_ready(self, timeout: float) -> None:
        """Return once the agent said ``ready``; AgentFailed as soon as it died instead (not after ``timeout``),
        with its exit status and the last lines of its log, or after ``timeout`` without either."""
        end = time.monotonic() + timeout
        while not self.ready.is_set():
            if self.dead.is_set():
                break
            left = end - time.monotonic()
            if left <= 0:
                raise AgentFailed(f"{self.node}/{self.role}: agent did not start: no ready event within "
                                  f"{timeout:g} s{self._log_tail_text()}")
            self.ready.wait(min(left, READY_POLL_S))
        if self.dead.is_set():
            status = self.proc.wait(EXIT_WAIT_S)  # an SSH agent's stderr is complete in its log once it returns
            why = self.death_reason or "channel closed"
            if status is not None:
                why += f", exit status {status}"
            raise AgentFailed(f"{self.node}/{self.role}: agent did not start ({why}){self._log_tail_text()}")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last ``lines`` non-empty lines this agent wrote to its log ([] when there is none)."""
        if self.log_path is None:
            return []
        try:
            with open(self.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = max(self._log_offset if self._log_offset <= size else 0, size - LOG_TAIL_BYTES)
                f.seek(start)
                data = f.read()
        except OSError:
            return []
        text = data.decode("utf-8", errors="replace")
        out = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
        return out[-lines:]

    def _log_tail_text(self) -> str:
        tail = self.log_tail()
        if not tail:
            return f"; its log {self.log_path} is empty" if self.log_path is not None else ""
        return f"; last lines of {self.log_path}: " + " | ".join(ln[:300] for ln in tail)

    def close(self, timeout: float = 5.0) -> None:
        """Close stdin (the agent tears down) and make sure the process is gone."""
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        if self.proc.wait(timeout) is None:
            self.proc.kill()
        self.dead.set()


def clock_probe(handle: AgentHandle, samples: int = 8) -> dict:
    """NTP-style offset of the node clock vs ours: the minimum-RTT sample wins.

    offset = node_time - controller_time; uncertainty = rtt / 2 of that sample.
    """
    best = None
    for _ in range(max(8, samples)):
        t0 = time.time_ns()
        r = handle.call("clock", timeout=10)
        t1 = time.time_ns()
        rtt = t1 - t0
        off = int(r["t_ns"]) - (t0 + t1) // 2
        if best is None or rtt < best[0]:
            best = (rtt, off)
    assert best is not None
    return {"offset_ns": best[1], "uncertainty_ns": best[0] // 2, "rtt_ns": best[0], "samples": max(8, samples),
            "at_ns": time.time_ns()}
