"""The shared 2.4 GHz medium: who is on air when, and how busy the jammer keeps it.

Why a separate object: several emulated radios on one channel must see each
other -- a frame on air makes the others' CCA report busy, and two frames that
overlap in time corrupt each other (collision).  The Wi-Fi jammer of the seed
lab is modelled here too, as an *interference load*: the fraction of air time
(0..1) during which a channel is occupied by non-802.15.4 energy.

Interference model: per channel an alternating renewal process of busy bursts
and idle gaps, both exponentially distributed, with mean burst length
``burst_ms`` (default 4 ms, roughly an aggregated Wi-Fi TXOP) and mean gap
``burst_ms * (1 - load) / load`` so that the long-run busy fraction equals
``load``.  Consequences for the radios:

* CCA reports busy if a burst overlaps the 128 us CCA window;
* a frame (or ACK) that overlaps a burst is lost;
* the energy-detect scan sees about -45 dBm while a burst is on air, other
  802.15.4 frames at about -55 dBm, otherwise the noise floor (about -100 dBm).

The load can be changed at runtime from any thread (``set_load``) or by a JSON
file that the jammer process rewrites (``MediumFileWatcher``), e.g.
``{"load": 0.4, "t": 1700000000.0}``; optional keys: ``"channels": [15, 16]``
(apply ``load`` only to these), ``"loads": {"15": 0.7}`` (per-channel values),
``"burst_ms": 4.0``.  All medium methods other than ``set_load`` run in the
emulator loop thread.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import phy

log = logging.getLogger(__name__)

NOISE_FLOOR_DBM = -100
INTERFERENCE_RSSI_DBM = -45
FRAME_RSSI_DBM = -55
HISTORY_S = 0.25  # model events are never evaluated further back than a few ms
CHANNELS = range(11, 27)


@dataclass
class Transmission:
    """One PPDU on air (data frame or ACK)."""

    sender: Any
    channel: int
    start: float
    end: float
    psdu: bytes
    is_ack: bool = False
    corrupted: bool = False
    #: names of the radios whose PPDUs overlapped this one (for the frame log)
    collided_with: list[str] = field(default_factory=list)


class FrameLog:
    """Per-frame event log of the emulated medium, one JSON object per line.

    Why: with several transmitters on one medium, CSMA/CA contention (CCA
    busy, backoff, collisions, retries) is the thing under test; the log says
    who (radio and MAC source address) met which outcome, in model time
    (``t``, monotonic seconds) and wall time (``t_wall``). Events: ``cca_busy``
    (a backoff follows unless the budget is spent), ``cca_fail`` (channel
    access failure), ``tx`` (written when a PPDU left the air, ``t`` its
    start and ``end`` its end: ``result`` ok | collision | jammed,
    ``collided_with`` the other radios), ``retry`` / ``no_ack`` (the ACK did
    not come). ``src``/``dst`` are the MAC addresses (int for short ones, hex
    for extended). Written from the emulator loop thread only.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._f = open(path, "w", encoding="utf-8", buffering=1)  # line-buffered: readable while running
        self._wall_minus_mono = _wall_minus_mono()
        self.lines = 0

    def write(self, event: str, t: float, radio: str, psdu: bytes | None, **fields: Any) -> None:
        src = dst = seq = None
        if psdu:
            try:
                h = phy.parse_mac_header(psdu)
                src, dst, seq = h.src_addr, h.dst_addr, h.seq
            except phy.MacParseError:
                pass
        doc = {"t": round(t, 6), "t_wall": round(t + self._wall_minus_mono, 6), "event": event, "radio": radio,
               "src": src.hex() if isinstance(src, bytes) else src, "dst": dst.hex() if isinstance(dst, bytes) else dst,
               "seq": seq, "len": len(psdu) if psdu else None, **fields}
        try:
            self._f.write(json.dumps(doc, separators=(",", ":")) + "\n")
            self.lines += 1
        except (OSError, ValueError):  # a full disk or a closed log must not stop the radios
            pass

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass


def _wall_minus_mono() -> float:
    import time as _time
    return _time.time() - _time.monotonic()


