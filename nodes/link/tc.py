"""Kernel shaping on a real node's interface (the ``tc`` link kind).

The controller builds ``tc`` command lines here (pure functions) and runs
them on the node through a ``run(cmd)`` callable -- normally
``Transport.run`` -- as root or with ``sudo -n``. :class:`TcShaper` applies an
HTB class (or a TBF qdisc) at a rate taken from a capacity schedule, keeps
updating that rate from the trace while the condition runs, adds a netem leaf
for delay/loss when the node's kernel has netem (and says so in its facts
when it does not), and always removes its root qdisc at teardown.

Egress shaping only: the client's interface shapes the uplink, the edge's
interface the downlink. With ``match_dst`` (HTB only) just the traffic to
that address is shaped and everything else (SSH to the controller) passes.
Kernel shapers need a burst of at least one MTU, so below ~50 kbit/s they
are coarse (a 1600-byte burst is 0.26 s at 50 kbit/s); use the user-space
``trace`` link for LPWAN rates.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from hilbed.nodes.link.schedule import CapacitySchedule

MIN_RATE_BPS = 1000  # tc rejects 0; an "off" link keeps 1 kbit/s
MIN_BURST_BYTES = 1600
_DEV_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


class TcError(RuntimeError):
    pass


def _dev(dev: str) -> str:
    if not _DEV_RE.match(dev or ""):
        raise TcError(f"invalid interface name {dev!r}")
    return dev


def rate_arg(bps: float) -> str:
    return f"{max(MIN_RATE_BPS, int(round(bps)))}bit"


def burst_bytes(bps: float, burst_s: float = 0.01) -> int:
    """Token bucket depth: ``burst_s`` of traffic at ``bps``, but at least one MTU-sized frame."""
    return max(MIN_BURST_BYTES, int(bps / 8 * burst_s))


def netem_args(delay_ms: float = 0.0, loss: float = 0.0, limit_packets: int | None = None) -> str:
    parts = ["netem"]
    if limit_packets:
        parts.append(f"limit {int(limit_packets)}")
    parts.append(f"delay {delay_ms:g}ms")
    if loss > 0:
        parts.append(f"loss {loss * 100:g}%")
    return " ".join(parts)


def htb_commands(dev: str, bps: float, match_dst: str | None = None, queue_bytes: int | None = None) -> list[str]:
    """Root HTB with shaped class 1:10 (and an unshaped 1:20 when only ``match_dst`` is shaped)."""
    dev = _dev(dev)
    b = burst_bytes(bps)
    cmds = [f"tc qdisc replace dev {dev} root handle 1: htb default {20 if match_dst else 10}",
            f"tc class replace dev {dev} parent 1: classid 1:10 htb rate {rate_arg(bps)} ceil {rate_arg(bps)} "
            f"burst {b}b cburst {b}b"]
    if match_dst:
        net = ipaddress.ip_network(match_dst, strict=False)
        cmds.append(f"tc class replace dev {dev} parent 1: classid 1:20 htb rate 10gbit ceil 10gbit")
        cmds.append(f"tc filter replace dev {dev} parent 1: protocol ip prio 1 u32 match ip dst {net} flowid 1:10")
    if queue_bytes:
        cmds.append(f"tc qdisc replace dev {dev} parent 1:10 handle 10: bfifo limit {int(queue_bytes)}")
    return cmds


def htb_rate_command(dev: str, bps: float) -> str:
    b = burst_bytes(bps)
    return (f"tc class change dev {_dev(dev)} parent 1: classid 1:10 htb rate {rate_arg(bps)} ceil {rate_arg(bps)} "
            f"burst {b}b cburst {b}b")


def htb_netem_command(dev: str, delay_ms: float, loss: float, limit_packets: int | None = None) -> str:
    return f"tc qdisc replace dev {_dev(dev)} parent 1:10 handle 10: {netem_args(delay_ms, loss, limit_packets)}"


def tbf_args(bps: float, queue_bytes: int | None = None, latency_ms: float = 200.0) -> str:
    limit = f"limit {int(queue_bytes)}" if queue_bytes else f"latency {latency_ms:g}ms"
    return f"tbf rate {rate_arg(bps)} burst {burst_bytes(bps)}b {limit}"


def tbf_commands(dev: str, bps: float, queue_bytes: int | None = None, under_netem: bool = False) -> list[str]:
    dev = _dev(dev)
    if under_netem:
        return [f"tc qdisc replace dev {dev} parent 1:1 handle 10: {tbf_args(bps, queue_bytes)}"]
    return [f"tc qdisc replace dev {dev} root handle 1: {tbf_args(bps, queue_bytes)}"]


def tbf_rate_command(dev: str, bps: float, queue_bytes: int | None = None, under_netem: bool = False) -> str:
    where = "parent 1:1 handle 10:" if under_netem else "root handle 1:"
    return f"tc qdisc change dev {_dev(dev)} {where} {tbf_args(bps, queue_bytes)}"


def netem_root_command(dev: str, delay_ms: float, loss: float) -> str:
    return f"tc qdisc replace dev {_dev(dev)} root handle 1: {netem_args(delay_ms, loss)}"


def remove_command(dev: str) -> str:
    return f"tc qdisc del dev {_dev(dev)} root"


def show_command(dev: str) -> str:
    return f"tc qdisc show dev {_dev(dev)}"


_ALREADY_CLEAN = ("No such file or directory", "Cannot delete qdisc with handle of zero",
                  "Cannot find specified qdisc")


@dataclass
class _Res:
    returncode: int
    stdout: str
    stderr: str


def _result(r: Any) -> _Res:
    if isinstance(r, tuple):
        return _Res(*r)
    return _Res(int(getattr(r, "returncode", 1)), str(getattr(r, "stdout", "") or ""),
                str(getattr(r, "stderr", "") or ""))


@dataclass
class TcShaper:
    """Applies, updates and removes shaping on ``dev`` through ``run(cmd)``."""

    run: Callable[[str], Any]
    dev: str
    discipline: str = "htb"  # or "tbf"
    sudo: bool = False
    match_dst: str | None = None
    delay_ms: float = 0.0
    loss: float = 0.0
    queue_bytes: int | None = None
    node: str = ""
    facts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.discipline not in ("htb", "tbf"):
            raise TcError(f"unknown discipline {self.discipline!r} (allowed: htb, tbf)")
        _dev(self.dev)
        self.applied = False
        self.under_netem = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_bps: float | None = None
        self.facts = {"node": self.node, "dev": self.dev, "discipline": self.discipline, "netem": None,
                      "netem_error": None, "delay_applied_ms": 0.0, "loss_applied": 0.0, "updates": 0,
                      "update_errors": 0, "removed": None, "commands": []}

    # ------------------------------------------------------------ run ---
    def _cmd(self, cmd: str, check: bool = True) -> _Res:
        full = ("sudo -n " + cmd) if self.sudo else cmd
        with self._lock:
            self.facts["commands"].append(full)
            if len(self.facts["commands"]) > 50:
                del self.facts["commands"][10:11]  # keep the setup and the latest updates
        r = _result(self.run(full))
        if check and r.returncode != 0:
            raise TcError(f"{self.node or 'node'}: `{full}` failed ({r.returncode}): "
                          f"{(r.stderr or r.stdout).strip()[:300]}")
        return r

    def apply(self, bps: float) -> dict:
        """Install the shaping at ``bps``; removes it again if any step fails."""
        want_netem = self.delay_ms > 0 or self.loss > 0
        try:
            if self.discipline == "htb":
                for c in htb_commands(self.dev, bps, self.match_dst, self.queue_bytes):
                    self._cmd(c)
                self.applied = True
                if want_netem:
                    r = self._cmd(htb_netem_command(self.dev, self.delay_ms, self.loss), check=False)
                    self._netem_result(r)
            else:
                if want_netem:
                    r = self._cmd(netem_root_command(self.dev, self.delay_ms, self.loss), check=False)
                    self._netem_result(r)
                    self.under_netem = r.returncode == 0
                    self.applied = self.applied or self.under_netem
                for c in tbf_commands(self.dev, bps, self.queue_bytes, self.under_netem):
                    self._cmd(c)
                self.applied = True
        except Exception:
            self.remove()
            raise
        self._last_bps = bps
        self.facts["rate_bps_initial"] = bps
        return self.facts

    def _netem_result(self, r: _Res) -> None:
        if r.returncode == 0:
            self.facts.update(netem=True, delay_applied_ms=self.delay_ms, loss_applied=self.loss)
        else:
            msg = (r.stderr or r.stdout).strip().splitlines()
            self.facts.update(netem=False, netem_error=(
                f"netem unavailable on {self.node or 'the node'} ({msg[-1] if msg else 'error'}): "
                f"delay {self.delay_ms:g} ms and loss {self.loss:g} are NOT applied by the kernel "
                f"(load sch_netem: `modprobe sch_netem`)"))

    def set_rate(self, bps: float) -> bool:
        if not self.applied:
            raise TcError("set_rate before apply")
        if self._last_bps is not None and abs(bps - self._last_bps) < max(1.0, 0.005 * self._last_bps):
            return False
        cmd = htb_rate_command(self.dev, bps) if self.discipline == "htb" else \
            tbf_rate_command(self.dev, bps, self.queue_bytes, self.under_netem)
        self._cmd(cmd)
        self._last_bps = bps
        self.facts["updates"] += 1
        return True

    def follow(self, schedule: CapacitySchedule, interval_s: float = 0.1) -> None:
        """Keep the rate at the schedule's mean over each coming ``interval_s`` (a thread)."""
        if self._thread is not None:
            return
        epoch = time.monotonic()

        def loop() -> None:
            k = 1
            while not self._stop.wait(max(0.0, epoch + k * interval_s - time.monotonic())):
                t = time.monotonic() - epoch
                try:
                    self.set_rate(schedule.mean_bps(t, t + interval_s))
                except Exception as exc:  # keep following; the facts say how often it failed
                    self.facts["update_errors"] += 1
                    self.facts["last_update_error"] = str(exc)[:300]
                k = max(k + 1, int((time.monotonic() - epoch) / interval_s) + 1)

        self._thread = threading.Thread(target=loop, name=f"tc-{self.dev}", daemon=True)
        self._thread.start()

    def remove(self) -> dict:
        """Delete the root qdisc (idempotent) and check that it is gone."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        r = self._cmd(remove_command(self.dev), check=False)
        if r.returncode != 0 and not any(s in r.stderr for s in _ALREADY_CLEAN):
            self.facts["removed"] = False
            self.facts["remove_error"] = r.stderr.strip()[:300]
            raise TcError(f"{self.node or 'node'}: could not remove shaping on {self.dev}: {r.stderr.strip()[:300]}")
        show = self._cmd(show_command(self.dev), check=False)
        left = [ln for ln in show.stdout.splitlines() if re.search(r"qdisc (htb|tbf|netem) 1: root", ln)]
        self.facts["removed"] = not left
        self.applied = False
        if left:
            raise TcError(f"{self.node or 'node'}: shaping still present on {self.dev}: {left[0]}")
        return self.facts

    def __enter__(self) -> "TcShaper":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
