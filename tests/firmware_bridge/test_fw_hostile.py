"""Hostile input on the radio path: fragment sequences the sender never produces,
truncated Wireless UART frames, and many concurrent senders on one edge radio.

Why: the edge's radio thread ends on the first exception out of
``MessageReceiver.recv``; one malformed (but CRC-valid) sequence used to
take the edge's radio link down for the rest of a run.
"""

from __future__ import annotations

import struct
from collections import deque

from hilbed.firmware_bridge import phy, wuart
from hilbed.firmware_bridge.message import (
    FLAG_LAST_FRAGMENT,
    FRAGMENT_HEADER,
    KIND_BEGIN,
    KIND_DATA,
    KIND_END,
    MessageEvent,
    MessageReceiver,
    ReceiverLimits,
)
from hilbed.firmware_bridge.radio import RxFrame, WuartRadio

PAN = 0x2024
EDGE = 0x0100


class FakeMacRadio:
    """Stands in for a SpinelRadio: hands out queued PSDUs (no serial port)."""

    protocol = "spinel"

    def __init__(self) -> None:
        self.queue: deque[RxFrame] = deque()
        self._seq = 0

    def frag(self, kind: int, flags: int, msg_id: int, chunk: int, frag: int, payload: bytes = b"",
             src: int = 0x0001) -> None:
        self._seq = (self._seq + 1) & 0xFF
        body = FRAGMENT_HEADER.pack((kind << 4) | flags, msg_id & 0xFF, chunk, frag) + payload
        self.queue.append(RxFrame(phy.build_data_frame(self._seq, PAN, EDGE, src, body), rssi=-50, lqi=255,
                                  t_monotonic=1.0, t_wall=2.0))

    def message(self, msg_id: int, chunks: list[bytes], src: int = 0x0001, *, end: bool = True) -> None:
        self.frag(KIND_BEGIN, 0, msg_id, 0, 0, struct.pack("<HI", len(chunks), sum(map(len, chunks))), src)
        for c, data in enumerate(chunks):
            pieces = [data[i:i + 110] for i in range(0, len(data), 110)] or [b""]
            for i, p in enumerate(pieces):
                self.frag(KIND_DATA, FLAG_LAST_FRAGMENT if i == len(pieces) - 1 else 0, msg_id, c, i, p, src)
        if end:
            self.frag(KIND_END, 0, msg_id, len(chunks), 0, struct.pack("<H", len(chunks)), src)

    def recv_frame(self, timeout: float | None = None) -> RxFrame | None:
        return self.queue.popleft() if self.queue else None


class FakeWuartRadio(WuartRadio):
    """A WuartRadio whose 'UART' is a list of byte strings."""

    def __init__(self, pieces: list[bytes]) -> None:  # no serial port
        self.pieces = deque(pieces)

    def recv_frame(self, timeout: float | None = None) -> RxFrame | None:
        return RxFrame(self.pieces.popleft(), t_monotonic=1.0, t_wall=2.0) if self.pieces else None


def drain(rx: MessageReceiver) -> list[MessageEvent]:
    out = []
    while (ev := rx.recv(0.01)) is not None:
        out.append(ev)
    return out


# --- bug 1: KeyError on BEGIN + frag 5 + frag 1 (LAST) ------------------------------

def test_gap_then_early_last_closes_message_and_next_message_arrives() -> None:
    radio = FakeMacRadio()
    radio.frag(KIND_BEGIN, 0, 9, 0, 0, struct.pack("<HI", 1, 300))
    radio.frag(KIND_DATA, 0, 9, 0, 5, b"x" * 110)
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 9, 0, 1, b"y" * 110)
    radio.message(10, [b"hello", b"world" * 30])
    rx = MessageReceiver(radio)  # type: ignore[arg-type]
    events = drain(rx)  # used to raise KeyError: 0
    first = [e for e in events if e.msg_id == 9]
    assert [e.kind for e in first] == ["begin", "abort"]
    assert first[-1].reason == "bad_sequence" and first[-1].chunk_count == 0
    second = [e for e in events if e.msg_id == 10]
    assert [e.kind for e in second] == ["begin", "chunk", "chunk", "end"]
    assert [e.data for e in second if e.kind == "chunk"] == [b"hello", b"world" * 30]
    assert rx.stats.bad_sequences == 1
    assert rx.stats.dropped_fragments == 2  # frag 5 (held) and frag 1 (contradicts it)
    assert rx.stats.pending_fragments == 0


def test_receive_message_returns_closed_incomplete_message() -> None:
    radio = FakeMacRadio()
    radio.frag(KIND_BEGIN, 0, 9, 0, 0, struct.pack("<HI", 2, 300))
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 9, 0, 0, b"first")
    radio.frag(KIND_DATA, 0, 9, 1, 5, b"x")
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 9, 1, 1, b"y")
    radio.message(10, [b"ok"])
    rx = MessageReceiver(radio)  # type: ignore[arg-type]
    msg = rx.receive_message(0.5)
    assert msg is not None and msg.msg_id == 9
    assert msg.aborted and not msg.complete and msg.chunks == [b"first"]
    assert msg.close_reason == "bad_sequence"
    nxt = rx.receive_message(0.5)
    assert nxt is not None and nxt.msg_id == 10 and nxt.complete and nxt.chunks == [b"ok"]


