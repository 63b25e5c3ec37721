"""Seeded serial fuzzer for the radio path: HDLC-Lite, Spinel, Wireless UART, MessageReceiver.

Why: everything these decoders read comes from a device or the air, so no
input may raise, every bad byte must be counted, and a valid frame after
any garbage must still come out (resync).  One generator serves the
regression tests (``tests/firmware_bridge/test_serial_fuzz.py``, small and
seeded) and ``benchmarks/serial_fuzz.py`` (``--bytes 1000000``).

Each ``fuzz_*`` function builds a seeded stream, feeds it in random-sized
pieces (so frames straddle ``feed`` calls at every offset), checks the
decoder's counters against what was planted and returns a
:class:`FuzzResult`.  Streams mix pure random runs, bursts of the
framing's special bytes, clean frames (planted: they must be decoded),
frames with flipped/inserted/deleted bytes, truncated frames and, for
Spinel and the receiver, well-framed but semantically hostile content.
"""

from __future__ import annotations

import random
import struct
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import hdlc, phy, spinel, wuart
from .message import (
    FLAG_LAST_FRAGMENT,
    FRAGMENT_HEADER,
    FRAGMENT_PAYLOAD,
    KIND_ABORT,
    KIND_BEGIN,
    KIND_DATA,
    KIND_END,
    MessageReceiver,
)
from .radio import RxFrame

MAX_PIECE = 512


@dataclass
class FuzzResult:
    target: str
    mode: str  # "random": random bytes only; "mixed": frames, corruptions, truncations, noise
    seed: int
    bytes: int = 0
    frames_planted: int = 0  # clean frames / messages in the stream that must come out
    frames_ok: int = 0  # frames / messages the decoder accepted
    recovered: int = 0  # planted ones that came out intact, in order
    lost: int = 0  # planted ones that never came out
    bad: int = 0  # bad input the decoder counted (frames, headers, sequences)
    garbage_bytes: int = 0
    exceptions: int = 0
    seconds: float = 0.0
    late: int = 0  # planted frames not emitted by the feed() call that delivered their last byte
    accounting_ok: bool = True  # the decoder's byte/fragment conservation law held
    counters: dict[str, Any] = field(default_factory=dict)
    first_exception: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def guard(self, fn: Callable[[], Any]) -> Any:
        """Run one decoder call; an escaping exception is counted (and the first one kept)."""
        try:
            return fn()
        except Exception:
            self.exceptions += 1
            if self.first_exception is None:
                self.first_exception = traceback.format_exc(limit=6)
            return None


# --- stream building -------------------------------------------------------------------

def mutate(rng: random.Random, frame: bytes) -> bytes:
    """One or more random corruptions of ``frame`` (never returns it unchanged)."""
    b = bytearray(frame)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(6)
        if not b:
            b += rng.randbytes(rng.randint(1, 8))
            continue
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.randrange(256)
        elif op == 2:
            del b[i:i + rng.randint(1, 4)]
        elif op == 3:
            b[i:i] = rng.randbytes(rng.randint(1, 6))
        elif op == 4:
            del b[rng.randint(1, len(b)):]  # truncate
        else:
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randint(1, 8)]  # repeat a slice
    if bytes(b) == frame:
        b.append(rng.randrange(256))
    return bytes(b)


def pieces(rng: random.Random, data: bytes, max_piece: int = MAX_PIECE) -> list[bytes]:
    """Split ``data`` into random-sized reads, as a UART driver hands them over."""
    out = []
    i = 0
    while i < len(data):
        n = rng.randint(1, max_piece) if rng.random() < 0.8 else rng.randint(1, 8)
        out.append(data[i:i + n])
        i += n
    return out


