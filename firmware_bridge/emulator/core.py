"""Running the emulator: in-process (``Emulator``) or as a subprocess (``EmulatorProcess``).

Why two ways: tests and benchmarks that want the real deployment shape use
``EmulatorProcess``, which starts ``python -m hilbed.firmware_bridge.emulator`` and
reads the pty paths it prints -- exactly what a lab script does.  Tests that
need to reach inside (change the jammer load, inject garbage bytes, read
firmware counters) use ``Emulator``, which runs the same event loop in a
background thread of the calling process.
"""

from __future__ import annotations

import logging
import os
import random
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from .loop import EventLoop
from .medium import FrameLog, Medium, MediumFileWatcher
from .radio_model import RadioModel
from .spinel_rcp import DEFAULT_BAUD as SPINEL_DEFAULT_BAUD
from .spinel_rcp import EmulatedSpinelRcp
from .wuart_fw import DEFAULT_BAUD as WUART_DEFAULT_BAUD
from .wuart_fw import DEFAULT_CHANNEL, DEFAULT_MAX_MSDU, EmulatedWuart

log = logging.getLogger(__name__)

Protocol = Literal["spinel", "wuart"]


def default_baud(protocol: str) -> int:
    return SPINEL_DEFAULT_BAUD if protocol == "spinel" else WUART_DEFAULT_BAUD


class Emulator:
    """N emulated radios sharing one Medium, driven by one event loop."""

    def __init__(self, protocol: Protocol = "spinel", radios: int = 2, *, baud: int | None = None,
                 medium_file: str | os.PathLike[str] | None = None, seed: int | None = None,
                 burst_ms: float = 4.0, channel: int = DEFAULT_CHANNEL,
                 wuart_max_msdu: int = DEFAULT_MAX_MSDU,
                 frame_log: str | os.PathLike[str] | None = None) -> None:
        if protocol not in ("spinel", "wuart"):
            raise ValueError(f"unknown protocol {protocol!r}")
        if radios < 1:
            raise ValueError("need at least one radio")
        self.protocol = protocol
        self.baud = baud or default_baud(protocol)
        self.loop = EventLoop()
        self.medium = Medium(seed=seed, clock=self.loop.time, burst_ms=burst_ms)
        if frame_log is not None:
            self.medium.frame_log = FrameLog(frame_log)
        rng = random.Random(seed)
        self._radios: list[RadioModel] = []
        self.nodes: list[Any] = []
        for i in range(radios):
            node_rng = random.Random(rng.random())
            if protocol == "spinel":
                node: Any = EmulatedSpinelRcp(self.loop, self.medium, self._radios, index=i, baud=self.baud,
                                              rng=node_rng)
            else:
                node = EmulatedWuart(self.loop, self.medium, self._radios, index=i, count=radios,
                                     baud=self.baud, channel=channel, max_msdu=wuart_max_msdu, rng=node_rng)
            self.nodes.append(node)
        self.watcher: MediumFileWatcher | None = None
        if medium_file is not None:
            self.watcher = MediumFileWatcher(self.medium, os.fspath(medium_file))
            self._poll_medium()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def ports(self) -> list[str]:
        return [n.path for n in self.nodes]

    def _poll_medium(self) -> None:
        assert self.watcher is not None
        self.watcher.poll()
        self.loop.call_later(self.watcher.interval_s, self._poll_medium)

    # --- running ------------------------------------------------------------------
    def run_forever(self) -> None:
        """Run the loop in the calling thread until ``stop()``."""
        self.loop.run()

    def start(self) -> Emulator:
        """Run the loop in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.loop.run, name="hilbed-emulator", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self.loop.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        if self._closed:
            return
        self.stop()
        for node in self.nodes:
            node.close()
        if self.medium.frame_log is not None:
            self.medium.frame_log.close()
        self.loop.close()
        self._closed = True

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- test hooks (thread-safe) ----------------------------------------------------
    def set_load(self, load: float, channels: list[int] | None = None, *, burst_ms: float | None = None) -> None:
        self.medium.set_load(load, channels, burst_ms=burst_ms)

    def inject_to_host(self, index: int, data: bytes) -> None:
        """Make radio ``index`` emit raw bytes to its host (line noise, a crashing firmware...)."""
        done = threading.Event()

        def _do() -> None:
            self.nodes[index].port.inject(data)
            done.set()

        self.call(_do)
        done.wait(5)

    def call(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def counters(self, index: int) -> dict[str, int]:
        node = self.nodes[index]
        merged = dict(node.radio.counters)
        merged.update(node.counters)
        if hasattr(node, "decoder"):
            d = node.decoder
            merged.update(hdlc_frames_ok=d.frames_ok, hdlc_bad_fcs=d.bad_fcs, hdlc_garbage_bytes=d.garbage_bytes)
        return merged


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


class EmulatorProcess:
    """``with EmulatorProcess("spinel", 2) as ports:`` runs the emulator as a subprocess.

    The subprocess is told to exit by closing its stdin (it treats EOF on a
    piped stdin as a shutdown request); SIGTERM/SIGKILL follow if it lingers.
    """

    def __init__(self, protocol: Protocol = "spinel", radios: int = 2, *, baud: int | None = None,
                 medium_file: str | os.PathLike[str] | None = None, seed: int | None = None,
                 extra_args: list[str] | None = None, start_timeout: float = 10.0,
                 log_level: str = "WARNING", frame_log: str | os.PathLike[str] | None = None) -> None:
        self.args = [sys.executable, "-m", "hilbed.firmware_bridge.emulator", "--protocol", protocol,
                     "--radios", str(radios), "--log-level", log_level]
        if baud is not None:
            self.args += ["--baud", str(baud)]
        if medium_file is not None:
            self.args += ["--medium-file", os.fspath(medium_file)]
        if seed is not None:
            self.args += ["--seed", str(seed)]
        if frame_log is not None:
            self.args += ["--frame-log", os.fspath(frame_log)]
        self.args += extra_args or []
        self.radios = radios
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: list[str] = []

    def start(self) -> list[str]:
        env = dict(os.environ)
        root = _repo_root()
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=root)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while len(self.ports) < self.radios:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"emulator did not report {self.radios} ports (got {self.ports})")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                continue
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    self.ports.append(line.decode().strip())
        return self.ports

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        proc = self.proc
        try:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.proc = None
        return proc.returncode

    def __enter__(self) -> list[str]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
