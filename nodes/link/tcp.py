"""Client-side links over a real TCP connection to the edge.

``DirectLink`` sends as fast as the socket takes bytes. ``ShapedLink`` is the
user-space trace link: every frame of a message -- the binary BEGIN header,
each DATA packet and END -- goes through the uplink
:class:`~hilbed.nodes.link.stages.Pipeline` (the same engine as
``TraceShaper``) as its own packet: it leaves when its last byte is served by
the :class:`~hilbed.nodes.link.schedule.CapacitySchedule`, reaches the edge
one fixed delay later, and is lost with an IID probability; the sender stops
at the deadline and packets not yet served are discarded, as a radio aborts
its queue. A BEGIN that cannot leave before the deadline means nothing of
the image is sent. Replies come back through a downlink pipeline. Both
report per-chunk delivery times on the client's wall clock.
"""

from __future__ import annotations

import math
import random
import time

from hilbed.nodes import wire
from hilbed.nodes.link.base import Link, SendReport, wall_ns
from hilbed.nodes.link.schedule import CapacitySchedule
from hilbed.nodes.link.stages import REFUSED, SENT, Accounting, Pipeline, RealtimeSection, wait_until

__all__ = ["DirectLink", "Link", "RESULT_WIRE_BYTES", "SendReport", "ShapedLink", "wall_ns"]

#: on-the-wire size of a compact reply (top-5 class ids and probabilities)
RESULT_WIRE_BYTES = 5 * 3 + 1


class DirectLink(Link):
    """Plain TCP: no shaping; the deadline still applies."""

    kind = "direct"

    def __init__(self, host: str, port: int, edge_minus_client_ns: int = 0, packet_bytes: int = 16384, **_: object):
        super().__init__(host, port, edge_minus_client_ns)
        self.packet_bytes = packet_bytes

    def send_message(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> SendReport:
        rep = SendReport(msg_id, wall_ns())
        rep.wire_bytes_sent += self._begin(msg_id, meta, chunks, deadline_ns)
        rep.packets_sent += 1
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
        end = wire.end_frame(msg_id, rep.aborted)
        self._write(end)
        rep.packets_sent += 1
        rep.wire_bytes_sent += len(end)
        return rep


#: releases whose lateness is kept for percentiles (a long run keeps its first ones)
MAX_LATE_SAMPLES = 200_000


def _late_percentiles(late_ms: list[float]) -> dict:
    if not late_ms:
        return {"late_release_ms_p50": None, "late_release_ms_p99": None, "releases_timed": 0}
    xs = sorted(late_ms)
    at = lambda q: round(xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))], 4)  # noqa: E731
    return {"late_release_ms_p50": at(0.5), "late_release_ms_p99": at(0.99), "releases_timed": len(xs)}


