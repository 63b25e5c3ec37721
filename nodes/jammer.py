"""Jammer agent: ``python -m hilbed.nodes.jammer`` (a Raspberry Pi 3B making 2.4 GHz Wi-Fi traffic).

A jamming level is real ``iperf3`` UDP traffic: total bitrate, datagram
length, parallel streams and an optional on/off duty pattern. The agent runs
iperf3 with ``--json`` in short segments (1 s, or one on-period), each its
own client process, so it measures the load it actually achieved (bytes the
receiver got over the wall time, start-up gaps included), emits one
``jammer_load`` event per second into the run, and publishes the load to the
emulated medium (:mod:`hilbed.nodes.link.medium`) -- ``load`` = measured Mbit/s over
a nominal 20 Mbit/s 802.11g channel. On the embedded testbed the iperf3
server runs on loopback; in a lab, ``target`` names the host that runs
``iperf3 -s`` across the Wi-Fi.

The traffic must never outlive the controller (a forgotten jammer spoils a
lab's Wi-Fi), so it stops:

- when stdin closes (controller gone) or on SIGTERM/SIGINT/SIGHUP: teardown
  kills every iperf3 process group and writes load 0 to the medium;
- when no request or ``heartbeat`` arrived for ``watchdog_s`` (default 5 s);
- if the agent itself is SIGKILLed: iperf3 runs in its own process group with
  ``PR_SET_PDEATHSIG = SIGKILL``, set by the long-lived thread that spawns
  every iperf3 process;
- and, if the agent were frozen, each client exits at the end of its
  segment by itself (at most one second), since no segment outlives the
  agent's loop.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass

from hilbed.nodes.agent import Agent, AgentError, run_agent
from hilbed.nodes.events import AgentEvent
from hilbed.nodes.link.medium import MEDIUM_ENV, NOMINAL_CHANNEL_MBPS, write_medium

log = logging.getLogger("hilbed.jammer")

#: built-in levels (a scenario's ``jamming_levels:`` may override or add)
DEFAULT_LEVELS: dict[str, dict] = {
    "none": {"bitrate_mbps": 0.0, "packet_bytes": 1400, "streams": 1, "on_ms": None, "off_ms": None},
    "light": {"bitrate_mbps": 4.0, "packet_bytes": 1400, "streams": 1, "on_ms": None, "off_ms": None},
    "heavy": {"bitrate_mbps": 14.0, "packet_bytes": 1400, "streams": 2, "on_ms": None, "off_ms": None},
}
DEFAULT_WATCHDOG_S = 5.0
SEGMENT_S = 1  # iperf3 -t takes whole seconds
#: a segment that starts at most this long after the previous one ended (same level) is accounted from that end
JOIN_S = 1.0

_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _PRCTL = _LIBC.prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _child_setup(parent_pid: int) -> None:
    """preexec_fn: die with the parent (SIGKILL); bail out if it already died."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


