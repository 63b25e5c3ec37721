"""Client-side links over a real TCP connection to the edge.

``DirectLink`` sends as fast as the socket takes bytes. ``ShapedLink`` is the
user-space trace link: every DATA packet is served by an uplink
:class:`~hilbed.nodes.link.schedule.CapacitySchedule`, leaves when its last byte is
served, reaches the edge one fixed delay later, and is lost with an IID
probability; the sender stops at the deadline and packets not yet served are
discarded, as a radio aborts its queue. Replies come back through a downlink
schedule. Both report per-chunk delivery times on the client's wall clock.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from .. import wire
from .schedule import ByteServer, CapacitySchedule

#: on-the-wire size of a compact reply (top-5 class ids and probabilities)
RESULT_WIRE_BYTES = 5 * 3 + 1


def wall_ns() -> int:
    return time.time_ns()


class _RealtimeSection:
    """Run a sleep-then-send under SCHED_FIFO when the process may (root / CAP_SYS_NICE).

    On a busy machine the OS scheduler, not the sleep, decides when a woken
    sender runs; real-time priority only while waiting for a release keeps
    releases sub-millisecond without running the encoder at that priority.
    """

    def __init__(self) -> None:
        self.ok = hasattr(os, "SCHED_FIFO")

    @contextlib.contextmanager
    def __call__(self):
        if not self.ok:
            yield
            return
        try:
            policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except OSError:
            self.ok = False
            yield
            return
        try:
            yield
        finally:
            try:
                os.sched_setscheduler(0, policy, param)
            except OSError:
                pass


@dataclass
class SendReport:
    msg_id: int
    t_tx_start_ns: int
    t_tx_end_ns: int | None = None
    chunk_times_ns: list[int] = field(default_factory=list)  # delivery time of each delivered chunk
    chunks_delivered: int = 0
    bytes_delivered: int = 0
    wire_bytes_sent: int = 0
    packets_sent: int = 0
    packets_lost: int = 0
    aborted: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Link:
    """A client's link to the edge (the seam between client and transport)."""

    kind = "abstract"

    def __init__(self, host: str, port: int, edge_minus_client_ns: int = 0):
        self.edge_minus_client_ns = int(edge_minus_client_ns)
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send_lock = threading.Lock()
        self._results: dict[int, Future] = {}
        self._results_lock = threading.Lock()
        self._closed = threading.Event()
        self.epoch_mono = time.monotonic()
        self._rx = threading.Thread(target=self._rx_loop, name=f"{self.kind}-rx", daemon=True)
        self._rx.start()

    # -- helpers ----------------------------------------------------------
    def _write(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _future(self, msg_id: int) -> Future:
        with self._results_lock:
            return self._results.setdefault(msg_id, Future())

    def _rx_loop(self) -> None:
        reader = wire.FrameReader(self.sock)
        try:
            while not self._closed.is_set():
                f = reader.read(0.5)
                if f is None or f.type != wire.RESULT:
                    continue
                t_arr = time.monotonic()
                res = f.json()
                self._deliver_result(res, t_arr)
        except (EOFError, OSError, wire.WireError) as exc:
            with self._results_lock:
                for fut in self._results.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError(f"edge connection lost: {exc}"))

    def _deliver_result(self, res: dict, t_arr_mono: float) -> None:
        res["t_result_ns"] = wall_ns()
        self._future(int(res["msg_id"])).set_result(res)

    # -- API --------------------------------------------------------------
    def send_message(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> SendReport:
        raise NotImplementedError

    def result(self, msg_id: int, timeout: float) -> dict:
        """The edge's reply for ``msg_id`` (raises TimeoutError / ConnectionError)."""
        fut = self._future(msg_id)
        try:
            return fut.result(timeout)
        finally:
            with self._results_lock:
                self._results.pop(msg_id, None)

    def _begin(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> None:
        self._future(msg_id)
        self._write(wire.begin_frame({**meta, "msg_id": msg_id, "chunk_sizes": [len(c) for c in chunks],
                                      "deadline_edge_ns": deadline_ns + self.edge_minus_client_ns}))

    def stats(self) -> dict:
        return {"kind": self.kind}

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class DirectLink(Link):
    """Plain TCP: no shaping; the deadline still applies."""

    kind = "direct"

    def __init__(self, host: str, port: int, edge_minus_client_ns: int = 0, packet_bytes: int = 16384, **_: object):
        super().__init__(host, port, edge_minus_client_ns)
        self.packet_bytes = packet_bytes

    def send_message(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> SendReport:
        rep = SendReport(msg_id, wall_ns())
        self._begin(msg_id, meta, chunks, deadline_ns)
        for ci, chunk in enumerate(chunks):
            for off in range(0, max(len(chunk), 1), self.packet_bytes):
                if wall_ns() > deadline_ns:
                    rep.aborted = True
                    break
                piece = chunk[off:off + self.packet_bytes]
                frame = wire.data_frame(msg_id, ci, off, piece)
                self._write(frame)
                rep.packets_sent += 1
                rep.wire_bytes_sent += len(frame)
            if rep.aborted:
                break
            rep.chunk_times_ns.append(wall_ns())
            rep.chunks_delivered += 1
            rep.bytes_delivered += len(chunk)
        rep.t_tx_end_ns = wall_ns()
        self._write(wire.end_frame(msg_id, rep.aborted))
        return rep


class ShapedLink(Link):
    """User-space shaped link driven by capacity schedules (constant, CSV, Mahimahi trace).

    The sender is closed-loop (one message at a time), so the uplink is a
    :class:`~hilbed.nodes.link.schedule.ByteServer` on the schedule: exact byte
    accounting, opportunity leftovers carried to the next packet, idle
    capacity lost. ``medium_file`` (embedded testbed) scales capacity by
    ``1 - load`` of the jammer's published medium; ``log_path`` writes a
    Mahimahi link log of the uplink (``log_path + ".down"`` for the downlink).
    """

    kind = "trace"

    def __init__(self, host: str, port: int, uplink: CapacitySchedule, downlink: CapacitySchedule | None,
                 edge_minus_client_ns: int = 0, delay_ms: float = 0.0, loss: float = 0.0,
                 packet_bytes: int = 1024, seed: int = 0, log_path: str | None = None,
                 medium_file: str | None = None, queue_bytes: int | None = None, **_: object):
        self.epoch_mono = time.monotonic()
        if medium_file:
            from .medium import MediumScaledSchedule, MediumWatcher
            self.medium = MediumWatcher(medium_file)
            uplink = MediumScaledSchedule(uplink, self.medium.factor, self._now)
            if downlink is not None:
                downlink = MediumScaledSchedule(downlink, self.medium.factor, self._now)
        else:
            self.medium = None
        self.uplink, self.downlink = uplink, downlink
        self.up = ByteServer(uplink)
        self.down = ByteServer(downlink) if downlink is not None else None
        self.delay_s = delay_ms / 1000.0
        self.loss = loss
        self.packet_bytes = packet_bytes
        self.queue_bytes = queue_bytes
        self.rng = random.Random(seed)
        self._rt = _RealtimeSection()
        self.counters = {"packets": 0, "lost": 0, "discarded_at_deadline": 0, "wire_bytes": 0,
                         "late_release_ms_max": 0.0}
        self.log = self.down_log = None
        if log_path:
            from .linklog import LinkLogWriter
            self.log = LinkLogWriter(log_path, "uplink", uplink, trace_name=uplink.describe())
            if downlink is not None:
                self.down_log = LinkLogWriter(str(log_path) + ".down", "downlink", downlink,
                                              trace_name=downlink.describe())
        epoch = self.epoch_mono
        super().__init__(host, port, edge_minus_client_ns)
        self.epoch_mono = epoch  # keep the schedules' epoch (Link.__init__ resets it)

    @property
    def up_free_at(self) -> float:
        """Link time at which the uplink capacity used so far ends (compatibility)."""
        return self.uplink.time_of_bytes(self.up.pos) if self.up.pos > 0 else 0.0

    def _now(self) -> float:
        return time.monotonic() - self.epoch_mono

    def _wall_of(self, t_link: float) -> int:
        return wall_ns() - int((self._now() - t_link) * 1e9)

    def _sleep_until(self, t_link: float) -> None:
        while True:
            dt = t_link - self._now()
            if dt <= 0:
                late = -dt * 1000.0
                if late > self.counters["late_release_ms_max"]:
                    self.counters["late_release_ms_max"] = late
                return
            time.sleep(dt - 0.0002 if dt > 0.0005 else 0)

    def send_message(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> SendReport:
        rep = SendReport(msg_id, wall_ns())
        # map the wall-clock deadline into link time once
        deadline_link = self._now() + (deadline_ns - wall_ns()) / 1e9
        self._begin(msg_id, meta, chunks, deadline_ns)
        t_queue = self._now()
        last_release = None
        for ci, chunk in enumerate(chunks):
            chunk_ok = True
            for off in range(0, max(len(chunk), 1), self.packet_bytes):
                piece = chunk[off:off + self.packet_bytes]
                frame = wire.data_frame(msg_id, ci, off, piece)
                start, _first, served = self.up.plan(len(frame), t_queue)
                if served > deadline_link:
                    rep.aborted = True
                    self.counters["discarded_at_deadline"] += 1
                    break
                self.up.commit(start, len(frame))
                release = served + self.delay_s
                rep.packets_sent += 1
                rep.wire_bytes_sent += len(frame)
                self.counters["packets"] += 1
                self.counters["wire_bytes"] += len(frame)
                if self.log is not None:
                    self.log.arrival(t_queue, len(frame))
                    self.log.departure(served, len(frame), t_queue)
                if self.loss and self.rng.random() < self.loss:
                    rep.packets_lost += 1
                    self.counters["lost"] += 1
                    chunk_ok = False
                    continue
                with self._rt():
                    self._sleep_until(release)
                    self._write(frame)
                last_release = release
            if rep.aborted:
                break
            if chunk_ok:
                rep.chunk_times_ns.append(wall_ns())
                rep.chunks_delivered += 1
                rep.bytes_delivered += len(chunk)
        # the sender is done at the deadline (aborted: the partly sent packet
        # held the link until then) or when the last byte left
        if rep.aborted:
            self.up.idle_until(deadline_link)
            self._sleep_until(deadline_link)
            rep.t_tx_end_ns = wall_ns()
        elif last_release is not None:
            rep.t_tx_end_ns = self._wall_of(last_release - self.delay_s)
        else:
            rep.t_tx_end_ns = wall_ns()
        self._write(wire.end_frame(msg_id, rep.aborted))
        return rep

    def _deliver_result(self, res: dict, t_arr_mono: float) -> None:
        if self.down is None:
            return super()._deliver_result(res, t_arr_mono)
        t_arr = t_arr_mono - self.epoch_mono
        n = RESULT_WIRE_BYTES + wire.DATA_OVERHEAD
        start, _first, served = self.down.plan(n, t_arr)
        self.down.commit(start, n)
        if self.down_log is not None:
            self.down_log.arrival(t_arr, n)
            self.down_log.departure(served, n, t_arr)
        with self._rt():
            self._sleep_until(served + self.delay_s)
        super()._deliver_result(res, t_arr_mono)

    def stats(self) -> dict:
        out = {"kind": self.kind, **self.counters, "uplink": self.uplink.describe(),
               "downlink": self.downlink.describe() if self.downlink else None}
        if self.medium is not None:
            out["medium_load_last"] = self.medium.load()
        return out

    def close(self) -> None:
        for lg in (self.log, self.down_log):
            if lg is not None:
                lg.close(self._now())
        super().close()