def noise(rng: random.Random, specials: bytes) -> bytes:
    """Random bytes, a burst of the framing's special bytes, or a long run without them."""
    r = rng.random()
    if r < 0.65:
        return rng.randbytes(rng.randint(1, 120))
    if r < 0.97:
        return bytes(rng.choice(specials) for _ in range(rng.randint(1, 12)))
    allowed = bytes(sorted(set(range(256)) - set(specials)))  # e.g. an HDLC frame overrunning max_frame
    return bytes(rng.choice(allowed) for _ in range(rng.randint(500, 4500)))


def build_stream(rng: random.Random, n_bytes: int, make_clean: Callable[[], tuple[bytes, Any]],
                 make_bad: Callable[[], bytes], specials: bytes) -> tuple[bytes, list[tuple[Any, int]]]:
    """About ``n_bytes`` of clean frames, corrupted/truncated frames and noise.

    Returns the stream and the planted frames as (value, offset just past the frame).
    """
    out = bytearray()
    planted: list[tuple[Any, int]] = []
    while len(out) < n_bytes:
        r = rng.random()
        if r < 0.35:
            raw, value = make_clean()
            out += raw
            planted.append((value, len(out)))
        elif r < 0.55:
            out += mutate(rng, make_clean()[0])
        elif r < 0.65:
            raw = make_clean()[0]
            out += raw[:rng.randrange(1, len(raw))]
        elif r < 0.75:
            out += make_bad()
        else:
            out += noise(rng, specials)
    return bytes(out), planted


class _Tracker:
    """Matches decoded frames against the planted ones, in order, as they come out.

    A planted frame counts as ``late`` if the ``feed`` call that delivered its
    last byte did not emit it (the decoder held it back, waiting for bytes
    that belong to something else).
    """

    def __init__(self, planted: list[tuple[Any, int]]) -> None:
        self.planted = planted
        self.matched = 0
        self.next = 0
        self.fed = 0
        self.late: set[int] = set()

    WINDOW = 64  # a decoded frame is looked for this far ahead among the planted ones

    def step(self, n_fed: int, got: list[Any]) -> None:
        self.fed += n_fed
        for g in got:
            for i in range(self.next, min(len(self.planted), self.next + self.WINDOW)):
                if g == self.planted[i][0]:
                    self.matched += 1
                    self.next = i + 1  # planted frames skipped over were lost
                    break
        i = self.next
        while i < len(self.planted) and self.planted[i][1] <= self.fed:
            self.late.add(i)
            i += 1

    def finish(self, res: FuzzResult) -> None:
        res.frames_planted = len(self.planted)
        res.recovered = self.matched
        res.lost = len(self.planted) - self.matched
        res.late = len(self.late)


def _feed_all(res: FuzzResult, rng: random.Random, stream: bytes, planted: list[tuple[Any, int]],
              feed: Callable[[bytes], Any]) -> list[Any]:
    track = _Tracker(planted)
    got_all: list[Any] = []
    t0 = time.perf_counter()
    for piece in pieces(rng, stream):
        got = res.guard(lambda p=piece: feed(p)) or []
        track.step(len(piece), got)
        got_all += got
    res.seconds = time.perf_counter() - t0
    res.bytes = len(stream)
    track.finish(res)
    return got_all


# --- HDLC-Lite ----------------------------------------------------------------------------