@dataclass
class Level:
    name: str
    bitrate_mbps: float
    packet_bytes: int = 1400
    streams: int = 1
    on_ms: float | None = None
    off_ms: float | None = None

    @classmethod
    def resolve(cls, name: str, params: dict | None) -> "Level":
        base = dict(DEFAULT_LEVELS.get(name, {}))
        if params:
            base.update({k: v for k, v in params.items() if k in ("bitrate_mbps", "packet_bytes", "streams",
                                                                   "on_ms", "off_ms")})
        if "bitrate_mbps" not in base:
            raise AgentError(f"unknown jamming level {name!r} without parameters "
                             f"(built-in: {', '.join(DEFAULT_LEVELS)})")
        lv = cls(name, float(base["bitrate_mbps"]), int(base.get("packet_bytes") or 1400),
                 int(base.get("streams") or 1), base.get("on_ms"), base.get("off_ms"))
        if lv.bitrate_mbps < 0 or lv.streams < 1 or not 16 <= lv.packet_bytes <= 65000:
            raise AgentError(f"level {name!r}: bitrate_mbps >= 0, streams >= 1, 16 <= packet_bytes <= 65000")
        if lv.off_ms and not lv.on_ms:
            raise AgentError(f"level {name!r}: off_ms needs on_ms")
        if (lv.on_ms is not None and lv.on_ms < 0) or (lv.off_ms is not None and lv.off_ms < 0):
            raise AgentError(f"level {name!r}: on_ms and off_ms must be >= 0")
        return lv

    @property
    def active(self) -> bool:
        return self.bitrate_mbps > 0 and (self.on_ms is None or self.on_ms > 0)

    @property
    def duty(self) -> float:
        if self.on_ms and self.off_ms:
            return self.on_ms / (self.on_ms + self.off_ms)
        return 1.0

    def iperf_args(self) -> list[str]:
        per_stream = self.bitrate_mbps / self.streams
        args = ["-u", "-b", f"{per_stream * 1e6:.0f}", "-l", str(self.packet_bytes), "-P", str(self.streams)]
        if self.on_ms and self.off_ms:
            nbytes = max(self.packet_bytes, int(self.bitrate_mbps * 1e6 / 8 * self.on_ms / 1000))
            args += ["-n", str(nbytes)]
        else:
            args += ["-t", str(SEGMENT_S)]
        return args

    def as_dict(self) -> dict:
        return {"bitrate_mbps": self.bitrate_mbps, "packet_bytes": self.packet_bytes, "streams": self.streams,
                "on_ms": self.on_ms, "off_ms": self.off_ms}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iperf3_version(binary: str) -> str | None:
    try:
        p = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5)
        return (p.stdout or p.stderr).splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def parse_iperf3_json(text: str) -> dict:
    """Achieved traffic of one iperf3 client run: bytes the receiver got, seconds, packets, loss."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise AgentError(f"iperf3 printed no JSON: {text.strip()[:200]!r}") from None
    if doc.get("error"):
        raise AgentError(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    recv = end.get("sum_received") or end.get("sum") or {}
    sent = end.get("sum_sent") or end.get("sum") or {}
    return {"bytes": int(recv.get("bytes", 0) or 0), "seconds": float(recv.get("seconds", 0.0) or 0.0),
            "sent_bytes": int(sent.get("bytes", 0) or 0), "packets": int(recv.get("packets", 0) or 0),
            "lost_packets": int(recv.get("lost_packets", 0) or 0),
            "intervals": [(i["sum"]["start"], i["sum"]["end"], i["sum"]["bytes"]) for i in doc.get("intervals", [])
                          if "sum" in i]}


class JamEngine:
    """Owns every iperf3 process; one long-lived thread spawns and reaps them all."""

    def __init__(self, agent: "JammerAgent"):
        self.agent = agent
        self.binary = os.environ.get("HILBED_IPERF3") or shutil.which("iperf3")
        self.cv = threading.Condition()
        self.level: Level = Level.resolve("none", None)
        self.plan: list[tuple[float, Level]] = []  # (at_s, level) when following a schedule
        self.plan_t0 = 0.0
        self.plan_loop = False
        self.generation = 0
        self.target: str | None = None
        self.port: int | None = None
        self.channel_mbps = NOMINAL_CHANNEL_MBPS
        self.medium_file: str | None = os.environ.get(MEDIUM_ENV) or None
        self.server: subprocess.Popen | None = None
        self.server_tail: deque[str] = deque(maxlen=20)  # the server's last output lines (error messages)
        self.client: subprocess.Popen | None = None
        self.stop_reason: str | None = None
        self.shutdown = False
        self.last: dict | None = None  # last 1 s measurement
        self._meter = {"bytes": 0, "span": 0.0, "t0": None, "packets": 0, "lost": 0, "segments": 0}
        self.totals = {"segments": 0, "bytes": 0, "errors": 0}
        self.last_error: str | None = None
        self._seg_end: tuple[int, float, float] | None = None  # (generation, monotonic, wall) end of the last segment
        self.thread = threading.Thread(target=self._main, name="jam-engine", daemon=True)
        self.thread.start()

    # -------------------------------------------------------- processes ---
    def _spawn(self, args: list[str]) -> subprocess.Popen:
        assert self.binary is not None
        parent = os.getpid()
        return subprocess.Popen([self.binary, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: _child_setup(parent))

    def _drain(self, proc: subprocess.Popen) -> None:
        """Read the server's output for as long as it lives, keeping the last lines.

        The server prints a report per test; left in an unread pipe it fills
        the pipe (64 KiB, ~50 two-stream tests) and iperf3 then blocks writing
        it, so the next segment hangs and the jammer falls silent for seconds.
        """
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.server_tail.append(line)
                if "error" in line.lower():
                    log.warning("iperf3 server: %s", line[:200])

    @staticmethod
    def _kill(p: subprocess.Popen | None, grace_s: float = 0.3) -> None:
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            except PermissionError:
                p.send_signal(sig)
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def pids(self) -> list[int]:
        return [p.pid for p in (self.server, self.client) if p is not None and p.poll() is None]

    def _ensure_server(self) -> None:
        if self.target is not None:
            return
        if self.server is not None and self.server.poll() is None:
            return
        if self.port is None:
            self.port = _free_port()
        self.server_tail.clear()
        self.server = self._spawn(["-s", "-B", "127.0.0.1", "-p", str(self.port)])
        drain = threading.Thread(target=self._drain, args=(self.server,), name="iperf3-server-output", daemon=True)
        drain.start()
        time.sleep(0.15)  # let it bind
        if self.server.poll() is not None:
            drain.join(1.0)
            self.server = None
            out = " | ".join(self.server_tail)
            raise AgentError(f"iperf3 server did not start on port {self.port}: {out[:200]}")

    def _stop_traffic(self) -> None:
        self._kill(self.client)
        self.client = None
        self._kill(self.server)
        self.server = None

    # ------------------------------------------------------------- API ---
    def configure(self, level: Level, plan: list[tuple[float, Level]] | None = None, loop: bool = False) -> int:
        with self.cv:
            if level.active or plan:
                if self.binary is None:
                    raise AgentError("iperf3 not found on this node (install the iperf3 package or set HILBED_IPERF3)")
            self.level = level
            self.plan = plan or []
            self.plan_loop = loop
            self.plan_t0 = time.monotonic()
            self.stop_reason = None
            self.last = None
            self.last_error = None
            self._meter = {"bytes": 0, "span": 0.0, "t0": None, "packets": 0, "lost": 0, "segments": 0}
            self.generation += 1
            self.cv.notify_all()
            gen = self.generation
        if not (level.active or plan):  # level "none": no iperf3 at all, not even an idle server
            self._kill(self.client)
            self._kill(self.server)
        return gen

    def stop(self, reason: str) -> None:
        with self.cv:
            was = self.level.active or bool(self.plan)
            self.level = Level.resolve("none", None)
            self.plan = []
            if was:
                self.stop_reason = reason
            self.generation += 1
            self.cv.notify_all()
        self._kill(self.client)  # do not wait for the engine's next poll
        self._kill(self.server)
        self._publish(0.0, 0.0)

    def close(self) -> None:
        with self.cv:
            self.shutdown = True
            self.level = Level.resolve("none", None)
            self.plan = []
            self.cv.notify_all()
        self._stop_traffic()
        self.thread.join(3)
        self._stop_traffic()
        self._publish(0.0, 0.0)

    def wait_measurement(self, generation: int, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        with self.cv:
            while self.generation == generation and self.last is None and self.last_error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)
            if self.last_error and self.last is None:
                raise AgentError(self.last_error)
            return self.last

    # ------------------------------------------------------------ loop ---
    def _current(self) -> Level:
        if not self.plan:
            return self.level
        el = time.monotonic() - self.plan_t0
        if self.plan_loop:
            period = self.plan[-1][0] + max(1.0, self.plan[-1][0] - (self.plan[-2][0] if len(self.plan) > 1 else 0))
            el = el % period
        cur = self.plan[0][1]
        for at, lv in self.plan:
            if at <= el:
                cur = lv
        return cur

    def _publish(self, load: float, mbps: float, level: str | None = None) -> None:
        if not self.medium_file:
            return
        try:
            write_medium(self.medium_file, load, mbps, level=level or self.level.name)
        except OSError as exc:
            log.warning("cannot write medium file %s: %s", self.medium_file, exc)

    def _main(self) -> None:
        try:
            while True:
                with self.cv:
                    while not self.shutdown and not (self.level.active or self.plan):
                        self.cv.wait(0.5)
                    if self.shutdown:
                        return
                    gen = self.generation
                    lv = self._current()
                if not lv.active:  # a "none" step of a schedule: no iperf3 at all
                    self._stop_traffic()
                    self._publish(0.0, 0.0, lv.name)
                    with self.cv:
                        if self.generation == gen:
                            self.cv.wait(0.2)
                    continue
                try:
                    self._segment(lv, gen)
                except AgentError as exc:
                    self.totals["errors"] += 1
                    with self.cv:
                        self.last_error = str(exc)
                        self.cv.notify_all()
                    log.error("jamming segment failed: %s", exc)
                    self._stop_traffic()
                    with self.cv:  # back off, unless told something new
                        if self.generation == gen:
                            self.cv.wait(1.0)
        except Exception:
            log.exception("jam engine crashed")
        finally:
            self._stop_traffic()
            self._publish(0.0, 0.0)

    def _segment(self, lv: Level, gen: int) -> None:
        t_start, m0 = time.time(), time.monotonic()
        limit = m0 + (lv.on_ms / 1000 if lv.on_ms and lv.off_ms else SEGMENT_S) + 5.0
        prev, self._seg_end = self._seg_end, None
        if prev is not None and prev[0] == gen and m0 - prev[1] <= JOIN_S:
            # the previous segment of this level ended just now: account from its end, so the time this loop
            # spent between the two (reading, publishing, spawning) counts as time without traffic, and the
            # measurement windows tile the level's time instead of leaving slivers no window covers
            m0, t_start = prev[1], prev[2]
        self._ensure_server()
        host = self.target or "127.0.0.1"
        if self.last is not None:
            self._publish(self.last["on_load"], self.last["on_mbps"], lv.name)
        proc = self.client = self._spawn(["-c", host, "-p", str(self.port), "--json", "--connect-timeout", "3000",
                                          *lv.iperf_args()])
        while True:
            try:
                proc.wait(0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            with self.cv:
                changed = self.generation != gen or self.shutdown
            if changed or time.monotonic() > limit:
                self._kill(proc)
                self.client = None
                if not changed:
                    raise AgentError("iperf3 client did not finish its segment in time")
                return
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        self.client = None
        span = time.monotonic() - m0
        with self.cv:
            if self.generation != gen:
                return
        res = parse_iperf3_json(out)
        on_mbps = res["bytes"] * 8 / span / 1e6
        off_s = (lv.off_ms or 0) / 1000 if lv.on_ms and lv.off_ms else 0.0
        if off_s:
            self._publish(0.0, 0.0, lv.name)
            with self.cv:
                self.cv.wait_for(lambda: self.generation != gen or self.shutdown, off_s)
            if self.generation != gen:
                return
            span = time.monotonic() - m0
        self._seg_end = (gen, m0 + span, t_start + span)
        self.totals["segments"] += 1
        self.totals["bytes"] += res["bytes"]
        m = self._meter
        if m["t0"] is None:
            m["t0"] = t_start
        m["bytes"] += res["bytes"]
        m["span"] += span
        m["packets"] += res["packets"]
        m["lost"] += res["lost_packets"]
        m["segments"] += 1
        if m["span"] >= 0.95:
            mbps = m["bytes"] * 8 / m["span"] / 1e6
            load = min(1.0, mbps / self.channel_mbps)
            on_mbps_avg = mbps / lv.duty if lv.duty > 0 else mbps
            meas = {"level": lv.name, "t_start": m["t0"], "t_end": m["t0"] + m["span"], "mbps": mbps, "load": load,
                    "on_mbps": on_mbps_avg, "on_load": min(1.0, on_mbps_avg / self.channel_mbps),
                    "packets": m["packets"], "lost_packets": m["lost"], "segments": m["segments"],
                    "channel_mbps": self.channel_mbps}
            self._meter = {"bytes": 0, "span": 0.0, "t0": None, "packets": 0, "lost": 0, "segments": 0}
            if not off_s:  # publish before anyone waiting on the measurement reads the medium
                self._publish(load, mbps, lv.name)
            self.agent.event(AgentEvent.JAMMER_LOAD, **meas)
            with self.cv:
                self.last = meas
                self.cv.notify_all()
        elif not off_s:
            self._publish(min(1.0, on_mbps / self.channel_mbps), on_mbps, lv.name)


class JammerAgent(Agent):
    name = "jammer"
    inline_ops = frozenset({"clock", "ping", "heartbeat"})

    def __init__(self) -> None:
        super().__init__()
        self.engine = JamEngine(self)
        self.watchdog_s = DEFAULT_WATCHDOG_S
        self.last_contact = time.monotonic()
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self.level_name = "none"
        self._wd = threading.Thread(target=self._watchdog, name="jammer-watchdog", daemon=True)
        self._wd.start()

    # every request counts as proof that the controller is alive; a request in
    # progress (set_level measures for about a second) holds the watchdog off
    # for at most MAX_INFLIGHT_S
    MAX_INFLIGHT_S = 30.0

    def _handle(self, req: dict) -> None:
        self.last_contact = time.monotonic()
        with self._inflight_lock:
            self._inflight += 1
        try:
            super()._handle(req)
        finally:
            with self._inflight_lock:
                self._inflight -= 1
            self.last_contact = time.monotonic()

    def _watchdog(self) -> None:
        while not self._stopping.is_set():
            time.sleep(0.1)
            idle = time.monotonic() - self.last_contact
            if self._inflight and idle < self.MAX_INFLIGHT_S:
                continue
            if idle > self.watchdog_s and (self.engine.level.active or self.engine.plan):
                log.warning("no request or heartbeat for %.1f s: stopping the jammer", idle)
                self.engine.stop("watchdog")
                self.event(AgentEvent.JAMMER_STOPPED, reason="watchdog", idle_s=round(idle, 3))

    def _options(self, watchdog_s: float | None, medium_file: str | None, target: str | None, port: int | None,
                 channel_mbps: float | None) -> None:
        if watchdog_s is not None:
            if not 0.5 <= float(watchdog_s) <= 300:
                raise AgentError("watchdog_s must be between 0.5 and 300 s (it cannot be disabled)")
            self.watchdog_s = float(watchdog_s)
        if medium_file is not None:
            self.engine.medium_file = medium_file or None
        if target is not None or port is not None:
            if target != self.engine.target or port != self.engine.port:
                self.engine._stop_traffic()
            self.engine.target = target or None
            self.engine.port = int(port) if port else None
        if channel_mbps is not None:
            if channel_mbps <= 0:
                raise AgentError("channel_mbps must be > 0")
            self.engine.channel_mbps = float(channel_mbps)

    # ------------------------------------------------------------- ops ---
    def op_heartbeat(self) -> dict:
        """Proof of life both ways: the controller learns whether the jammer still jams (or why not)."""
        e = self.engine
        return {"t_ns": time.time_ns(), "level": self.level_name, "active": e.level.active or bool(e.plan),
                "stop_reason": e.stop_reason}

    def op_set_level(self, level: str, params: dict | None = None, watchdog_s: float | None = None,
                     medium_file: str | None = None, target: str | None = None, port: int | None = None,
                     channel_mbps: float | None = None, measure_timeout_s: float = 15.0) -> dict:
        """Start ``level`` and return what was measured: ``{"level", "load", "mbps", ...}``."""
        lv = Level.resolve(level, params)
        self._options(watchdog_s, medium_file, target, port, channel_mbps)
        self.level_name = lv.name
        gen = self.engine.configure(lv)
        base = {"level": lv.name, "params": lv.as_dict(), "iperf3": iperf3_version(self.engine.binary)
                if self.engine.binary else None, "target": self.engine.target or "127.0.0.1",
                "channel_mbps": self.engine.channel_mbps, "watchdog_s": self.watchdog_s,
                "medium_file": self.engine.medium_file}
        if not lv.active:
            self.engine._publish(0.0, 0.0, lv.name)
            return {**base, "load": 0.0, "mbps": 0.0}
        meas = self.engine.wait_measurement(gen, measure_timeout_s + (lv.on_ms or 0) / 1000 + (lv.off_ms or 0) / 1000)
        if meas is None:
            raise AgentError(f"level {lv.name!r}: no measurement within {measure_timeout_s:g} s")
        return {**base, "load": meas["load"], "mbps": meas["mbps"], "measured": meas}

    def op_set_schedule(self, steps: list[dict], loop: bool = False, watchdog_s: float | None = None,
                        medium_file: str | None = None, target: str | None = None, port: int | None = None,
                        channel_mbps: float | None = None) -> dict:
        """Follow ``[{"at_s", "level", "params"?}, ...]`` (seconds from now); returns at once."""
        if not steps:
            raise AgentError("a schedule needs at least one step")
        plan = []
        for st in steps:
            plan.append((float(st.get("at_s", 0.0)), Level.resolve(st["level"], st.get("params"))))
        plan.sort(key=lambda x: x[0])
        if plan[0][0] > 0:
            plan.insert(0, (0.0, Level.resolve("none", None)))
        self._options(watchdog_s, medium_file, target, port, channel_mbps)
        self.level_name = "schedule"
        self.engine.configure(Level.resolve("none", None), plan, loop)
        return {"level": "schedule", "steps": [{"at_s": a, "level": lv.name, **lv.as_dict()} for a, lv in plan],
                "loop": loop, "watchdog_s": self.watchdog_s}

    def op_stop(self) -> dict:
        self.engine.stop("stop")
        self.level_name = "none"
        return {"level": "none", "load": 0.0, "mbps": 0.0, "totals": dict(self.engine.totals)}

    def op_status(self) -> dict:
        e = self.engine
        return {"level": self.level_name, "active": e.level.active or bool(e.plan), "pids": e.pids(),
                "stop_reason": e.stop_reason, "last": e.last, "last_error": e.last_error,
                "watchdog_s": self.watchdog_s, "since_contact_s": round(time.monotonic() - self.last_contact, 3),
                "medium_file": e.medium_file, "target": e.target or "127.0.0.1", "port": e.port,
                "totals": dict(e.totals), "iperf3": e.binary}

    def op_facts(self) -> dict:
        out = super().op_facts()
        out.update(iperf3=self.engine.binary, iperf3_version=iperf3_version(self.engine.binary)
                   if self.engine.binary else None, pdeathsig=_PRCTL is not None)
        return out

    def serve(self) -> None:
        try:
            super().serve()  # ends the process through teardown on EOF and signals
        finally:  # an unexpected exception: still stop the traffic
            self._teardown_once()

    def teardown(self) -> None:
        self.engine.close()


if __name__ == "__main__":
    run_agent(JammerAgent)
