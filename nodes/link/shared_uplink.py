"""``SharedUplinkProxy``: N clients' TCP streams through ONE shaped uplink, in the edge process.

Why a proxy at the edge: a ``trace`` link shapes each client on its own, so
N clients get N times the capacity. A shared bottleneck (one cell, one Wi-Fi
uplink) serves every client's bytes from one queue in the order they arrive.
The proxy is that bottleneck: clients connect to it instead of the edge's
listener, it reads each client's stream, and offers the frames to one
:class:`~hilbed.nodes.link.stages.Pipeline` (drop-tail queue, rate server on
the schedule, delay, IID loss, Mahimahi link log) -- so service is FIFO
across clients by arrival time and the capacity splits by what each offers.
A released frame is written to that client's own connection to the edge's
real listener, so the edge sees one ordinary session per client.

The byte stream stays a valid wire stream: the proxy reads it frame by frame
(:mod:`hilbed.nodes.wire`) and each BEGIN/DATA/END frame is one link packet
(the clients send DATA frames of ``packet_bytes``, as a ``trace`` link
does). A packet the queue drops or the link loses is a missing frame, never
a cut one (the edge counts a missing DATA as a hole, as on a ``trace``
link). Like a ``trace`` sender, the bottleneck serves nothing of a message
after its deadline: a frame that would leave later is refused without using
capacity (the BEGIN carries the deadline on the edge clock, which is this
process's clock). A message whose BEGIN is dropped, lost or refused gets a
VOID (header lost) at its deadline, so the edge still answers the client.
Set-up frames (AUTH, CODEC, VOID) are not charged, as on a ``trace`` link,
but keep their place in the client's stream. Replies (edge -> client) are
copied unshaped unless a downlink schedule is given; then they go through
one shared downlink pipeline (infinite queue, no loss) in the same way.

Each client may have at most ``window_bytes`` in the proxy (queued at the
bottleneck, or released and not yet written); past that the proxy stops
reading it and TCP pushes back on the client, as a TCP sender's window
would. So greedy clients interleave in the queue and share the capacity
about equally, while light ones are served in arrival order. Memory is
bounded: the shared drop-tail queue (``queue_bytes``), per client one
window plus one frame being read (at most ``max_frame_bytes``).
"""

from __future__ import annotations

import logging
import math
import random
import socket
import threading
import time
from collections import OrderedDict, deque
from typing import Any

from hilbed.nodes import wire
from hilbed.nodes.link.schedule import CapacitySchedule
from hilbed.nodes.link.stages import DROPPED, REFUSED, SENT, Accounting, Pipeline, QueueSpec, ReleaseThread

log = logging.getLogger("hilbed.link.shared")

#: the bottleneck's queue when the spec gives no queue_bytes (shared by every client)
DEFAULT_QUEUE_BYTES = 1_000_000
#: bytes one client may have in the proxy (queued at the bottleneck or released and not yet written) before
#: the proxy stops reading it: a TCP sender's window, so greedy clients interleave in the queue and share
DEFAULT_WINDOW_BYTES = 64 * 1024
SHAPED = (wire.BEGIN, wire.DATA, wire.END)

_WAIT, _READY, _SKIP = 0, 1, 2


class _Out:
    """Ordered output to one socket: frames are written in the order they were pushed, once released.

    A writer thread does the (blocking) writes, so the release thread never
    waits on a slow peer; a skipped frame (dropped, lost, refused) is passed over.
    """

    def __init__(self, sock: socket.socket, name: str, on_error: Any):
        self.sock = sock
        self.items: deque[list] = deque()  # [state, data]
        self.cv = threading.Condition()
        self.backlog = 0  # bytes pushed and not yet written or skipped
        self.closed = False
        self.on_error = on_error
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def push(self, data: bytes, state: int) -> list:
        item = [state, data]
        with self.cv:
            self.items.append(item)
            self.backlog += len(data)
            if state != _WAIT:
                self.cv.notify()
        return item

    def mark(self, item: list, state: int) -> None:
        with self.cv:
            item[0] = state
            self.cv.notify()

    def wait_room(self, limit: int, stop: threading.Event) -> None:
        with self.cv:
            while self.backlog > limit and not self.closed and not stop.is_set():
                self.cv.wait(0.2)

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.closed and not (self.items and self.items[0][0] != _WAIT):
                    self.cv.wait()
                if self.closed:
                    return
                batch = []
                while self.items and self.items[0][0] != _WAIT:
                    state, data = self.items.popleft()
                    self.backlog -= len(data)
                    if state == _READY:
                        batch.append(data)
                self.cv.notify_all()  # a reader waiting for room
            if batch:
                try:
                    self.sock.sendall(b"".join(batch))
                except OSError as exc:
                    self.on_error(exc)
                    return


