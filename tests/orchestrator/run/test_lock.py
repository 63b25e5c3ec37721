"""One live controller per run directory; locks left by dead controllers are taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.run.lock import LOCK_NAME, RunLock, RunLocked, boot_id, proc_start

REPO = Path(__file__).resolve().parents[3]
HOLDER = """
import sys, json
from hilbed.orchestrator.run.lock import RunLock, RunLocked
lock = RunLock(sys.argv[1], command="hilbed run scenarios/jamming.yaml")
try:
    replaced = lock.acquire()
except RunLocked as exc:
    print(json.dumps({"refused": str(exc)}), flush=True)
    sys.exit(3)
print(json.dumps({"held": lock.record, "replaced": replaced}), flush=True)
sys.stdin.read()  # hold until the parent closes stdin
lock.release()
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _write_lock(run_dir: Path, **fields) -> None:
    rec = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(),
           "proc_start": proc_start(os.getpid()), "started_at": "2024-01-01T00:00:00Z",
           "command": "hilbed run x.yaml", "token": "feedfacefeedface", **fields}
    (run_dir / LOCK_NAME).write_text(json.dumps(rec))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_process_is_refused_with_the_owner_named(tmp_path):
    child = _holder(tmp_path)
    try:
        held = json.loads(child.stdout.readline())["held"]
        assert held["pid"] == child.pid
        with pytest.raises(RunLocked) as ei:
            RunLock(tmp_path).acquire()
        msg = str(ei.value)
        assert isinstance(ei.value, RunError)
        assert f"pid {child.pid} on {socket.gethostname()} since {held['started_at']}" in msg
        assert "hilbed run scenarios/jamming.yaml" in msg and "wait for it or stop it" in msg
        assert ei.value.owner["pid"] == child.pid
        with pytest.raises(RunLocked):
            RunLock(tmp_path, force=True).acquire()  # force never overrides a live owner on this host
    finally:
        child.stdin.close()
        assert child.wait(30) == 0
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path) as lock:
        assert lock.replaced is None and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_killed_owner_is_stale_and_replaced(tmp_path):
    child = _holder(tmp_path)
    json.loads(child.stdout.readline())
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert (tmp_path / LOCK_NAME).exists()  # a killed controller leaves its lock behind
    lock = RunLock(tmp_path)
    replaced = lock.acquire()
    assert replaced["replaced"]["pid"] == child.pid and f"pid {child.pid} is not running" in replaced["reason"]
    assert lock.replaced == replaced
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lock.record["token"]
    assert lock.release() and not (tmp_path / LOCK_NAME).exists()


def test_dead_pid_lock_is_stale(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid, proc_start=None)
    with RunLock(tmp_path) as lock:
        assert lock.replaced["replaced"]["pid"] == pid and "not running" in lock.replaced["reason"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_reused_pid_is_stale(tmp_path):
    _write_lock(tmp_path, proc_start=proc_start(os.getpid()) - 1)  # our pid, but an older process's start
    with RunLock(tmp_path) as lock:
        assert "now belongs to another process" in lock.replaced["reason"]


@pytest.mark.skipif(boot_id() is None, reason="needs a boot id")
def test_lock_from_before_a_reboot_is_stale(tmp_path):
    _write_lock(tmp_path, boot_id="00000000-0000-0000-0000-000000000000")
    with RunLock(tmp_path) as lock:
        assert "rebooted" in lock.replaced["reason"]


def test_other_host_is_refused_unless_forced(tmp_path):
    _write_lock(tmp_path, host="rig-7.lab.invalid", pid=4242)
    with pytest.raises(RunLocked) as ei:
        RunLock(tmp_path, force_hint="rerun with --force-unlock").acquire()
    msg = str(ei.value)
    assert "pid 4242 on rig-7.lab.invalid" in msg and "cannot be checked" in msg and "--force-unlock" in msg
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "rig-7.lab.invalid"  # left alone
    lock = RunLock(tmp_path, force=True)
    replaced = lock.acquire()
    assert replaced["replaced"]["host"] == "rig-7.lab.invalid" and replaced["reason"].startswith("forced")
    lock.release()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    _write_lock(tmp_path, token="0123456789abcdef")  # e.g. taken over by a force from another host
    assert lock.release() is False and (tmp_path / LOCK_NAME).exists()


def test_same_process_second_lock_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()


def test_unreadable_lock_waits_then_is_debris(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{")
    with pytest.raises(RunLocked, match="not complete yet"):
        RunLock(tmp_path).acquire()
    old = time.time() - 3600
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with RunLock(tmp_path) as lock:
        assert "unreadable lock file" in lock.replaced["reason"]


def test_concurrent_takeover_of_a_stale_lock_has_one_winner(tmp_path):
    _write_lock(tmp_path, pid=_dead_pid(), proc_start=None)
    kids = [_holder(tmp_path) for _ in range(4)]
    try:
        results = [json.loads(k.stdout.readline()) for k in kids]
    finally:
        for k in kids:
            k.stdin.close()
        codes = [k.wait(30) for k in kids]
    winners = [r for r in results if "held" in r]
    assert len(winners) == 1 and "not running" in winners[0]["replaced"]["reason"]
    assert sorted(codes) == [0, 3, 3, 3]
    assert not (tmp_path / LOCK_NAME).exists()


def test_missing_run_directory(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        RunLock(tmp_path / "nope").acquire()