class ShapedLink(Link):
    """User-space shaped link driven by capacity schedules (constant, CSV, Mahimahi trace).

    The sender is closed-loop (one message at a time): the whole message is
    queued at once, each packet is offered to the uplink pipeline only once
    the previous one left (so a change of the medium applies from then on),
    and the sending thread itself releases it, under ``SCHED_FIFO`` while it
    waits when the process may. ``medium_file`` (embedded testbed) scales
    capacity by ``1 - load`` of the jammer's published medium; ``log_path``
    writes a Mahimahi link log of the uplink (``log_path + ".down"`` for the
    downlink). The queue is the message itself, so ``queue_bytes`` does not apply.
    ``accounting`` (``payload`` | ``frame``) is what the rate server charges per
    packet: the frame's bytes, or those plus Mahimahi's tun + IPv4 + TCP
    overhead (:class:`~hilbed.nodes.link.stages.Accounting`).
    """

    kind = "trace"

    def __init__(self, host: str, port: int, uplink: CapacitySchedule, downlink: CapacitySchedule | None,
                 edge_minus_client_ns: int = 0, delay_ms: float = 0.0, loss: float = 0.0,
                 packet_bytes: int = 1024, seed: int = 0, log_path: str | None = None,
                 medium_file: str | None = None, queue_bytes: int | None = None,
                 accounting: Accounting | str | None = None, **_: object):
        self.epoch_mono = time.monotonic()
        if medium_file:
            from hilbed.nodes.link.medium import MediumScaledSchedule, MediumWatcher
            self.medium = MediumWatcher(medium_file)
            uplink = MediumScaledSchedule(uplink, self.medium.factor, self._now)
            if downlink is not None:
                downlink = MediumScaledSchedule(downlink, self.medium.factor, self._now)
        else:
            self.medium = None
        self.uplink, self.downlink = uplink, downlink
        self.delay_s = delay_ms / 1000.0
        self.loss = loss
        self.packet_bytes = packet_bytes
        self.queue_bytes = queue_bytes
        up_log = down_log = None
        if log_path:
            from hilbed.nodes.link.linklog import LinkLogWriter
            init_ms = wall_ns() // 1_000_000 - int(self._now() * 1000)
            up_log = LinkLogWriter(log_path, "uplink", uplink, trace_name=uplink.describe(), init_unix_ms=init_ms,
                                   clock=self._now)
            if downlink is not None:
                down_log = LinkLogWriter(str(log_path) + ".down", "downlink", downlink,
                                         trace_name=downlink.describe(), init_unix_ms=init_ms, clock=self._now)
        acc = Accounting.parse(accounting, "tcp")
        self.up = Pipeline(uplink, None, self.delay_s, loss, random.Random(seed), up_log, acc)
        self.down = Pipeline(downlink, None, self.delay_s, 0.0, None, down_log, acc) if downlink is not None else None
        self._rt = RealtimeSection()
        self._late_ms: list[float] = []  # every release's lateness (bounded), for the p99 the report checks
        self.counters = {"packets": 0, "lost": 0, "discarded_at_deadline": 0, "wire_bytes": 0, "charged_bytes": 0,
                         "header_bytes": 0, "headers_refused": 0, "headers_lost": 0, "ends_cut": 0,
                         "late_release_ms_max": 0.0}
        epoch = self.epoch_mono
        super().__init__(host, port, edge_minus_client_ns)
        self.epoch_mono = epoch  # keep the schedules' epoch (Link.__init__ resets it)

    @property
    def up_free_at(self) -> float:
        """Link time at which the uplink capacity used so far ends."""
        pos = self.up.server.pos
        return self.uplink.time_of_bytes(pos) if pos > 0 else 0.0

    def _now(self) -> float:
        return time.monotonic() - self.epoch_mono

    def _wall_of(self, t_link: float) -> int:
        return wall_ns() - int((self._now() - t_link) * 1e9)

    def _sleep_until(self, t_link: float) -> None:
        late = wait_until(self._now, t_link) * 1000.0
        if late > self.counters["late_release_ms_max"]:
            self.counters["late_release_ms_max"] = late
        if len(self._late_ms) < MAX_LATE_SAMPLES:
            self._late_ms.append(late)

    @property
    def accounting(self) -> str:  # type: ignore[override]
        return self.up.accounting.mode

    def set_accounting(self, accounting: str | None) -> None:
        """Switch byte accounting before the first message (the link spec's ``accounting``)."""
        acc = Accounting.parse(accounting, "tcp")
        for p in (self.up, self.down):
            if p is not None:
                p.accounting = acc

    def _ship(self, rep: SendReport, frame: bytes, t_queue: float, deadline_link: float):
        """Offer one frame to the uplink as one packet; unless refused or lost, wait for its release and write it."""
        pkt = self.up.offer(len(frame), t_queue, deadline=deadline_link)
        if pkt.fate == REFUSED:
            self.counters["discarded_at_deadline"] += 1
            return pkt
        rep.packets_sent += 1
        rep.wire_bytes_sent += len(frame)
        self.counters["packets"] += 1
        self.counters["wire_bytes"] += len(frame)
        self.counters["charged_bytes"] += pkt.charged
        if pkt.lost:
            rep.packets_lost += 1
            self.counters["lost"] += 1
            return pkt
        with self._rt():
            self._sleep_until(pkt.t_release)
            self._write(frame)
        return pkt

    def _hold_until_deadline(self, rep: SendReport, deadline_link: float) -> None:
        """The packet the deadline cut held the link until then; the sender is done at the deadline."""
        self.up.idle_until(deadline_link)
        self._sleep_until(deadline_link)
        rep.t_tx_end_ns = wall_ns()

    def send_message(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> SendReport:
        rep = SendReport(msg_id, wall_ns())
        # map the wall-clock deadline into link time once
        deadline_link = self._now() + (deadline_ns - wall_ns()) / 1e9
        begin = self._begin_frame(msg_id, meta, chunks, deadline_ns)  # a new codec's CODEC frame goes first
        t_queue = self._now()
        log = self.up.log
        if log is not None:
            log.hold(t_queue)  # arrivals at t_queue are offered until the message ends
        last = None
        try:
            pkt = self._ship(rep, begin, t_queue, deadline_link)
            if pkt.fate == REFUSED:  # the header cannot make it: nothing of the image is sent
                rep.aborted = True
                rep.header = "refused"
                self.counters["headers_refused"] += 1
            else:
                self.counters["header_bytes"] += len(begin)
                last = pkt
                if pkt.lost:
                    rep.header = "lost"
                    self.counters["headers_lost"] += 1
                for ci, chunk in enumerate(chunks):
                    chunk_ok = True
                    for off in range(0, max(len(chunk), 1), self.packet_bytes):
                        frame = wire.data_frame(msg_id, ci, off, chunk[off:off + self.packet_bytes])
                        pkt = self._ship(rep, frame, t_queue, deadline_link)
                        if pkt.fate == REFUSED:
                            rep.aborted = True
                            break
                        last = pkt
                        chunk_ok = chunk_ok and not pkt.lost
                    if rep.aborted:
                        break
                    if chunk_ok:
                        rep.chunk_times_ns.append(wall_ns())
                        rep.chunks_delivered += 1
                        rep.bytes_delivered += len(chunk)
                if not rep.aborted:  # END is part of the message: it costs airtime and may be cut
                    pkt = self._ship(rep, wire.end_frame(msg_id, False), t_queue, deadline_link)
                    if pkt.fate == REFUSED:
                        self.counters["ends_cut"] += 1
                        self._hold_until_deadline(rep, deadline_link)
                    else:
                        last = pkt
        finally:
            if log is not None:
                log.hold(None)
        if rep.aborted:
            # no END follows an abort: it could not leave before the deadline either, and the
            # edge closes the message at its deadline
            self._hold_until_deadline(rep, deadline_link)
        elif rep.t_tx_end_ns is None:
            # the sender is done when the last byte of its last packet left (lost or not)
            rep.t_tx_end_ns = self._wall_of(last.t_done) if last is not None else wall_ns()
        if rep.header != "sent":  # the edge never heard of it: tell it at the deadline, so it still answers
            self._void_at(msg_id, wire.VOID_REFUSED if rep.header == "refused" else wire.VOID_LOST, len(chunks),
                          deadline_ns)
        return rep

    def _deliver_result(self, res: dict, t_arr_mono: float) -> None:
        if self.down is None:
            return super()._deliver_result(res, t_arr_mono)
        pkt = self.down.offer(RESULT_WIRE_BYTES + wire.DATA_OVERHEAD, t_arr_mono - self.epoch_mono)
        if pkt.fate != SENT or not math.isfinite(pkt.t_release):
            return  # a downlink trace run once has ended: the reply never gets through
        with self._rt():
            self._sleep_until(pkt.t_release)
        super()._deliver_result(res, t_arr_mono)

    def stats(self) -> dict:
        out = {"kind": self.kind, **self.counters, "uplink": self.uplink.describe(),
               "downlink": self.downlink.describe() if self.downlink else None, **self._wire_stats(),
               "accounting_detail": self.up.accounting.describe(), **_late_percentiles(self._late_ms),
               "realtime_priority": self._rt.ok}
        if self.medium is not None:
            out["medium_load_last"] = self.medium.load()
        return out

    def close(self) -> None:
        t_end = self._now()
        for p in (self.up, self.down):
            if p is not None:
                p.close_log(t_end)
        super().close()