# --- bug 2: a truncated wuart frame holds back the END behind it ------------------------

def test_truncated_wuart_frame_does_not_hold_back_end() -> None:
    data = wuart.chunk_frames(3, 0, bytes(range(64)))[0].encode()
    end = wuart.end_frame(3, 1).encode()
    d = wuart.WuartDecoder()
    out = d.feed(data[:30] + end)  # a radio frame with the rest of DATA was lost for good
    assert [f.type for f in out] == [wuart.FrameType.END]
    assert d.truncated == 1
    assert d.pending_bytes == 0
    assert d.garbage_bytes == 30


def test_truncated_wuart_header_before_end_through_receiver() -> None:
    begin = wuart.begin_frame(3, 2, 70).encode()
    c0 = wuart.chunk_frames(3, 0, b"a" * 6)[0].encode()
    c1 = wuart.chunk_frames(3, 1, b"b" * 64)[0].encode()
    end = wuart.end_frame(3, 2).encode()
    radio = FakeWuartRadio([begin + c0 + c1[:7], end])
    rx = MessageReceiver(radio)
    events = drain(rx)
    assert [e.kind for e in events] == ["begin", "chunk", "end"]
    assert rx.wuart_decoder is not None and rx.wuart_decoder.truncated == 1


# --- the receiver survives any fragment sequence and counts what it dropped --------------

def balanced(rx: MessageReceiver) -> bool:
    st = rx.stats
    return st.data_fragments == (st.delivered_fragments + st.duplicate_fragments + st.dropped_fragments
                                 + st.pending_fragments)


def feed_all(radio: FakeMacRadio, rx: MessageReceiver) -> list[MessageEvent]:
    while radio.queue:
        rx.feed(radio.queue.popleft())
    return rx.pop_events()


def test_last_before_begin_and_gaps_are_buffered_then_delivered() -> None:
    radio = FakeMacRadio()
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 4, 1, 0, b"B")  # chunk 1 before chunk 0, before BEGIN
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 4, 0, 2, b"c")
    radio.frag(KIND_DATA, 0, 4, 0, 0, b"a")
    radio.frag(KIND_DATA, 0, 4, 0, 0, b"a")  # duplicate
    radio.frag(KIND_DATA, 0, 4, 0, 1, b"b")
    radio.frag(KIND_DATA, 0, 4, 0, 1, b"b")  # duplicate of a delivered chunk's fragment
    radio.frag(KIND_END, 0, 4, 2, 0, struct.pack("<H", 2))
    rx = MessageReceiver(None, protocol="spinel")
    events = feed_all(radio, rx)
    assert [e.kind for e in events] == ["begin", "chunk", "chunk", "end"]
    assert [e.data for e in events if e.kind == "chunk"] == [b"abc", b"B"]
    assert events[0].chunk_count is None and events[0].src == 0x0001
    assert rx.stats.duplicate_fragments == 2 and rx.stats.dropped_fragments == 0
    assert balanced(rx) and rx.stats.pending_fragments == 0


def test_end_with_holes_drops_the_held_fragments() -> None:
    radio = FakeMacRadio()
    radio.frag(KIND_BEGIN, 0, 4, 0, 0, struct.pack("<HI", 3, 300))
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 4, 0, 0, b"a")
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 4, 2, 0, b"c")  # chunk 1 never comes
    radio.frag(KIND_END, 0, 4, 3, 0, struct.pack("<H", 3))
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 4, 1, 0, b"b")  # too late: the message is closed
    radio.frag(KIND_END, 0, 4, 3, 0, struct.pack("<H", 3))  # repeated END (lost ACK)
    rx = MessageReceiver(None, protocol="spinel")
    events = feed_all(radio, rx)
    assert [e.kind for e in events] == ["begin", "chunk", "end"]
    assert rx.stats.dropped_fragments == 2 and rx.stats.duplicate_control == 1
    assert balanced(rx)


def test_contradictions_close_the_message() -> None:
    cases = {
        "chunk beyond BEGIN's count": [(KIND_DATA, FLAG_LAST_FRAGMENT, 2, 0, b"x")],
        "second LAST": [(KIND_DATA, FLAG_LAST_FRAGMENT, 0, 3, b"x"), (KIND_DATA, FLAG_LAST_FRAGMENT, 0, 1, b"y")],
        "fragment beyond LAST": [(KIND_DATA, FLAG_LAST_FRAGMENT, 0, 1, b"x"), (KIND_DATA, 0, 0, 2, b"y")],
        "more bytes than announced": [(KIND_DATA, 0, 0, 0, b"x" * 60), (KIND_DATA, 0, 0, 1, b"x" * 60)],
    }
    for what, frags in cases.items():
        radio = FakeMacRadio()
        radio.frag(KIND_BEGIN, 0, 1, 0, 0, struct.pack("<HI", 2, 100))
        for kind, flags, chunk, frag, payload in frags:
            radio.frag(kind, flags, 1, chunk, frag, payload)
        radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 1, 0, 0, b"late")
        rx = MessageReceiver(None, protocol="spinel")
        events = feed_all(radio, rx)
        assert [(e.kind, e.reason) for e in events] == [("begin", None), ("abort", "bad_sequence")], what
        assert rx.stats.bad_sequences == 1 and balanced(rx), what
        assert rx.stats.dropped_fragments == len(frags) + 1, what