class _Flow:
    """One client connection through the proxy, and its counters."""

    def __init__(self, proxy: "SharedUplinkProxy", index: int, client: socket.socket, peer: tuple):
        self.proxy = proxy
        self.index = index
        self.name = f"flow-{index}"
        self.peer = f"{peer[0]}:{peer[1]}"
        self.client = client
        self.upstream: socket.socket | None = None
        self.up_out: _Out | None = None
        self.down_out: _Out | None = None
        self.stop = threading.Event()
        self.deadlines: OrderedDict[int, float] = OrderedDict()  # msg id -> deadline (link time), recent ones
        self.c = {"bytes_in": 0, "packets_in": 0, "bytes_out": 0, "packets_out": 0, "dropped_packets": 0,
                  "dropped_bytes": 0, "refused_packets": 0, "lost_packets": 0, "setup_frames": 0,
                  "voids_sent": 0, "down_bytes": 0, "error": None}

    def describe(self) -> dict:
        return {"peer": self.peer, **self.c}


class SharedUplinkProxy:
    """Accepts clients on ``listen`` and forwards each to ``forward`` through one shared uplink pipeline.

    ``uplink``/``downlink``: capacity schedules (``downlink`` None: replies
    unshaped). ``queue_bytes``: the shared drop-tail limit. ``log_path``:
    Mahimahi link log of the uplink (``+ ".down"`` for the downlink).
    ``medium_file``: scale capacity by ``1 - load`` of the jammer's medium
    (the embedded testbed), as a ``trace`` link does.
    """

    def __init__(self, listen: tuple[str, int], forward: tuple[str, int], uplink: CapacitySchedule,
                 downlink: CapacitySchedule | None = None, *, delay_ms: float = 0.0, loss: float = 0.0,
                 queue_bytes: int | None = DEFAULT_QUEUE_BYTES, accounting: Accounting | str | None = None,
                 seed: int = 0, log_path: str | None = None, medium_file: str | None = None,
                 window_bytes: int = DEFAULT_WINDOW_BYTES, max_frame_bytes: int = wire.MAX_PAYLOAD,
                 realtime: bool = True):
        if not 0 <= loss < 1:
            raise ValueError("loss must be in [0, 1)")
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        self.forward = forward
        self.window_bytes = window_bytes
        self.max_frame_bytes = max_frame_bytes
        self.epoch = time.monotonic()
        self.medium = None
        if medium_file:
            from hilbed.nodes.link.medium import MediumScaledSchedule, MediumWatcher
            self.medium = MediumWatcher(medium_file)
            uplink = MediumScaledSchedule(uplink, self.medium.factor, self.now)
            if downlink is not None:
                downlink = MediumScaledSchedule(downlink, self.medium.factor, self.now)
        acc = Accounting.parse(accounting, "tcp")
        queue = QueueSpec("droptail", bytes=int(queue_bytes)) if queue_bytes else QueueSpec()
        up_log = down_log = None
        if log_path:
            from hilbed.nodes.link.linklog import LinkLogWriter
            init_ms = int((time.time() - self.now()) * 1000)
            up_log = LinkLogWriter(log_path, "shared uplink", uplink, trace_name=uplink.describe(),
                                   queue_desc=queue.describe(), init_unix_ms=init_ms, clock=self.now)
            if downlink is not None:
                down_log = LinkLogWriter(str(log_path) + ".down", "shared downlink", downlink,
                                         trace_name=downlink.describe(), init_unix_ms=init_ms, clock=self.now)
        self.up = Pipeline(uplink, queue, delay_ms / 1000.0, loss, random.Random(f"{seed}:up"), up_log, acc)
        self.down = (Pipeline(downlink, None, delay_ms / 1000.0, 0.0, None, down_log, acc)
                     if downlink is not None else None)
        self._lock = threading.Lock()  # the pipelines and the flow list
        self._releaser = ReleaseThread(self.now, self._release, realtime=realtime, name="shared-uplink")
        self.flows: list[_Flow] = []
        self.counters = {"connections": 0, "upstream_errors": 0, "bad_streams": 0}
        self._closed = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(listen)
        self.sock.listen(64)
        threading.Thread(target=self._accept_loop, name="shared-uplink-accept", daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def now(self) -> float:
        return time.monotonic() - self.epoch

    # -- connections ---------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.05)
                continue
            with self._lock:
                flow = _Flow(self, len(self.flows) + 1, conn, peer)
                self.flows.append(flow)
                self.counters["connections"] += 1
            threading.Thread(target=self._serve, args=(flow,), name=f"shared-{flow.name}", daemon=True).start()

    def _serve(self, flow: _Flow) -> None:
        """Connect the client to the edge, then read its frames until either side goes."""
        try:
            up = socket.create_connection(self.forward, timeout=10)
            up.settimeout(None)
            for s in (up, flow.client):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            flow.c["error"] = f"cannot reach the edge at {self.forward[0]}:{self.forward[1]}: {exc}"
            self.counters["upstream_errors"] += 1
            self._end(flow)
            return
        flow.upstream = up
        flow.up_out = _Out(up, f"shared-{flow.name}-up", lambda exc: self._broken(flow, f"edge: {exc}"))
        if self.down is not None:
            flow.down_out = _Out(flow.client, f"shared-{flow.name}-down",
                                 lambda exc: self._broken(flow, f"client: {exc}"))
        threading.Thread(target=self._pump_down, args=(flow,), name=f"shared-{flow.name}-rx", daemon=True).start()
        reader = wire.FrameReader(flow.client, max_payload=self.max_frame_bytes)
        try:
            while not flow.stop.is_set() and not self._closed.is_set():
                flow.up_out.wait_room(self.window_bytes, flow.stop)
                f = reader.read(0.2)
                if f is not None:
                    self._on_client_frame(flow, f)
        except EOFError:
            pass  # the client closed: what is queued still goes, then the edge sees it close
        except wire.WireError as exc:
            flow.c["error"] = f"not a hilbed wire stream: {exc}"
            self.counters["bad_streams"] += 1
        except OSError as exc:
            flow.c["error"] = f"client: {exc}"
        self._drain_and_end(flow)

    def _broken(self, flow: _Flow, why: str) -> None:
        if flow.c["error"] is None:
            flow.c["error"] = why
        self._end(flow)

    def _drain_and_end(self, flow: _Flow) -> None:
        """Let frames already admitted reach the edge (bounded wait), then close both sides."""
        out = flow.up_out
        if out is not None and not flow.stop.is_set():
            t_end = time.monotonic() + 30.0
            with out.cv:
                while out.items and not out.closed and time.monotonic() < t_end:
                    out.cv.wait(0.1)
        self._end(flow)

    def _end(self, flow: _Flow) -> None:
        flow.stop.set()
        for o in (flow.up_out, flow.down_out):
            if o is not None:
                o.close()
        for s in (flow.client, flow.upstream):
            if s is None:
                continue
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _pump_down(self, flow: _Flow) -> None:
        """Edge -> client: bytes as they come, or frames through the shared downlink."""
        up = flow.upstream
        assert up is not None
        try:
            if self.down is None:
                while not flow.stop.is_set():
                    data = up.recv(65536)
                    if not data:
                        break
                    flow.c["down_bytes"] += len(data)
                    flow.client.sendall(data)
            else:
                reader = wire.FrameReader(up, max_payload=self.max_frame_bytes)
                while not flow.stop.is_set():
                    f = reader.read(0.2)
                    if f is None:
                        continue
                    raw = wire.frame(f.type, f.payload)
                    flow.c["down_bytes"] += len(raw)
                    assert flow.down_out is not None
                    item = flow.down_out.push(raw, _WAIT)
                    with self._lock:
                        pkt = self.down.offer(len(raw), self.now())
                        if pkt.fate == SENT:
                            self._releaser.schedule(pkt.t_release, (flow.down_out, item))
                    if pkt.fate != SENT:  # a downlink trace run once has ended: the reply never gets through
                        flow.down_out.mark(item, _SKIP)
        except (EOFError, OSError, wire.WireError):
            pass
        if not flow.stop.is_set():
            self._end(flow)

    # -- the shared uplink ------------------------------------------------------
    def _deadline_link(self, deadline_edge_ns: int) -> float:
        return self.now() + (deadline_edge_ns - time.time_ns()) / 1e9

    def _on_client_frame(self, flow: _Flow, f: wire.Frame) -> None:
        raw = wire.frame(f.type, f.payload)
        out = flow.up_out
        assert out is not None
        if f.type not in SHAPED:
            flow.c["setup_frames"] += 1
            out.push(raw, _READY)
            return
        msg, deadline, begin = self._frame_deadline(flow, f)
        flow.c["packets_in"] += 1
        flow.c["bytes_in"] += len(raw)
        item = out.push(raw, _WAIT)
        with self._lock:
            pkt = self.up.offer(len(raw), self.now(), deadline=deadline)
            if pkt.fate == SENT:
                self._releaser.schedule(pkt.t_release, (out, item, flow, len(raw), pkt.lost))
        if pkt.fate == SENT:
            return
        out.mark(item, _SKIP)
        if pkt.fate == DROPPED:
            flow.c["dropped_packets"] += 1
            flow.c["dropped_bytes"] += len(raw)
        elif pkt.fate == REFUSED:
            flow.c["refused_packets"] += 1
        if begin is not None:
            self._void_later(flow, begin)

    def _frame_deadline(self, flow: _Flow, f: wire.Frame) -> tuple[int | None, float, wire.Begin | None]:
        """The message a frame belongs to and its deadline in link time (inf when unknown)."""
        try:
            if f.type == wire.BEGIN:
                b = wire.parse_begin(f.payload, 1 << 20)
                d = self._deadline_link(b.deadline_edge_ns)
                flow.deadlines[b.msg_id] = d
                while len(flow.deadlines) > 16:
                    flow.deadlines.popitem(last=False)
                return b.msg_id, d, b
            msg = f.data()[0] if f.type == wire.DATA else f.end()[0]
        except (wire.Malformed, ValueError):
            return None, math.inf, None  # the edge judges a bad frame; the link just carries it
        return msg, flow.deadlines.get(msg, math.inf), None

    def _void_later(self, flow: _Flow, b: wire.Begin) -> None:
        """A header that never reaches the edge: tell the edge at the deadline, so the client gets a reply."""
        assert flow.up_out is not None
        void = wire.void_frame(b.msg_id, wire.VOID_LOST, len(b.chunk_sizes))
        t = max(self.now(), self._deadline_link(b.deadline_edge_ns))
        self._releaser.schedule(t, ("void", flow, void))

    def _release(self, item: tuple, late_s: float) -> None:
        if item[0] == "void":
            _, flow, void = item
            if flow.up_out is not None:
                flow.up_out.push(void, _READY)
                flow.c["voids_sent"] += 1
            return
        if len(item) == 2:  # downlink
            out, it = item
            out.mark(it, _READY)
            return
        out, it, flow, nbytes, lost = item
        if lost:
            flow.c["lost_packets"] += 1
            out.mark(it, _SKIP)
            if it[1][2] == wire.BEGIN:
                try:
                    self._void_later(flow, wire.parse_begin(it[1][wire.HDR.size:], 1 << 20))
                except (wire.Malformed, ValueError):
                    pass
            return
        flow.c["packets_out"] += 1
        flow.c["bytes_out"] += nbytes
        out.mark(it, _READY)

    # -- results ------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            flows = {f.name: f.describe() for f in self.flows}
            up = dict(self.up.counters)
            down = dict(self.down.counters) if self.down is not None else None
        out = {**self.counters, "uplink": {**up, "schedule": self.up.schedule.describe(),
                                           "queue": self.up.queue.spec.describe()},
               "downlink": down, "accounting": self.up.accounting.describe(), "flows": flows,
               "realtime": self._releaser.realtime_error is None}
        if self.medium is not None:
            out["medium_load_last"] = self.medium.load()
        return out

    def close(self) -> dict:
        """Stop accepting, close every flow, finish the link logs; returns the final counters."""
        self._closed.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            flows = list(self.flows)
        for f in flows:
            self._end(f)
        stats = self.stats()
        self._releaser.close(5)
        t_end = self.now()
        for p in (self.up, self.down):
            if p is not None:
                p.close_log(t_end)
        return stats