def fuzz_hdlc(n_bytes: int, seed: int = 1, mode: str = "mixed") -> FuzzResult:
    rng = random.Random(seed)
    res = FuzzResult("hdlc", mode, seed)
    if mode == "random":
        stream, planted = rng.randbytes(n_bytes), []
    else:
        serial = iter(range(1 << 32))

        def clean() -> tuple[bytes, bytes]:  # a numbered payload, so that planted frames are unique
            p = struct.pack("<I", next(serial)) + rng.randbytes(rng.choice((1, 36, 126, 296)))
            return hdlc.encode(p), p

        def bad() -> bytes:  # abort sequence, empty/tiny frames, now and then an over-long frame
            if rng.random() < 0.1:
                return b"\x7e" + bytes(rng.randrange(0x7e) for _ in range(4200)) + b"\x7e"
            return rng.choice((b"\x7e" + rng.randbytes(10) + b"\x7d\x7e", b"\x7e\x7e", b"\x7e\x7d",
                               hdlc.encode(rng.randbytes(1)), hdlc.encode(b""), b"\x7e\x01\x02\x7e"))
        stream, planted = build_stream(rng, n_bytes, clean, bad, bytes(hdlc.ESCAPED_BYTES))
    d = hdlc.HdlcDecoder()
    _feed_all(res, rng, stream, planted, d.feed)
    res.frames_ok = d.frames_ok
    res.bad = d.bad_frames
    res.garbage_bytes = d.garbage_bytes
    res.accounting_ok = len(stream) == d.flags_seen + d.frame_bytes + d.garbage_bytes + d.pending_bytes
    res.counters = {"frames_ok": d.frames_ok, "bad_fcs": d.bad_fcs, "too_short": d.too_short,
                    "overruns": d.overruns, "flags_seen": d.flags_seen, "frame_bytes": d.frame_bytes,
                    "pending_bytes": d.pending_bytes}
    return res


# --- Wireless UART ------------------------------------------------------------------------

def _random_wuart_frame(rng: random.Random) -> wuart.WuartFrame:
    t = rng.choice(list(wuart.FrameType))
    n = rng.choice((0, 2, 6, 17, 64)) if t is wuart.FrameType.DATA else rng.choice((2, 6))
    return wuart.WuartFrame(t, rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randrange(1 << 16),
                            rng.randbytes(n), rng.randrange(16))


def fuzz_wuart(n_bytes: int, seed: int = 1, mode: str = "mixed") -> FuzzResult:
    rng = random.Random(seed)
    res = FuzzResult("wuart", mode, seed)
    if mode == "random":
        stream, planted = rng.randbytes(n_bytes), []
    else:
        def clean() -> tuple[bytes, wuart.WuartFrame]:
            f = _random_wuart_frame(rng)
            return f.encode(), f

        def bad() -> bytes:  # magic with impossible headers, or a header promising more than follows
            return rng.choice((b"Hb" + bytes((rng.choice((0x00, 0x50, 0xF1)),)) + rng.randbytes(6) + b"\xff",
                               b"Hb\x10" + rng.randbytes(6) + b"\x40" + rng.randbytes(rng.randrange(20)),
                               b"HbHbHb"))
        stream, planted = build_stream(rng, n_bytes, clean, bad, b"Hb")
    d = wuart.WuartDecoder()
    got = _feed_all(res, rng, stream, planted, d.feed)
    res.frames_ok = d.frames_ok
    res.bad = d.bad_frames
    res.garbage_bytes = d.garbage_bytes
    res.accounting_ok = (len(stream) + d.reused_bytes
                         == sum(len(f.encode()) for f in got) + d.garbage_bytes + d.pending_bytes)
    res.counters = d.counters()
    return res


# --- Spinel (through the SpinelRadio receive path) -------------------------------------------

class _NullSerial:
    """A port that never has input: the radio's reader thread idles, the fuzzer calls ``ingest``."""

    port = "fuzz"

    def __init__(self) -> None:
        self._closed = threading.Event()

    def fileno(self) -> int:
        raise OSError("no file descriptor")

    @property
    def in_waiting(self) -> int:
        return 0

    def read(self, n: int = 1) -> bytes:
        self._closed.wait(0.05)
        return b""

    def write(self, data: bytes) -> int:
        return len(data)

    def close(self) -> None:
        self._closed.set()


_SPINEL_PARSE_FORMATS = sorted(set(spinel.PROP_FORMATS.values()) | {spinel.TX_DONE_FORMAT, "dD", "t(CCX)"})