def test_limits_bound_what_one_message_can_hold() -> None:
    limits = ReceiverLimits(max_fragment_index=7, max_buffered_fragments=4, max_buffered_bytes=1000,
                            max_message_bytes=10_000)
    radio = FakeMacRadio()
    radio.frag(KIND_BEGIN, 0, 1, 0, 0, struct.pack("<HI", 1, 10_001))  # refused: announces too much
    radio.frag(KIND_DATA, 0, 2, 0, 8, b"x")  # fragment index over the limit
    for i in range(1, 6):  # holes at fragment 0: the fifth held fragment is over the limit
        radio.frag(KIND_DATA, 0, 3, 0, i, b"y")
    rx = MessageReceiver(None, protocol="spinel", limits=limits)
    events = feed_all(radio, rx)
    assert [(e.msg_id, e.kind, e.reason) for e in events if e.kind == "abort"] == [
        (1, "abort", "over_limit"), (2, "abort", "over_limit"), (3, "abort", "over_limit")]
    assert rx.stats.over_limit == 3 and rx.stats.dropped_fragments == 1 + 5
    assert balanced(rx)


def test_assemblies_per_source_address() -> None:
    radio = FakeMacRadio()
    # two clients interleave messages that happen to share a message id
    radio.frag(KIND_BEGIN, 0, 7, 0, 0, struct.pack("<HI", 1, 3), src=0x11)
    radio.frag(KIND_BEGIN, 0, 7, 0, 0, struct.pack("<HI", 1, 3), src=0x22)
    radio.frag(KIND_DATA, 0, 7, 0, 0, b"a", src=0x11)
    radio.frag(KIND_DATA, 0, 7, 0, 0, b"A", src=0x22)
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 7, 0, 1, b"BC", src=0x22)
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 7, 0, 1, b"bc", src=0x11)
    radio.frag(KIND_END, 0, 7, 1, 0, struct.pack("<H", 1), src=0x11)
    radio.frag(KIND_END, 0, 7, 1, 0, struct.pack("<H", 1), src=0x22)
    rx = MessageReceiver(None, protocol="spinel")
    events = feed_all(radio, rx)
    chunks = {(e.src, e.msg_id): e.data for e in events if e.kind == "chunk"}
    assert chunks == {(0x11, 7): b"abc", (0x22, 7): b"ABC"}
    assert [e.kind for e in events if e.src == 0x11] == ["begin", "chunk", "end"]
    assert rx.stats.duplicate_fragments == 0 and balanced(rx)


def test_new_begin_supersedes_and_too_many_sources_evict_the_oldest() -> None:
    radio = FakeMacRadio()
    radio.frag(KIND_BEGIN, 0, 1, 0, 0, struct.pack("<HI", 2, 6))
    radio.frag(KIND_DATA, FLAG_LAST_FRAGMENT, 1, 0, 0, b"abc")
    radio.frag(KIND_DATA, 0, 1, 1, 0, b"d")  # held; the ABORT that followed was lost
    radio.message(2, [b"next"])
    for src in (0x30, 0x31, 0x32):  # third concurrent sender evicts the least recently active one
        radio.frag(KIND_DATA, 0, 5, 0, 0, b"z", src=src)
    rx = MessageReceiver(None, protocol="spinel", limits=ReceiverLimits(max_assemblies=2))
    events = feed_all(radio, rx)
    assert [(e.msg_id, e.kind, e.reason) for e in events if e.src == 0x0001] == [
        (1, "begin", None), (1, "chunk", None), (1, "abort", "superseded"),
        (2, "begin", None), (2, "chunk", None), (2, "end", None)]
    aborted = [e for e in events if e.kind == "abort" and e.reason == "evicted"]
    assert [e.src for e in aborted] == [0x30]
    assert rx.stats.superseded_assemblies == 1 and rx.stats.evicted_assemblies == 1
    assert rx.stats.open_assemblies == 2 and rx.stats.pending_fragments == 2
    assert rx.stats.dropped_fragments == 2 and balanced(rx)
    assert rx.counters()["evicted_assemblies"] == 1


def test_counters_include_the_wuart_decoder() -> None:
    radio = FakeWuartRadio([b"noise" + wuart.begin_frame(1, 0, 0).encode() + wuart.end_frame(1, 0).encode()])
    rx = MessageReceiver(radio)
    assert [e.kind for e in drain(rx)] == ["begin", "end"]
    c = rx.counters()
    assert c["wuart_garbage_bytes"] == 5 and c["wuart_frames_ok"] == 2 and c["messages_ended"] == 1