class _InterferenceTrack:
    """Busy-burst timeline of one channel, generated lazily as time advances."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.bursts: deque[tuple[float, float]] = deque()
        self.generated_until: float | None = None
        self.load = 0.0
        self.burst_s = 0.004

    def reconfigure(self, now: float, load: float, burst_s: float) -> None:
        load = min(max(load, 0.0), 1.0)
        if load == self.load and burst_s == self.burst_s:
            return
        self.load = load
        self.burst_s = burst_s
        # Forget the pre-generated future; keep history for late queries.
        while self.bursts and self.bursts[-1][0] >= now:
            self.bursts.pop()
        if self.bursts and self.bursts[-1][1] > now:
            start, _ = self.bursts.pop()
            self.bursts.append((start, now))
        self.generated_until = now

    def _extend(self, t: float) -> None:
        if self.generated_until is None:
            self.generated_until = t
        if self.load <= 0.0:
            self.generated_until = max(self.generated_until, t)
            return
        if self.load >= 1.0:
            if self.generated_until < t:
                self.bursts.append((self.generated_until, t + 1.0))
                self.generated_until = t + 1.0
            return
        mean_gap = self.burst_s * (1.0 - self.load) / self.load
        cursor = self.generated_until
        while cursor <= t:
            gap = self.rng.expovariate(1.0 / mean_gap)
            burst = self.rng.expovariate(1.0 / self.burst_s)
            self.bursts.append((cursor + gap, cursor + gap + burst))
            cursor += gap + burst
        self.generated_until = cursor

    def prune(self, before: float) -> None:
        while self.bursts and self.bursts[0][1] < before:
            self.bursts.popleft()

    def overlaps(self, t0: float, t1: float) -> bool:
        self._extend(t1)
        for start, end in self.bursts:
            if start >= t1:
                break
            if end > t0:
                return True
        return False


@dataclass
class MediumConfig:
    default_load: float = 0.0
    channel_loads: dict[int, float] = field(default_factory=dict)
    burst_ms: float = 4.0
    source_time: float | None = None  # "t" from the medium file

    def load_for(self, channel: int) -> float:
        return self.channel_loads.get(channel, self.default_load)


class Medium:
    def __init__(self, *, seed: int | None = None, clock: Callable[[], float] | None = None,
                 burst_ms: float = 4.0) -> None:
        import time as _time

        self._clock = clock or _time.monotonic
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._config = MediumConfig(burst_ms=burst_ms)
        self._config_version = 0
        self._applied_version = -1
        self._tracks: dict[int, _InterferenceTrack] = {}
        self._on_air: dict[int, deque[Transmission]] = {}
        self.stats = {"frames": 0, "collisions": 0, "jammed": 0, "cca_busy": 0, "cca_idle": 0}
        #: per-frame event log (``--frame-log``); None: no log
        self.frame_log: FrameLog | None = None

    def log_frame(self, event: str, t: float, radio: str, psdu: bytes | None, **fields: Any) -> None:
        """One line in the frame log, if there is one (loop thread)."""
        if self.frame_log is not None:
            self.frame_log.write(event, t, radio, psdu, **fields)

    # --- configuration (any thread) ----------------------------------------------
    def set_load(self, load: float, channels: list[int] | None = None, *, burst_ms: float | None = None) -> None:
        """Set the interference load (0..1); ``channels=None`` means every channel."""
        if not 0.0 <= load <= 1.0 or math.isnan(load):
            raise ValueError(f"load {load} outside 0..1")
        with self._lock:
            cfg = MediumConfig(burst_ms=burst_ms or self._config.burst_ms)
            if channels is None:
                cfg.default_load = load
            else:
                cfg.default_load = 0.0
                cfg.channel_loads = {int(c): load for c in channels}
            self._config = cfg
            self._config_version += 1

    def apply_config(self, cfg: MediumConfig) -> None:
        with self._lock:
            self._config = cfg
            self._config_version += 1

    def config(self) -> MediumConfig:
        with self._lock:
            return self._config

    def load_for(self, channel: int) -> float:
        return self.config().load_for(channel)

    # --- loop-thread helpers --------------------------------------------------------
    def _track(self, channel: int) -> _InterferenceTrack:
        with self._lock:
            version = self._config_version
            cfg = self._config
        if version != self._applied_version:
            now = self._clock()
            for ch, track in self._tracks.items():
                track.reconfigure(now, cfg.load_for(ch), cfg.burst_ms / 1000.0)
            self._applied_version = version
        existing = self._tracks.get(channel)
        if existing is not None:
            return existing
        track = _InterferenceTrack(random.Random(self._rng.random()))
        track.reconfigure(self._clock(), cfg.load_for(channel), cfg.burst_ms / 1000.0)
        self._tracks[channel] = track
        return track

    def jammed(self, channel: int, t0: float, t1: float) -> bool:
        """True if interference overlaps [t0, t1)."""
        return self._track(channel).overlaps(t0, t1)

    def frames_overlapping(self, channel: int, t0: float, t1: float, exclude: Any = None) -> list[Transmission]:
        return [tx for tx in self._on_air.get(channel, ())
                if tx.start < t1 and tx.end > t0 and tx.sender is not exclude]

    def cca_busy(self, channel: int, t0: float, t1: float, node: Any) -> bool:
        busy = bool(self.frames_overlapping(channel, t0, t1, exclude=node)) or self.jammed(channel, t0, t1)
        self.stats["cca_busy" if busy else "cca_idle"] += 1
        return busy

    def begin_tx(self, tx: Transmission) -> None:
        """Register a PPDU; overlapping PPDUs on the channel corrupt each other."""
        queue = self._on_air.setdefault(tx.channel, deque())
        for other in queue:
            if other.start < tx.end and other.end > tx.start and other.sender is not tx.sender:
                if not other.corrupted:
                    self.stats["collisions"] += 1
                other.corrupted = True
                tx.corrupted = True
                other.collided_with.append(getattr(tx.sender, "name", "?"))
                tx.collided_with.append(getattr(other.sender, "name", "?"))
        queue.append(tx)
        self.stats["frames"] += 1
        self._prune(tx.start)

    def frame_survives(self, tx: Transmission) -> bool:
        """Evaluate at the end of ``tx``: no collision and no interference burst."""
        if tx.corrupted:
            return False
        if self.jammed(tx.channel, tx.start, tx.end):
            self.stats["jammed"] += 1
            tx.corrupted = True
            return False
        return True

    def energy_dbm(self, channel: int, t0: float, t1: float, rng: random.Random | None = None) -> int:
        """Peak energy an ED scan over [t0, t1) would report."""
        rng = rng or self._rng
        level = NOISE_FLOOR_DBM + rng.randint(0, 4)
        if self.frames_overlapping(channel, t0, t1):
            level = max(level, FRAME_RSSI_DBM + rng.randint(-2, 2))
        if self.jammed(channel, t0, t1):
            level = max(level, INTERFERENCE_RSSI_DBM + rng.randint(-3, 3))
        return level

    def _prune(self, now: float) -> None:
        horizon = now - HISTORY_S
        for queue in self._on_air.values():
            while queue and queue[0].end < horizon:
                queue.popleft()
        for track in self._tracks.values():
            track.prune(horizon)


def parse_medium_file(data: dict[str, Any], previous: MediumConfig) -> MediumConfig:
    """Turn the jammer's JSON document into a MediumConfig (validating ranges)."""
    cfg = MediumConfig(burst_ms=float(data.get("burst_ms", previous.burst_ms)))
    if cfg.burst_ms <= 0:
        raise ValueError("burst_ms must be positive")
    load = float(data.get("load", 0.0))
    if not 0.0 <= load <= 1.0:
        raise ValueError(f"load {load} outside 0..1")
    channels = data.get("channels")
    if channels is None:
        cfg.default_load = load
    else:
        cfg.channel_loads = {int(c): load for c in channels}
    for ch, value in (data.get("loads") or {}).items():
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"load {value} for channel {ch} outside 0..1")
        cfg.channel_loads[int(ch)] = value
    t = data.get("t")
    cfg.source_time = float(t) if t is not None else None
    return cfg


