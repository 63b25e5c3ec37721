"""Deadline-bounded message transport over a radio (one image = one message).

Why: the lab question is "how much of an image reaches the edge before its
deadline while a jammer interferes".  The image is pre-split by the
application into ordered chunks (e.g. progressive JPEG scans) so that any
*prefix* of chunks is decodable.  The transport therefore

* sends chunks strictly in order and never skips a fragment (a hole would
  make every later chunk useless), retrying until the deadline;
* records, per chunk, when its last fragment was acknowledged (sender) or
  received (receiver), in both ``time.monotonic()`` and ``time.time()``;
* stops at the deadline and tells the receiver (ABORT), so the edge can
  decode the prefix it has instead of waiting.  No transmission *starts*
  after the deadline; one already on air finishes (a chunk it completes
  counts as delivered, since the receiver has it), so chunk times can exceed
  the deadline by at most one frame exchange.

On a Spinel radio every fragment is one 802.15.4 data frame::

    MHR (9 bytes): frame control 0x8861 (data, ACK request, PAN ID compression,
                   16-bit dst/src), sequence number, dst PAN, dst short, src short
    hilbed fragment header (6 bytes):
        kind << 4 | flags (1)  kind: 1 DATA, 2 BEGIN, 3 END, 4 ABORT; flag 1 = last fragment of chunk
        message id        (1)  low 8 bits of msg_id
        chunk index       (2, LE)
        fragment index    (2, LE) within the chunk
    payload (<= 110 bytes)   DATA: chunk bytes; BEGIN: chunk count (u16) + total bytes (u32);
                             END: chunk count (u16); ABORT: chunks delivered (u16)
    FCS (2 bytes)

127-byte PSDU - 9 MHR - 2 FCS = 116 bytes MAC payload, minus 6 = 110 bytes of
application data per frame.  On a Wireless-UART radio the same events are
carried by the byte-stream framing of :mod:`hilbed.firmware_bridge.wuart`; the
firmware handles ACKs/retries itself, so the sender's chunk times mean
"handed to the radio's UART" and retries/CCA failures are not observable.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from . import phy, wuart
from .radio import Radio, RxFrame, SpinelRadio, TxResult, WuartRadio

log = logging.getLogger(__name__)

KIND_DATA = 1
KIND_BEGIN = 2
KIND_END = 3
KIND_ABORT = 4
FLAG_LAST_FRAGMENT = 0x1

FRAGMENT_HEADER = struct.Struct("<BBHH")
FRAGMENT_HEADER_LEN = FRAGMENT_HEADER.size  # 6
FRAGMENT_PAYLOAD = phy.MAX_SHORT_DATA_PAYLOAD - FRAGMENT_HEADER_LEN  # 110
CONTROL_ATTEMPTS = 3

EventKind = Literal["begin", "chunk", "end", "abort"]


@dataclass(frozen=True)
class ChunkDelivery:
    index: int
    size: int
    t_monotonic: float
    t_wall: float


@dataclass
class SendReport:
    msg_id: int
    protocol: str
    chunks_total: int
    bytes_total: int
    chunks_delivered: int = 0
    bytes_delivered: int = 0
    chunk_times: list[ChunkDelivery] = field(default_factory=list)
    frames: int = 0  # distinct radio frames (fragments + control) handed to the radio
    attempts: int = 0  # transmissions including retries
    retries: int = 0
    cca_failures: int = 0
    aborted: bool = False
    abort_delivered: bool | None = None
    started_monotonic: float = 0.0
    finished_monotonic: float = 0.0
    deadline_monotonic: float = 0.0

    @property
    def complete(self) -> bool:
        return self.chunks_delivered == self.chunks_total

    @property
    def duration_s(self) -> float:
        return self.finished_monotonic - self.started_monotonic

    def goodput_kbps(self) -> float:
        """Application bytes delivered per second up to the last delivered chunk, in kbit/s."""
        if not self.chunk_times:
            return 0.0
        elapsed = self.chunk_times[-1].t_monotonic - self.started_monotonic
        return self.bytes_delivered * 8 / elapsed / 1000.0 if elapsed > 0 else 0.0


@dataclass(frozen=True)
class MessageEvent:
    kind: EventKind
    msg_id: int
    t_monotonic: float
    t_wall: float
    chunk_index: int | None = None
    data: bytes = b""
    chunk_count: int | None = None  # begin/end: announced count; abort: chunks the sender got through
    total_bytes: int | None = None
    rssi: int | None = None
    lqi: int | None = None
    src: int | bytes | None = None  # sender's MAC source address (Spinel); None on wuart
    reason: str | None = None  # abort raised by the receiver itself: see MessageReceiver


@dataclass
class ReceivedMessage:
    msg_id: int
    chunks: list[bytes] = field(default_factory=list)  # the in-order prefix received
    chunk_times: list[ChunkDelivery] = field(default_factory=list)
    chunk_count: int | None = None
    total_bytes: int | None = None
    begun: bool = False
    ended: bool = False
    aborted: bool = False
    timed_out: bool = False
    t_begin: float | None = None
    t_finish: float | None = None
    src: int | bytes | None = None
    close_reason: str | None = None  # set when the receiver, not the sender, closed it

    @property
    def complete(self) -> bool:
        return self.chunk_count is not None and len(self.chunks) == self.chunk_count

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


# --- sender ------------------------------------------------------------------------

class MessageSender:
    """Sends messages to ``dst`` (16-bit short address; ignored on wuart)."""

    def __init__(self, radio: Radio, dst: int = phy.BROADCAST_ADDR, *, max_retries: int = phy.MAC_MAX_FRAME_RETRIES,
                 abort_attempts: int = CONTROL_ATTEMPTS) -> None:
        self.radio = radio
        self.dst = dst
        self.max_retries = max_retries
        self.abort_attempts = abort_attempts

    def send(self, msg_id: int, chunks: Sequence[bytes], deadline_monotonic: float) -> SendReport:
        chunks = [bytes(c) for c in chunks]
        report = SendReport(msg_id, self.radio.protocol, len(chunks), sum(len(c) for c in chunks),
                            started_monotonic=time.monotonic(), deadline_monotonic=deadline_monotonic)
        if isinstance(self.radio, SpinelRadio):
            self._send_spinel(msg_id, chunks, deadline_monotonic, report)
        elif isinstance(self.radio, WuartRadio):
            self._send_wuart(msg_id, chunks, deadline_monotonic, report)
        else:
            raise TypeError(f"unsupported radio {type(self.radio).__name__}")
        report.finished_monotonic = time.monotonic()
        return report

    # --- Spinel / raw 802.15.4 ----------------------------------------------------
    def _frame(self, kind: int, flags: int, msg_id: int, chunk: int, frag: int, payload: bytes) -> bytes:
        radio = self.radio
        assert isinstance(radio, SpinelRadio)
        body = FRAGMENT_HEADER.pack((kind << 4) | flags, msg_id & 0xFF, chunk & 0xFFFF, frag & 0xFFFF) + payload
        return phy.build_data_frame(radio.next_seq(), radio.pan_id, self.dst, radio.short_addr, body)

    def _deliver(self, psdu: bytes, deadline: float | None, report: SendReport,
                 max_transactions: int | None = None) -> tuple[bool, float, float]:
        """Transmit until ACKed (or broadcast sent); False if the deadline/attempt budget runs out."""
        radio = self.radio
        assert isinstance(radio, SpinelRadio)
        report.frames += 1
        transactions = 0
        tried = 0  # this frame's attempts: its retries are those after the first
        try:
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    return False, 0.0, 0.0
                if max_transactions is not None and transactions >= max_transactions:
                    return False, 0.0, 0.0
                transactions += 1
                st = radio.send_frame(psdu, max_retries=self.max_retries, deadline=deadline)
                tried += st.attempts
                report.attempts += st.attempts
                report.cca_failures += st.cca_failures
                if st.ok:
                    return True, st.t_done_monotonic, st.t_done_wall
                if st.result is TxResult.ERROR:
                    log.warning("transmit error (status %s); retrying", st.status_code)
                    time.sleep(0.001)
        finally:
            # per frame, not attempts - frames over the message: a frame the deadline stopped before its
            # first attempt would make that negative (-1 per aborted message, seen on a jammed run)
            report.retries += max(0, tried - 1)

    def _send_spinel(self, msg_id: int, chunks: list[bytes], deadline: float, report: SendReport) -> None:
        begin = struct.pack("<HI", len(chunks), report.bytes_total)
        ok, _, _ = self._deliver(self._frame(KIND_BEGIN, 0, msg_id, 0, 0, begin), deadline, report)
        if ok:
            for index, chunk in enumerate(chunks):
                pieces = [chunk[i:i + FRAGMENT_PAYLOAD] for i in range(0, len(chunk), FRAGMENT_PAYLOAD)] or [b""]
                if len(pieces) > 0xFFFF:
                    raise ValueError(f"chunk {index} too large ({len(chunk)} bytes)")
                for frag, piece in enumerate(pieces):
                    flags = FLAG_LAST_FRAGMENT if frag == len(pieces) - 1 else 0
                    ok, t_mono, t_wall = self._deliver(self._frame(KIND_DATA, flags, msg_id, index, frag, piece),
                                                       deadline, report)
                    if not ok:
                        break
                if not ok:
                    break
                report.chunks_delivered += 1
                report.bytes_delivered += len(chunk)
                report.chunk_times.append(ChunkDelivery(index, len(chunk), t_mono, t_wall))
        if ok:
            self._deliver(self._frame(KIND_END, 0, msg_id, len(chunks), 0, struct.pack("<H", len(chunks))),
                          None, report, max_transactions=CONTROL_ATTEMPTS)
            return
        report.aborted = True
        abort = self._frame(KIND_ABORT, 0, msg_id, report.chunks_delivered, 0,
                            struct.pack("<H", report.chunks_delivered))
        report.abort_delivered, _, _ = self._deliver(abort, None, report, max_transactions=self.abort_attempts)

    # --- Wireless UART --------------------------------------------------------------
    def _send_wuart(self, msg_id: int, chunks: list[bytes], deadline: float, report: SendReport) -> None:
        radio = self.radio
        assert isinstance(radio, WuartRadio)

        def put(frame: wuart.WuartFrame, limit: float | None) -> bool:
            data = frame.encode()
            report.frames += 1
            report.attempts += 1
            return radio.write(data, deadline=limit) == len(data)

        ok = put(wuart.begin_frame(msg_id, len(chunks), report.bytes_total), deadline)
        if ok:
            for index, chunk in enumerate(chunks):
                for frame in wuart.chunk_frames(msg_id, index, chunk):
                    ok = put(frame, deadline)
                    if not ok:
                        break
                if not ok:
                    break
                t_mono = max(time.monotonic(), radio.drain_time())
                t_wall = time.time() + (t_mono - time.monotonic())
                report.chunks_delivered += 1
                report.bytes_delivered += len(chunk)
                report.chunk_times.append(ChunkDelivery(index, len(chunk), t_mono, t_wall))
        if ok:
            put(wuart.end_frame(msg_id, len(chunks)), None)
            return
        report.aborted = True
        report.abort_delivered = put(wuart.abort_frame(msg_id, report.chunks_delivered), time.monotonic() + 1.0)


# --- receiver ----------------------------------------------------------------------

CloseReason = Literal["bad_sequence", "over_limit", "superseded", "evicted"]


@dataclass(frozen=True)
class ReceiverLimits:
    """What one sender (or a hostile frame source) can make the receiver hold.

    Why: the receiver keeps one assembly per (source address, message id)
    and fragments may arrive out of order, so without bounds a stream of
    forged fragment headers could grow memory without limit.
    """

    max_assemblies: int = 32  # messages open at once (normally one per client); the oldest is evicted
    max_fragment_index: int = 4095  # per chunk (4096 x 110 B = 440 KiB over Spinel)
    max_buffered_fragments: int = 8192  # per message: held but not yet delivered in order
    max_buffered_bytes: int = 1 << 20  # per message
    max_message_bytes: int = 16 << 20  # a BEGIN announcing more is refused
    max_closed: int = 256  # closed messages remembered, so late frames for them are recognised


@dataclass
class ReceiverStats:
    """Counters of a MessageReceiver; see :meth:`MessageReceiver.counters`.

    Every DATA fragment handled ends up in exactly one bucket, so
    ``data_fragments == delivered_fragments + duplicate_fragments +
    dropped_fragments + pending_fragments`` always holds: nothing that
    arrived is lost without being counted.
    """

    frames: int = 0  # hilbed frames handled (BEGIN/DATA/END/ABORT)
    ignored_frames: int = 0  # not hilbed frames: undecodable MHR, not data, other source, short body, bad kind
    data_fragments: int = 0
    delivered_fragments: int = 0  # part of a chunk event
    duplicate_fragments: int = 0  # already held or already delivered (retransmission after a lost ACK)
    dropped_fragments: int = 0  # never delivered: contradicting, over a limit, left in a closed message, late
    pending_fragments: int = 0  # held now, waiting for earlier fragments
    duplicate_control: int = 0  # repeated BEGIN/END/ABORT
    bad_sequences: int = 0  # messages closed because their fragments contradicted each other or BEGIN
    over_limit: int = 0  # messages closed (or refused at BEGIN) for exceeding ReceiverLimits
    superseded_assemblies: int = 0  # closed by a BEGIN of another message from the same source
    evicted_assemblies: int = 0  # closed because max_assemblies were open
    messages_begun: int = 0
    messages_ended: int = 0  # END from the sender
    messages_aborted: int = 0  # ABORT from the sender
    open_assemblies: int = 0


class _Assembly:
    __slots__ = ("key", "src", "msg_id", "explicit_begin", "chunk_count", "total_bytes", "fragments", "high",
                 "last_fragment", "completed_at", "next_chunk", "buffered_fragments", "buffered_bytes",
                 "delivered_bytes")

    def __init__(self, key: tuple[object, int], src: int | bytes | None, msg_id: int) -> None:
        self.key = key
        self.src = src
        self.msg_id = msg_id
        self.explicit_begin = False
        self.chunk_count: int | None = None
        self.total_bytes: int | None = None
        self.fragments: dict[int, dict[int, bytes]] = {}  # chunk -> fragment index -> payload, undelivered
        self.high: dict[int, int] = {}  # chunk -> highest fragment index held
        self.last_fragment: dict[int, int] = {}  # chunk -> index of the fragment with the LAST flag
        self.completed_at: dict[int, tuple[float, float]] = {}  # complete, waiting for earlier chunks
        self.next_chunk = 0
        self.buffered_fragments = 0
        self.buffered_bytes = 0
        self.delivered_bytes = 0


class MessageReceiver:
    """Turns received frames (Spinel) or bytes (wuart) into begin/chunk/end/abort events.

    Chunks are emitted in order: chunk k is reported once it and every chunk
    before it are complete, with the time its last missing fragment arrived.
    Duplicated fragments (retransmissions whose ACK was lost) are ignored.
    ``src`` restricts Spinel reception to one sender's short address.

    Assemblies are kept per (source address, message id) -- Spinel frames
    carry the sender's MAC address; a wuart link has one sender, ``src`` None
    -- so several clients can send to one edge radio at once.  No fragment
    sequence raises: one that no sender following this protocol produces
    (a fragment beyond the chunk's LAST fragment, a second LAST, a chunk
    beyond BEGIN's count, more bytes than BEGIN announced) closes the
    message as incomplete, as do exceeding :class:`ReceiverLimits`, a BEGIN
    of a new message from the same source and eviction when too many are
    open.  Such a closure is reported as an ``abort`` event whose ``reason``
    says why and whose ``chunk_count`` is the number of chunks delivered, so
    a consumer decodes the prefix at once.  Everything dropped is counted in
    :attr:`stats`.
    """

    def __init__(self, radio: Radio | None, *, src: int | None = None, limits: ReceiverLimits | None = None,
                 protocol: str | None = None) -> None:
        self.radio = radio
        self.src = src
        self.limits = limits or ReceiverLimits()
        self.protocol = protocol or getattr(radio, "protocol", "spinel")
        self.stats = ReceiverStats()
        self._events: deque[MessageEvent] = deque()
        self._open: OrderedDict[tuple[object, int], _Assembly] = OrderedDict()  # least recently active first
        self._closed: OrderedDict[tuple[object, int], None] = OrderedDict()
        self._wuart = wuart.WuartDecoder() if self.protocol == "wuart" else None

    # --- compatibility counters --------------------------------------------------------
    @property
    def ignored_frames(self) -> int:
        return self.stats.ignored_frames

    @property
    def duplicate_fragments(self) -> int:
        return self.stats.duplicate_fragments

    def counters(self) -> dict[str, int]:
        """All receiver counters (and the wuart decoder's, prefixed ``wuart_``) as one flat dict."""
        out = dict(vars(self.stats))
        if self._wuart is not None:
            out.update({f"wuart_{k}": v for k, v in self._wuart.counters().items()})
        return out

    # --- input ----------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> MessageEvent | None:
        """Next event; waits up to ``timeout`` seconds (None: forever) but always polls the radio once."""
        if self.radio is None and not self._events:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            assert self.radio is not None
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            frame = self.radio.recv_frame(remaining)
            if frame is not None:
                self.feed(frame)
            elif deadline is not None and time.monotonic() >= deadline:
                return None
        return self._events.popleft()

    def feed(self, frame: RxFrame) -> None:
        """Handle one received frame (Spinel: a PSDU; wuart: a piece of the byte stream).

        ``recv`` calls this; tests and fuzzers call it directly (with
        ``radio=None``) and collect events with :meth:`pop_events`.
        """
        if self._wuart is not None:
            for wf in self._wuart.feed(frame.psdu):
                self._handle(int(wf.type), wf.flags, None, wf.image_seq, wf.chunk_index, wf.fragment_index,
                             wf.payload, frame)
        else:
            self._handle_mac(frame)
        self.stats.open_assemblies = len(self._open)

    def pop_events(self) -> list[MessageEvent]:
        out = list(self._events)
        self._events.clear()
        return out

    @property
    def wuart_decoder(self) -> wuart.WuartDecoder | None:
        return self._wuart

    def _handle_mac(self, frame: RxFrame) -> None:
        try:
            header = phy.parse_mac_header(frame.psdu)
        except phy.MacParseError:
            self.stats.ignored_frames += 1
            return
        if header.frame_type != phy.FRAME_TYPE_DATA or (self.src is not None and header.src_addr != self.src):
            self.stats.ignored_frames += 1
            return
        body = phy.mac_payload(frame.psdu, header)
        if len(body) < FRAGMENT_HEADER_LEN:
            self.stats.ignored_frames += 1
            return
        kind_flags, msg_id, chunk, frag = FRAGMENT_HEADER.unpack_from(body)
        kind = kind_flags >> 4
        if kind not in (KIND_DATA, KIND_BEGIN, KIND_END, KIND_ABORT):
            self.stats.ignored_frames += 1
            return
        self._handle(kind, kind_flags & 0xF, header.src_addr, msg_id, chunk, frag, body[FRAGMENT_HEADER_LEN:],
                     frame)

    # --- state machine ----------------------------------------------------------------
    def _event(self, kind: EventKind, a: _Assembly, frame: RxFrame, **kw: object) -> None:
        self._events.append(MessageEvent(kind, a.msg_id, frame.t_monotonic, frame.t_wall, src=a.src,
                                         **kw))  # type: ignore[arg-type]

    def _open_assembly(self, key: tuple[object, int], src: int | bytes | None, msg_id: int,
                       frame: RxFrame) -> _Assembly:
        while len(self._open) >= max(1, self.limits.max_assemblies):
            oldest = next(iter(self._open.values()))
            self.stats.evicted_assemblies += 1
            self._close(oldest, frame, reason="evicted")
        self._closed.pop(key, None)
        a = self._open[key] = _Assembly(key, src, msg_id)
        self.stats.messages_begun += 1
        return a

    def _close(self, a: _Assembly, frame: RxFrame, *, reason: CloseReason | None = None,
               kind: EventKind = "abort", count: int | None = None, offending: int = 0) -> None:
        """Close ``a``: drop (and count) what it still holds, remember its key, emit end/abort."""
        self.stats.dropped_fragments += a.buffered_fragments + offending
        self.stats.pending_fragments -= a.buffered_fragments
        a.fragments.clear()
        a.completed_at.clear()
        a.buffered_fragments = a.buffered_bytes = 0
        self._open.pop(a.key, None)
        self._closed[a.key] = None
        while len(self._closed) > self.limits.max_closed:
            self._closed.popitem(last=False)
        if reason is None:
            self._event(kind, a, frame, chunk_count=count)
        else:
            self._event("abort", a, frame, chunk_count=a.next_chunk, reason=reason)

    def _handle(self, kind: int, flags: int, src: int | bytes | None, msg_id: int, chunk: int, frag: int,
                payload: bytes, frame: RxFrame) -> None:
        st = self.stats
        st.frames += 1
        key = (src, msg_id)
        a = self._open.get(key)
        if kind == KIND_BEGIN:
            if a is not None:
                st.duplicate_control += 1  # repeated BEGIN (lost ACK), or BEGIN after data
                self._open.move_to_end(key)
                return
            for other in [o for o in self._open.values() if o.src == src]:
                st.superseded_assemblies += 1  # its END/ABORT was lost; the sender moved on
                self._close(other, frame, reason="superseded")
            a = self._open_assembly(key, src, msg_id, frame)
            a.explicit_begin = True
            if len(payload) >= 6:  # a shorter one announces nothing (the sender always sends 6 bytes)
                a.chunk_count, a.total_bytes = struct.unpack_from("<HI", payload)
            self._event("begin", a, frame, chunk_count=a.chunk_count, total_bytes=a.total_bytes,
                        rssi=frame.rssi, lqi=frame.lqi)
            if a.total_bytes is not None and a.total_bytes > self.limits.max_message_bytes:
                st.over_limit += 1
                self._close(a, frame, reason="over_limit")
            return
        if a is None:
            if key in self._closed:  # late frame of a closed message
                if kind == KIND_DATA:
                    st.data_fragments += 1
                    st.dropped_fragments += 1
                else:
                    st.duplicate_control += 1
                return
            # BEGIN was lost (host queue overflow, bytes lost on the wuart link): open implicitly
            a = self._open_assembly(key, src, msg_id, frame)
            self._event("begin", a, frame, rssi=frame.rssi, lqi=frame.lqi)
        else:
            self._open.move_to_end(key)
        if kind == KIND_DATA:
            self._data(a, flags, chunk, frag, payload, frame)
        elif kind == KIND_END:
            st.messages_ended += 1
            (count,) = struct.unpack_from("<H", payload.ljust(2, b"\0"))
            self._close(a, frame, kind="end", count=count)
        else:
            st.messages_aborted += 1
            (count,) = struct.unpack_from("<H", payload.ljust(2, b"\0"))
            self._close(a, frame, kind="abort", count=count)

    def _data(self, a: _Assembly, flags: int, chunk: int, frag: int, payload: bytes, frame: RxFrame) -> None:
        st = self.stats
        lim = self.limits
        st.data_fragments += 1
        if chunk < a.next_chunk:
            st.duplicate_fragments += 1
            return
        frags = a.fragments.get(chunk)
        if frags is not None and frag in frags:
            st.duplicate_fragments += 1
            return
        is_last = bool(flags & FLAG_LAST_FRAGMENT)
        last = a.last_fragment.get(chunk)
        if ((a.chunk_count is not None and chunk >= a.chunk_count)
                or (last is not None and (frag > last or is_last))  # beyond LAST, or a second LAST
                or (is_last and a.high.get(chunk, -1) > frag)  # LAST below a fragment already held
                or (a.total_bytes is not None
                    and a.delivered_bytes + a.buffered_bytes + len(payload) > a.total_bytes)):
            st.bad_sequences += 1
            self._close(a, frame, reason="bad_sequence", offending=1)
            return
        if (frag > lim.max_fragment_index or a.buffered_fragments >= lim.max_buffered_fragments
                or a.buffered_bytes + len(payload) > lim.max_buffered_bytes):
            st.over_limit += 1
            self._close(a, frame, reason="over_limit", offending=1)
            return
        if frags is None:
            frags = a.fragments[chunk] = {}
        frags[frag] = payload
        a.high[chunk] = max(frag, a.high.get(chunk, -1))
        a.buffered_fragments += 1
        a.buffered_bytes += len(payload)
        st.pending_fragments += 1
        if is_last:
            a.last_fragment[chunk] = last = frag
        # Every held index is <= LAST and distinct, so LAST+1 of them means 0..LAST are all here.
        if last is not None and len(frags) == last + 1:
            a.completed_at[chunk] = (frame.t_monotonic, frame.t_wall)
        while a.next_chunk in a.completed_at:
            index = a.next_chunk
            parts = a.fragments.pop(index)
            t_mono, t_wall = a.completed_at.pop(index)
            a.high.pop(index, None)
            a.last_fragment.pop(index, None)
            data = b"".join(parts[i] for i in range(len(parts)))
            a.buffered_fragments -= len(parts)
            a.buffered_bytes -= len(data)
            a.delivered_bytes += len(data)
            st.pending_fragments -= len(parts)
            st.delivered_fragments += len(parts)
            self._events.append(MessageEvent("chunk", a.msg_id, t_mono, t_wall, chunk_index=index, data=data,
                                             rssi=frame.rssi, lqi=frame.lqi, src=a.src))
            a.next_chunk += 1

    def receive_message(self, timeout: float, msg_id: int | None = None) -> ReceivedMessage | None:
        """Collect one message until END/ABORT (or a closure) or ``timeout`` seconds; None if nothing began."""
        deadline = time.monotonic() + timeout
        msg: ReceivedMessage | None = None
        id_mask = 0xFF if self.protocol == "spinel" else 0xFFFF
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if msg is not None:
                    msg.timed_out = True
                return msg
            ev = self.recv(remaining)
            if ev is None:
                continue
            if msg_id is not None and ev.msg_id != (msg_id & id_mask):
                continue
            if msg is None or (msg.msg_id, msg.src) != (ev.msg_id, ev.src):
                if ev.kind != "begin" and msg is not None:
                    continue
                msg = ReceivedMessage(ev.msg_id, src=ev.src)
            if ev.kind == "begin":
                msg.begun = True
                msg.t_begin = ev.t_monotonic
                msg.chunk_count = ev.chunk_count
                msg.total_bytes = ev.total_bytes
            elif ev.kind == "chunk":
                assert ev.chunk_index is not None
                msg.chunks.append(ev.data)
                msg.chunk_times.append(ChunkDelivery(ev.chunk_index, len(ev.data), ev.t_monotonic, ev.t_wall))
            elif ev.kind == "end":
                msg.ended = True
                msg.t_finish = ev.t_monotonic
                if msg.chunk_count is None:
                    msg.chunk_count = ev.chunk_count
                return msg
            elif ev.kind == "abort":
                msg.aborted = True
                msg.close_reason = ev.reason
                msg.t_finish = ev.t_monotonic
                return msg
