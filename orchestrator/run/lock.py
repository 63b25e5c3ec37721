"""One live controller per run directory: ``<run_dir>/run.lock``.

Two controllers appending to one ``trials.jsonl`` measure the same images
twice, concurrently, over one link. The lock file names its owner (pid, host,
boot id, the pid's start time, command, start) so a refusal can say who holds
the run, and so a lock left by a killed controller is recognised as stale:
its pid is gone, or was reused by another process (different start time), or
the host rebooted (different boot id). A lock from another host cannot be
checked from here and is only replaced with ``force``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.run.store import fsync_dir as _fsync_dir

LOCK_NAME = "run.lock"
#: an unreadable lock younger than this may be one being written (fallback path); older is debris
UNREADABLE_GRACE_S = 10.0


class RunLocked(RunError):
    """The run directory belongs to another live (or unverifiable) controller."""

    def __init__(self, message: str, owner: dict | None = None):
        super().__init__(message)
        self.owner = owner or {}


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22); None if unknown."""
    st = _proc_stat(pid)
    return st[1] if st else None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid``, or None when /proc has no such process (or no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()  # comm may hold spaces and parentheses
    try:
        return rest[0], int(rest[19])  # fields 3 (state) and 22 (starttime)
    except (IndexError, ValueError):
        return None


def _describe(owner: dict) -> str:
    cmd = owner.get("command")
    return (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('started_at', '?')}"
            + (f" (command: {cmd})" if cmd else ""))


class RunLock:
    """Exclusive ownership of a run directory by this process.

    ``with RunLock(run_dir) as lock:`` or ``acquire()`` / ``release()``.
    ``acquire()`` returns None when the directory was free, or a dict
    ``{"replaced": <old owner>, "reason": "..."}`` when a stale (or forced)
    lock was taken over, so the run can record an event; it raises
    :class:`RunLocked` when the owner is alive or cannot be checked.
    """

    def __init__(self, run_dir: str | Path, *, command: str | None = None, force: bool = False,
                 force_hint: str = "force it"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command if command is not None else shlex.join(sys.argv)
        self.force = force
        self.force_hint = force_hint
        self.record: dict | None = None  # ours, once acquired
        self.replaced: dict | None = None

    # -- the lock file ----------------------------------------------------
    def _new_record(self) -> dict:
        pid = os.getpid()
        return {"pid": pid, "host": socket.gethostname(), "boot_id": boot_id(), "proc_start": proc_start(pid),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": self.command,
                "token": secrets.token_hex(8)}

    def _create(self, rec: dict, replace: bool = False) -> bool:
        """Publish ``rec`` as the lock if none exists; False if one does.

        The record is written and fsynced under a temporary name, then hard-linked
        into place: link() is atomic and fails if the name exists, so readers never
        see a half-written lock. Filesystems without hard links get O_CREAT|O_EXCL.
        ``replace`` (a takeover, under the directory guard) renames over the old
        lock instead, so the name never goes missing for a fresh run to grab.
        """
        data = (json.dumps(rec, indent=1) + "\n").encode()
        tmp = self.run_dir / f".{LOCK_NAME}.{os.getpid()}.{rec['token']}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if replace:
                os.replace(tmp, self.path)
            else:
                os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            return self._create_excl(data)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        _fsync_dir(self.run_dir)
        return True

    def _create_excl(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.run_dir)
        return True

    def read(self) -> dict | None:
        """The current lock's record; ``{}`` if the file is unreadable JSON; None if there is no lock."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            rec = json.loads(text)
        except ValueError:
            return {}
        return rec if isinstance(rec, dict) else {}

    # -- judging an existing lock -----------------------------------------
    def stale_reason(self, owner: dict) -> str | None:
        """Why ``owner`` no longer holds the run (None: it is alive, or on another host and unverifiable)."""
        if not owner:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "the lock file vanished"
            return f"unreadable lock file, {age:.0f} s old" if age > UNREADABLE_GRACE_S else None
        if owner.get("host") != socket.gethostname():
            return None
        bid = boot_id()
        if owner.get("boot_id") and bid and owner["boot_id"] != bid:
            return f"host {owner['host']} rebooted since (boot id {owner['boot_id'][:8]} -> {bid[:8]})"
        try:
            pid = int(owner.get("pid"))
        except (TypeError, ValueError):
            return "lock file names no pid"
        if pid <= 0:
            return f"lock file names pid {pid}"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"pid {pid} is not running"
        except PermissionError:
            pass  # alive, another user's
        st = _proc_stat(pid)
        if st is not None:
            state, start = st
            if state in ("Z", "X"):
                return f"pid {pid} has exited (zombie)"
            if owner.get("proc_start") is not None and start != owner["proc_start"]:
                return f"pid {pid} now belongs to another process (start time {owner['proc_start']} -> {start})"
        return None

    def _refusal(self, owner: dict) -> RunLocked:
        if not owner:
            return RunLocked(f"run directory {self.run_dir} is being locked by another process "
                             f"({self.path} is not complete yet); wait for it or stop it", owner)
        if owner.get("host") != socket.gethostname():
            return RunLocked(f"run directory {self.run_dir} is in use by {_describe(owner)}; that host cannot be "
                             f"checked from {socket.gethostname()}: if the run is no longer alive there, "
                             f"{self.force_hint}", owner)
        return RunLocked(f"run directory {self.run_dir} is in use by {_describe(owner)}; wait for it or stop it",
                         owner)

    # -- public -----------------------------------------------------------
    def acquire(self) -> dict | None:
        if self.record is not None:
            return self.replaced
        if not self.run_dir.is_dir():
            raise RunError(f"run directory {self.run_dir} does not exist")
        rec = self._new_record()
        if self._create(rec):
            self.record = rec
            return None
        # Someone holds it. Judge and replace under a flock on the directory, so two
        # processes that both find a stale lock cannot both take it over.
        with _DirGuard(self.run_dir):
            owner = self.read()
            if owner is None:  # released meanwhile
                if self._create(rec):
                    self.record = rec
                    return None
                owner = self.read() or {}
            reason = self.stale_reason(owner)
            if reason is None:
                if not (self.force and owner and owner.get("host") != socket.gethostname()):
                    raise self._refusal(owner)
                reason = f"forced: the owner is on another host ({owner.get('host')})"
            if not self._create(rec, replace=True):  # only where rename-over fails (odd filesystems)
                raise self._refusal(self.read() or {})
        self.record = rec
        self.replaced = {"replaced": owner, "reason": reason}
        return self.replaced

    def release(self) -> bool:
        """Remove the lock if it is still ours (the same token); True if removed."""
        if self.record is None:
            return False
        try:
            with _DirGuard(self.run_dir):
                cur = self.read()
                if cur and cur.get("token") == self.record["token"]:
                    os.unlink(self.path)
                    _fsync_dir(self.run_dir)
                    return True
                return False
        finally:
            self.record = None

    @property
    def held(self) -> bool:
        return self.record is not None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class _DirGuard:
    """flock on the run directory itself: serialises takeover and release on this host."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def __enter__(self) -> "_DirGuard":
        self.fd = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
