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
from collections import deque
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
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return False, 0.0, 0.0
            if max_transactions is not None and transactions >= max_transactions:
                return False, 0.0, 0.0
            transactions += 1
            st = radio.send_frame(psdu, max_retries=self.max_retries, deadline=deadline)
            report.attempts += st.attempts
            report.cca_failures += st.cca_failures
            if st.ok:
                report.retries = report.attempts - report.frames
                return True, st.t_done_monotonic, st.t_done_wall
            report.retries = max(0, report.attempts - report.frames)
            if st.result is TxResult.ERROR:
                log.warning("transmit error (status %s); retrying", st.status_code)
                time.sleep(0.001)

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

class _Assembly:
    def __init__(self, msg_id: int) -> None:
        self.msg_id = msg_id
        self.fragments: dict[int, dict[int, bytes]] = {}
        self.last_fragment: dict[int, int] = {}
        self.completed_at: dict[int, tuple[float, float]] = {}
        self.next_chunk = 0
        self.begun = False
        self.ended = False
        self.aborted = False


class MessageReceiver:
    """Turns received frames (Spinel) or bytes (wuart) into begin/chunk/end/abort events.

    Chunks are emitted in order: chunk k is reported once it and every chunk
    before it are complete, with the time its last missing fragment arrived.
    Duplicated fragments (retransmissions whose ACK was lost) are ignored.
    ``src`` restricts Spinel reception to one sender's short address.
    """

    def __init__(self, radio: Radio, *, src: int | None = None) -> None:
        self.radio = radio
        self.src = src
        self._events: deque[MessageEvent] = deque()
        self._current: _Assembly | None = None
        self._wuart = wuart.WuartDecoder() if isinstance(radio, WuartRadio) else None
        self.ignored_frames = 0
        self.duplicate_fragments = 0

    def recv(self, timeout: float | None = None) -> MessageEvent | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            frame = self.radio.recv_frame(remaining)
            if frame is None:
                if deadline is None:
                    continue
                return None
            if self._wuart is not None:
                for wf in self._wuart.feed(frame.psdu):
                    self._handle(self._wuart_kind(wf.type), wf.flags, wf.image_seq, wf.chunk_index,
                                 wf.fragment_index, wf.payload, frame)
            else:
                self._handle_mac(frame)
        return self._events.popleft()

    @property
    def wuart_decoder(self) -> wuart.WuartDecoder | None:
        return self._wuart

    @staticmethod
    def _wuart_kind(t: wuart.FrameType) -> int:
        return {wuart.FrameType.DATA: KIND_DATA, wuart.FrameType.BEGIN: KIND_BEGIN,
                wuart.FrameType.END: KIND_END, wuart.FrameType.ABORT: KIND_ABORT}[t]

    def _handle_mac(self, frame: RxFrame) -> None:
        try:
            header = phy.parse_mac_header(frame.psdu)
        except phy.MacParseError:
            self.ignored_frames += 1
            return
        if header.frame_type != phy.FRAME_TYPE_DATA or (self.src is not None and header.src_addr != self.src):
            self.ignored_frames += 1
            return
        body = phy.mac_payload(frame.psdu, header)
        if len(body) < FRAGMENT_HEADER_LEN:
            self.ignored_frames += 1
            return
        kind_flags, msg_id, chunk, frag = FRAGMENT_HEADER.unpack_from(body)
        kind = kind_flags >> 4
        if kind not in (KIND_DATA, KIND_BEGIN, KIND_END, KIND_ABORT):
            self.ignored_frames += 1
            return
        self._handle(kind, kind_flags & 0xF, msg_id, chunk, frag, body[FRAGMENT_HEADER_LEN:], frame)

    def _assembly(self, msg_id: int, frame: RxFrame, *, announce: bool) -> _Assembly:
        cur = self._current
        if cur is None or cur.msg_id != msg_id:
            cur = self._current = _Assembly(msg_id)
        if announce and not cur.begun:
            cur.begun = True
            self._events.append(MessageEvent("begin", msg_id, frame.t_monotonic, frame.t_wall,
                                             rssi=frame.rssi, lqi=frame.lqi))
        return cur

    def _handle(self, kind: int, flags: int, msg_id: int, chunk: int, frag: int, payload: bytes,
                frame: RxFrame) -> None:
        if kind == KIND_BEGIN:
            cur = self._current
            if cur is not None and cur.msg_id == msg_id and cur.begun:
                return  # duplicate BEGIN
            cur = self._current = _Assembly(msg_id)
            cur.begun = True
            count, total = struct.unpack_from("<HI", payload.ljust(6, b"\0"))
            self._events.append(MessageEvent("begin", msg_id, frame.t_monotonic, frame.t_wall, chunk_count=count,
                                             total_bytes=total, rssi=frame.rssi, lqi=frame.lqi))
            return
        cur = self._assembly(msg_id, frame, announce=True)
        if kind == KIND_DATA:
            if cur.ended or cur.aborted or chunk < cur.next_chunk:
                self.duplicate_fragments += 1
                return
            frags = cur.fragments.setdefault(chunk, {})
            if frag in frags:
                self.duplicate_fragments += 1
                return
            frags[frag] = payload
            if flags & FLAG_LAST_FRAGMENT:
                cur.last_fragment[chunk] = frag
            last = cur.last_fragment.get(chunk)
            if last is not None and len(frags) == last + 1 and chunk not in cur.completed_at:
                cur.completed_at[chunk] = (frame.t_monotonic, frame.t_wall)
            while cur.next_chunk in cur.completed_at:
                index = cur.next_chunk
                parts = cur.fragments.pop(index)
                t_mono, t_wall = cur.completed_at.pop(index)
                data = b"".join(parts[i] for i in range(len(parts)))
                self._events.append(MessageEvent("chunk", msg_id, t_mono, t_wall, chunk_index=index, data=data,
                                                 rssi=frame.rssi, lqi=frame.lqi))
                cur.next_chunk += 1
        elif kind == KIND_END:
            if not cur.ended and not cur.aborted:
                cur.ended = True
                (count,) = struct.unpack_from("<H", payload.ljust(2, b"\0"))
                self._events.append(MessageEvent("end", msg_id, frame.t_monotonic, frame.t_wall, chunk_count=count))
        elif kind == KIND_ABORT:
            if not cur.aborted and not cur.ended:
                cur.aborted = True
                (count,) = struct.unpack_from("<H", payload.ljust(2, b"\0"))
                self._events.append(MessageEvent("abort", msg_id, frame.t_monotonic, frame.t_wall, chunk_count=count))

    def receive_message(self, timeout: float, msg_id: int | None = None) -> ReceivedMessage | None:
        """Collect one message until END/ABORT or ``timeout`` seconds; None if nothing began."""
        deadline = time.monotonic() + timeout
        msg: ReceivedMessage | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if msg is not None:
                    msg.timed_out = True
                return msg
            ev = self.recv(remaining)
            if ev is None:
                continue
            if msg_id is not None and ev.msg_id != (msg_id & (0xFF if isinstance(self.radio, SpinelRadio)
                                                                 else 0xFFFF)):
                continue
            if msg is None or msg.msg_id != ev.msg_id:
                if ev.kind != "begin" and msg is not None:
                    continue
                msg = ReceivedMessage(ev.msg_id)
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
                msg.t_finish = ev.t_monotonic
                return msg