class MediumFileWatcher:
    """Polls the jammer's JSON file (default every 100 ms) and applies changes.

    The jammer replaces the file by atomic rename, so a changed inode or mtime
    means a complete new document.  Unreadable or invalid documents are logged
    and ignored; a missing file means "no interference".
    """

    def __init__(self, medium: Medium, path: str, interval_s: float = 0.1) -> None:
        self.medium = medium
        self.path = path
        self.interval_s = interval_s
        self._stamp: tuple[int, int, int] | None = None
        self.reads = 0
        self.errors = 0

    def poll(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None:
                self._stamp = None
                self.medium.apply_config(MediumConfig(burst_ms=self.medium.config().burst_ms))
                log.info("medium file %s removed: interference off", self.path)
            return
        except OSError as exc:
            self.errors += 1
            log.warning("cannot stat medium file %s: %s", self.path, exc)
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, dict):
                raise ValueError("medium file must hold a JSON object")
            cfg = parse_medium_file(data, self.medium.config())
        except (OSError, ValueError, TypeError) as exc:
            self.errors += 1
            log.warning("ignoring medium file %s: %s", self.path, exc)
            self._stamp = stamp
            return
        self._stamp = stamp
        self.reads += 1
        self.medium.apply_config(cfg)
        log.info("medium: load=%s per-channel=%s burst=%.1fms", cfg.default_load, cfg.channel_loads, cfg.burst_ms)
