"""hilbed framing over the Wireless UART byte stream: layout, round trip, resync."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hilbed.firmware_bridge import wuart
from hilbed.firmware_bridge.wuart import FrameType, WuartDecoder, WuartFrame


def test_crc_check_value() -> None:
    assert wuart.crc16_ccitt(b"123456789") == 0x29B1


def test_frame_layout_by_hand() -> None:
    f = WuartFrame(FrameType.DATA, image_seq=0x0102, chunk_index=3, fragment_index=4, payload=b"AB",
                   flags=wuart.FLAG_LAST_FRAGMENT)
    body = bytes([0x48, 0x62, 0x11, 0x02, 0x01, 0x03, 0x00, 0x04, 0x00, 0x02]) + b"AB"
    assert f.encode() == body + struct.pack("<H", wuart.crc16_ccitt(body))
    assert len(f.encode()) == wuart.HEADER_LEN + 2 + wuart.CRC_LEN


def test_payload_limit() -> None:
    with pytest.raises(ValueError):
        WuartFrame(FrameType.DATA, 1, payload=bytes(65)).encode()
    frames = wuart.chunk_frames(9, 2, bytes(range(200)))
    assert [len(f.payload) for f in frames] == [64, 64, 64, 8]
    assert [f.last_fragment for f in frames] == [False, False, False, True]
    assert b"".join(f.payload for f in frames) == bytes(range(200))


def test_control_frames_round_trip() -> None:
    stream = (wuart.begin_frame(7, 4, 3000).encode() + wuart.end_frame(7, 4).encode()
              + wuart.abort_frame(8, 2).encode())
    frames = WuartDecoder().feed(stream)
    assert [f.type for f in frames] == [FrameType.BEGIN, FrameType.END, FrameType.ABORT]
    assert frames[0].begin_info() == (4, 3000)
    assert frames[1].count() == 4
    assert (frames[2].image_seq, frames[2].count()) == (8, 2)


def test_resync_after_garbage_and_corruption() -> None:
    good = wuart.chunk_frames(1, 0, b"x" * 100)
    stream = bytearray(b"\x00garbage Hb\xff")  # contains a bogus magic with an impossible header
    stream += good[0].encode()
    corrupt = bytearray(good[1].encode())
    corrupt[12] ^= 0x40
    stream += corrupt
    stream += good[1].encode()
    d = WuartDecoder()
    out = d.feed(bytes(stream[:7])) + d.feed(bytes(stream[7:]))
    assert out == [good[0], good[1]]
    assert d.bad_crc == 1
    assert d.bad_header >= 1
    assert d.garbage_bytes >= len(corrupt)


def test_truncated_frame_waits_for_more() -> None:
    raw = wuart.chunk_frames(1, 0, b"abc")[0].encode()
    d = WuartDecoder()
    assert d.feed(raw[:-1]) == []
    assert d.pending_bytes == len(raw) - 1
    assert d.feed(raw[-1:]) == [WuartFrame(FrameType.DATA, 1, 0, 0, b"abc", wuart.FLAG_LAST_FRAGMENT)]


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(st.binary(max_size=150), min_size=1, max_size=5),
       noise=st.lists(st.binary(max_size=30).filter(lambda b: b"Hb" not in b), min_size=6, max_size=6),
       split=st.integers(1, 50))
def test_property_round_trip_with_noise(chunks: list[bytes], noise: list[bytes], split: int) -> None:
    frames = [f for i, c in enumerate(chunks) for f in wuart.chunk_frames(42, i, c)]
    stream = bytearray()
    for i, f in enumerate(frames):
        stream += noise[i % len(noise)] + f.encode()
    d = WuartDecoder()
    got: list[WuartFrame] = []
    for i in range(0, len(stream), split):
        got += d.feed(bytes(stream[i:i + split]))
    assert got == frames
    rebuilt: dict[int, bytes] = {}
    for f in got:
        rebuilt[f.chunk_index] = rebuilt.get(f.chunk_index, b"") + f.payload
    assert [rebuilt[i] for i in range(len(chunks))] == chunks


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_property_random_bytes_never_crash(data: bytes) -> None:
    d = WuartDecoder()
    for f in d.feed(data):
        assert len(f.payload) <= wuart.MAX_PAYLOAD
    assert d.garbage_bytes + d.pending_bytes <= len(data)


def _frame_with_crc_high_byte(value: int) -> bytes:
    for i in range(1 << 16):
        raw = WuartFrame(FrameType.DATA, 5, 0, 0, struct.pack("<I", i)).encode()
        if raw[-1] == value:
            return raw
    raise AssertionError("unreachable")


def _accounted(d: WuartDecoder, fed: int, got: list[WuartFrame]) -> bool:
    return fed + d.reused_bytes == sum(len(f.encode()) for f in got) + d.garbage_bytes + d.pending_bytes


def test_frame_cut_by_one_byte_does_not_swallow_the_next() -> None:
    """F lost its last byte; the next frame's 'H' happens to equal it, so F's CRC checks.

    Whatever the read boundaries, the next frame G must come out, and promptly.
    """
    f = _frame_with_crc_high_byte(ord("H"))
    g = wuart.end_frame(5, 1).encode()
    stream = f[:-1] + g
    # everything in one read: F and G are both valid and overlap; G (the inner one) is kept
    d = WuartDecoder()
    got = d.feed(stream)
    assert got == [WuartDecoder().feed(g)[0]] and d.overlapped == 1 and _accounted(d, len(stream), got)
    # F completes before G has arrived: F is emitted at once, the scan resumes at its last byte
    d = WuartDecoder()
    first = d.feed(stream[:len(f)])
    assert [x.type for x in first] == [FrameType.DATA] and d.pending_bytes == 1
    second = d.feed(stream[len(f):])
    assert [x.type for x in second] == [FrameType.END]
    assert _accounted(d, len(stream), first + second)


def test_spurious_header_before_a_frame_does_not_swallow_it() -> None:
    """A garbage header whose length covers the next real frame: the frame still comes out when complete."""
    g = wuart.end_frame(9, 3).encode()
    junk = b"Hb\x41" + bytes(6) + b"\x30"  # plausible ABORT header announcing 48 bytes
    d = WuartDecoder()
    assert d.feed(junk) == []
    out = d.feed(g)
    assert [x.type for x in out] == [FrameType.END] and d.truncated == 1
    assert _accounted(d, len(junk) + len(g), out)


def test_flush_gives_up_on_a_pending_frame() -> None:
    g = wuart.end_frame(9, 3).encode()
    d = WuartDecoder()
    assert d.feed(g[:-3]) == []
    assert d.flush() == [] and d.pending_bytes == 0 and d.truncated == 1
    assert d.garbage_bytes == len(g) - 3