def _parse_everything(res: FuzzResult, payload: bytes) -> None:
    """Run a Spinel payload through every parser; only SpinelError is an allowed failure."""
    def attempt(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except spinel.SpinelError:
            res.counters["parser_rejects"] = res.counters.get("parser_rejects", 0) + 1
        except Exception:
            res.exceptions += 1
            if res.first_exception is None:
                res.first_exception = traceback.format_exc(limit=6)

    def frame_and_prop() -> None:
        f = spinel.SpinelFrame.decode(payload)
        f.describe()
        f.prop()

    attempt(frame_and_prop)
    body = payload[2:]
    attempt(lambda: spinel.unpack_raw_frame(body))
    for fmt in _SPINEL_PARSE_FORMATS:
        attempt(lambda f=fmt: spinel.unpack(f, body))
        attempt(lambda f=fmt: spinel.unpack(f, body, partial=True))


def _spinel_payload(rng: random.Random) -> tuple[bytes, bytes | None]:
    """A Spinel frame the RCP could send; returns (frame, PSDU if it is a received-frame report)."""
    r = rng.random()
    if r < 0.5:
        psdu = rng.randbytes(rng.randint(5, phy.MAX_PSDU))
        info = spinel.RawFrameInfo(psdu, rssi=rng.randint(-100, -20), noise_floor=-100, flags=0, channel=15,
                                   lqi=rng.randrange(256), timestamp_us=rng.randrange(1 << 40))
        return spinel.cmd_prop_is(spinel.PROP_STREAM_RAW, spinel.pack_raw_frame(info)), psdu
    if r < 0.6:
        return spinel.last_status(rng.choice((0, 17, 18, 112)), tid=0), None
    if r < 0.7:
        return spinel.cmd_prop_is(spinel.PROP_MAC_ENERGY_SCAN_RESULT, spinel.pack("Cc", 15, -60), tid=0), None
    if r < 0.8:  # a reply nobody waits for
        return spinel.cmd_prop_is(spinel.PROP_PHY_CHAN, b"\x0f", tid=rng.randint(1, 15)), None
    if r < 0.9:
        return spinel.frame(rng.randrange(spinel.PACKED_UINT_MAX), rng.randbytes(rng.randrange(30))), None
    return spinel.cmd_prop_is(rng.randrange(0x80), rng.randbytes(rng.randrange(40))), None


def fuzz_spinel(n_bytes: int, seed: int = 1, mode: str = "mixed") -> FuzzResult:
    """HDLC-framed Spinel into a real SpinelRadio's receive path (``ingest``) plus every Spinel parser."""
    from .radio import SpinelRadio

    rng = random.Random(seed)
    res = FuzzResult("spinel", mode, seed)
    if mode == "random":
        stream, planted = rng.randbytes(n_bytes), []
    else:
        def clean() -> tuple[bytes, bytes | None]:
            payload, psdu = _spinel_payload(rng)
            return hdlc.encode(payload), psdu

        def bad() -> bytes:  # well-framed (good FCS) but broken Spinel: the parser, not HDLC, must cope
            payload = mutate(rng, _spinel_payload(rng)[0])
            if rng.random() < 0.5:
                _parse_everything(res, payload)
            return hdlc.encode(payload)
        stream, planted = build_stream(rng, n_bytes, clean, bad, bytes(hdlc.ESCAPED_BYTES))
    radio = SpinelRadio(serial_instance=_NullSerial(), reset=False)  # type: ignore[arg-type]

    def feed(data: bytes) -> list[bytes]:
        radio.ingest(data)
        got = []
        while (f := radio.recv_frame(0)) is not None:
            got.append(f.psdu)
        return got
    try:
        _feed_all(res, rng, stream, [p for p in planted if p[0] is not None], feed)
    finally:
        radio.close()
    st = radio.stats
    res.frames_ok = st.frames_in
    res.bad = st.bad_frames
    res.garbage_bytes = st.garbage_bytes
    res.exceptions += st.extra.get("dispatch_errors", 0)
    res.accounting_ok = st.bytes_in == len(stream) and st.rx_dropped == 0
    res.counters.update(serial_frames_in=st.serial_frames_in, rx_frames=st.frames_in, **st.extra)
    return res


# --- MessageReceiver ------------------------------------------------------------------------

CLEAN_SOURCES = (0x0010, 0x0011, 0x0012)
HOSTILE_SOURCES = tuple(range(0x0040, 0x0048))
PAN = 0xABCD
EDGE_ADDR = 0x0100


class _MacSource:
    def __init__(self, src: int) -> None:
        self.src = src
        self.seq = 0

    def frame(self, kind: int, flags: int, msg_id: int, chunk: int, frag: int, payload: bytes) -> bytes:
        self.seq = (self.seq + 1) & 0xFF
        body = FRAGMENT_HEADER.pack(((kind & 0xF) << 4) | (flags & 0xF), msg_id & 0xFF, chunk & 0xFFFF,
                                    frag & 0xFFFF) + payload
        return phy.build_data_frame(self.seq, PAN, EDGE_ADDR, self.src, body)


def _message_frames(make: Callable[[int, int, int, int, int, bytes], Any], msg_id: int, chunks: list[bytes],
                    per_frame: int, rng: random.Random) -> list[Any]:
    """Frames of one well-formed message, with the sender's retransmissions (lost ACKs)."""
    out = [make(KIND_BEGIN, 0, msg_id, 0, 0, struct.pack("<HI", len(chunks), sum(map(len, chunks))))]
    for c, data in enumerate(chunks):
        parts = [data[i:i + per_frame] for i in range(0, len(data), per_frame)] or [b""]
        for i, p in enumerate(parts):
            f = make(KIND_DATA, FLAG_LAST_FRAGMENT if i == len(parts) - 1 else 0, msg_id, c, i, p)
            out.append(f)
            if rng.random() < 0.05:
                out.append(f)
    out.append(make(KIND_END, 0, msg_id, len(chunks), 0, struct.pack("<H", len(chunks))))
    return out


def _hostile_fields(rng: random.Random) -> tuple[int, int, int, int, bytes]:
    """Fragment header fields no sender following the protocol would combine like this."""
    kind = rng.choice((KIND_DATA,) * 8 + (KIND_BEGIN, KIND_END, KIND_ABORT, 0, 7, 15))
    flags = rng.choice((0, 0, FLAG_LAST_FRAGMENT, rng.randrange(16)))
    chunk = rng.choice((0, 0, 0, 1, 1, 2, rng.randrange(8), rng.randrange(1 << 16)))
    frag = rng.choice((0, 1, 2, 3, 5, rng.randrange(16), rng.randrange(1 << 16)))
    if kind == KIND_BEGIN:
        payload = rng.choice((struct.pack("<HI", rng.randrange(1 << 16), rng.randrange(1 << 32)),
                              struct.pack("<HI", rng.randrange(4), rng.randrange(400)), rng.randbytes(3)))
    else:
        payload = rng.randbytes(rng.choice((0, 1, 2, 50, 110)))
    return kind, flags, chunk, frag, payload


def _clean_chunks(rng: random.Random) -> list[bytes]:
    return [rng.randbytes(rng.choice((0, 30, 110, 111, 400))) for _ in range(rng.randint(1, 4))]


class _Occurrence:
    """Keys events as (src, msg id, n-th BEGIN of that pair), as the plan numbers its messages."""

    def __init__(self) -> None:
        self.count: dict[tuple[Any, int], int] = {}

    def __call__(self, ev: Any) -> tuple[Any, int, int]:
        k = (ev.src, ev.msg_id)
        if ev.kind == "begin":
            self.count[k] = self.count.get(k, 0) + 1
        return (ev.src, ev.msg_id, self.count.get(k, 0))


def _check_messages(res: FuzzResult, rx: MessageReceiver, events: list[Any],
                    planted: dict[tuple[Any, int, int], list[bytes]]) -> None:
    key = _Occurrence()
    got: dict[Any, list[bytes]] = {}
    ended: set[Any] = set()
    for ev in events:
        k = key(ev)
        if ev.kind == "begin":
            got[k] = []
        elif ev.kind == "chunk":
            got.setdefault(k, []).append(ev.data)
        elif ev.kind == "end":
            ended.add(k)
    res.frames_planted = len(planted)
    res.recovered = sum(1 for k, chunks in planted.items() if k in ended and got.get(k) == chunks)
    res.lost = res.frames_planted - res.recovered
    st = rx.stats
    res.frames_ok = st.messages_ended
    res.bad = st.bad_sequences + st.over_limit + st.ignored_frames
    res.accounting_ok = st.data_fragments == (st.delivered_fragments + st.duplicate_fragments
                                              + st.dropped_fragments + st.pending_fragments)
    res.counters = rx.counters()


def _plan(planted: dict[tuple[Any, int, int], list[bytes]], src: Any, msg_id: int, chunks: list[bytes]) -> None:
    n = 1 + sum(1 for k in planted if k[0] == src and k[1] == msg_id)
    planted[(src, msg_id, n)] = chunks


def fuzz_receiver(n_bytes: int, seed: int = 1, mode: str = "mixed") -> FuzzResult:
    """MAC frames (Spinel path): clean messages from 3 clients, interleaved with hostile fragments.

    Hostile frames come from other addresses, or from a client's address
    between its messages with message ids >= 128, which its clean messages
    never use -- anything else could legitimately break a clean message.
    Every clean message must arrive complete and intact.
    """
    rng = random.Random(seed)
    res = FuzzResult("message_receiver", mode, seed)
    rx = MessageReceiver(None, protocol="spinel")
    sources = {s: _MacSource(s) for s in CLEAN_SOURCES + HOSTILE_SOURCES}
    frames: list[bytes] = []
    planted: dict[tuple[Any, int, int], list[bytes]] = {}
    total = 0
    sticky: dict[int, int] = {}  # hostile message id per source: runs of fragments meet in one assembly

    def hostile(src_choices: tuple[int, ...]) -> bytes:
        r = rng.random()
        if r < 0.1:
            return rng.randbytes(rng.randint(0, 127))  # not a data frame at all, mostly
        src = rng.choice(src_choices)
        kind, flags, chunk, frag, payload = _hostile_fields(rng)
        if src not in sticky or rng.random() < 0.1:
            sticky[src] = rng.randrange(128, 256) if src in CLEAN_SOURCES else rng.randrange(256)
        msg_id = sticky[src]
        psdu = sources[src].frame(kind, flags, msg_id, chunk, frag, payload)
        if r < 0.2 and src not in CLEAN_SOURCES:
            psdu = mutate(rng, psdu)
        return psdu

    if mode == "random":
        while total < n_bytes:
            frames.append(rng.randbytes(rng.randint(0, 127)))
            total += len(frames[-1])
    else:
        while total < n_bytes:
            # a burst of hostile frames, some from the clients' own addresses between their messages
            for _ in range(rng.randint(0, 30)):
                frames.append(hostile(CLEAN_SOURCES + HOSTILE_SOURCES))
                total += len(frames[-1])
            # one message from each client, interleaved frame by frame, hostile frames in between
            streams = []
            for s in CLEAN_SOURCES:
                msg_id = rng.randrange(128)
                chunks = _clean_chunks(rng)
                _plan(planted, s, msg_id, chunks)
                streams.append(_message_frames(sources[s].frame, msg_id, chunks, FRAGMENT_PAYLOAD, rng))
            while any(streams):
                stream = rng.choice([x for x in streams if x])
                frames.append(stream.pop(0))
                total += len(frames[-1])
                for _ in range(rng.choice((0, 0, 1, 2, 6))):
                    frames.append(hostile(HOSTILE_SOURCES))
                    total += len(frames[-1])
    events: list[Any] = []
    t0 = time.perf_counter()
    for psdu in frames:
        res.guard(lambda p=psdu: rx.feed(RxFrame(p, t_monotonic=0.0, t_wall=0.0)))
        events += rx.pop_events()
    res.seconds = time.perf_counter() - t0
    res.bytes = total
    _check_messages(res, rx, [e for e in events if e.src in CLEAN_SOURCES and e.msg_id < 128], planted)
    return res


def fuzz_receiver_wuart(n_bytes: int, seed: int = 1, mode: str = "mixed") -> FuzzResult:
    """The wuart path: one byte stream, clean messages with noise between (and inside) them.

    Inside a message only noise and invalid frames are injected (a valid
    frame of another message would legitimately supersede it); between
    messages anything goes, with message ids the clean messages never use.
    """
    rng = random.Random(seed)
    res = FuzzResult("message_receiver_wuart", mode, seed)
    rx = MessageReceiver(None, protocol="wuart")
    planted: dict[tuple[Any, int, int], list[bytes]] = {}

    def wframe(kind: int, flags: int, msg_id: int, chunk: int, frag: int, payload: bytes) -> bytes:
        return wuart.WuartFrame(wuart.FrameType(kind), msg_id, chunk, frag, payload, flags).encode()

    def junk() -> bytes:
        r = rng.random()
        if r < 0.4:
            return rng.randbytes(rng.randint(1, 60))
        if r < 0.7:
            f = wuart.WuartFrame(wuart.FrameType.DATA, 0x8007, 0, 0, rng.randbytes(40)).encode()
            return f[:rng.randrange(1, len(f))]  # truncated
        return mutate(rng, wuart.WuartFrame(wuart.FrameType.DATA, 0x8007, 0, 0, rng.randbytes(20)).encode())

    out = bytearray()
    if mode == "random":
        out += rng.randbytes(n_bytes)
    else:
        msg_id = 0
        while len(out) < n_bytes:
            for _ in range(rng.randint(0, 6)):  # between messages: hostile frames with ids >= 0x8000
                kind, flags, chunk, frag, payload = _hostile_fields(rng)
                if kind in (KIND_DATA, KIND_BEGIN, KIND_END, KIND_ABORT):
                    out += wframe(kind, flags, 0x8000 + rng.randrange(0x8000), chunk, frag, payload[:64])
                out += junk()
            msg_id = (msg_id + 1) % 0x8000
            chunks = _clean_chunks(rng)
            _plan(planted, None, msg_id, chunks)
            for f in _message_frames(wframe, msg_id, chunks, wuart.MAX_PAYLOAD, rng):
                out += f
                if rng.random() < 0.3:
                    out += junk()
    stream = bytes(out)
    events: list[Any] = []
    t0 = time.perf_counter()
    for piece in pieces(rng, stream):
        res.guard(lambda p=piece: rx.feed(RxFrame(p, t_monotonic=0.0, t_wall=0.0)))
        events += rx.pop_events()
    res.seconds = time.perf_counter() - t0
    res.bytes = len(stream)
    res.garbage_bytes = rx.wuart_decoder.garbage_bytes if rx.wuart_decoder else 0
    _check_messages(res, rx, [e for e in events if e.msg_id < 0x8000], planted)
    if rx.wuart_decoder is not None:
        res.bad += rx.wuart_decoder.bad_frames
    return res


TARGETS: dict[str, Callable[..., FuzzResult]] = {
    "hdlc": fuzz_hdlc,
    "spinel": fuzz_spinel,
    "wuart": fuzz_wuart,
    "message_receiver": fuzz_receiver,
    "message_receiver_wuart": fuzz_receiver_wuart,
}
