"""HDLC-Lite framing: byte vectors from the spec, and a streaming decoder that survives garbage."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hilbed.firmware_bridge import hdlc


def test_fcs_is_crc16_x25_check_value() -> None:
    # CRC-16/X-25 (reflected 0x8408, init 0xFFFF, complemented) check value.
    assert hdlc.fcs16(b"123456789") == 0x906E


def test_encode_check_string_by_hand() -> None:
    # flag, payload, FCS low byte first (0x6E 0x90), flag
    assert hdlc.encode(b"123456789") == bytes.fromhex("7e 313233343536373839 6e90 7e")


def test_encode_spinel_reset_frame() -> None:
    frame = hdlc.encode(bytes([0x81, 0x01]))
    fcs = hdlc.fcs16(bytes([0x81, 0x01]))
    assert frame == bytes([0x7E, 0x81, 0x01, fcs & 0xFF, fcs >> 8, 0x7E])


def test_escaping_of_all_special_bytes() -> None:
    payload = bytes([0x7E, 0x7D, 0x11, 0x13, 0xF8, 0x20])
    encoded = hdlc.encode(payload)
    body = encoded[1:-1]
    assert body[:11] == bytes([0x7D, 0x5E, 0x7D, 0x5D, 0x7D, 0x31, 0x7D, 0x33, 0x7D, 0xD8, 0x20])
    assert 0x7E not in body
    assert hdlc.HdlcDecoder().feed(encoded) == [payload]


def test_escaped_fcs_byte() -> None:
    # Find a payload whose FCS contains a byte needing escape and check it round-trips.
    for i in range(5000):
        payload = i.to_bytes(2, "little")
        fcs = hdlc.fcs16(payload)
        if (fcs & 0xFF) in hdlc.ESCAPED_BYTES or (fcs >> 8) in hdlc.ESCAPED_BYTES:
            break
    else:  # pragma: no cover
        raise AssertionError("no such payload")
    enc = hdlc.encode(payload)
    assert enc.count(b"\x7d") >= 1
    assert hdlc.HdlcDecoder().feed(enc) == [payload]


def test_good_residue() -> None:
    payload = b"\x80\x06\x00\x70"
    fcs = hdlc.fcs16(payload)
    whole = payload + bytes((fcs & 0xFF, fcs >> 8))
    assert hdlc.fcs16_update(hdlc.FCS_INIT, whole) == hdlc.FCS_GOOD_RESIDUE


def test_decoder_counts_and_resynchronises() -> None:
    d = hdlc.HdlcDecoder()
    good = hdlc.encode(b"\x80\x06\x00\x00")
    corrupt = bytearray(hdlc.encode(b"\x80\x06\x00\x71"))
    corrupt[2] ^= 0x01  # flip a bit inside the frame
    stream = b"boot banner\r\n" + good + bytes(corrupt) + b"\x7e\x01\x7e" + good
    frames = d.feed(stream)
    assert frames == [b"\x80\x06\x00\x00"] * 2
    assert d.frames_ok == 2
    assert d.bad_fcs == 1
    assert d.too_short == 1
    assert d.garbage_bytes == len(b"boot banner\r\n") + len(corrupt) - 2 + 1


def test_decoder_byte_by_byte_and_abort_sequence() -> None:
    d = hdlc.HdlcDecoder()
    out = []
    for b in hdlc.encode(b"\x7e\x7d payload"):
        out += d.feed(bytes([b]))
    assert out == [b"\x7e\x7d payload"]
    assert d.feed(b"\x7eabc\x7d\x7e") == []  # frame ended by escape+flag: aborted
    assert d.bad_fcs == 1


def test_decoder_overrun_recovers() -> None:
    d = hdlc.HdlcDecoder(max_frame=64)
    frames = d.feed(b"\x7e" + b"A" * 500 + hdlc.encode(b"\x81\x02\x01"))
    assert frames == [b"\x81\x02\x01"]
    assert d.overruns == 1


def _raw_len(payload: bytes) -> int:
    return len(hdlc.encode(payload)) - 2


frames_st = st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=8)
garbage_st = st.binary(max_size=40)


@settings(max_examples=150, deadline=None)
@given(frames=frames_st, garbage=st.lists(garbage_st, min_size=9, max_size=9), chunk=st.integers(1, 64))
def test_property_valid_frames_recovered_amid_garbage(frames: list[bytes], garbage: list[bytes], chunk: int) -> None:
    # Garbage that happens to contain a valid frame would legitimately decode; exclude it.
    for g in garbage:
        assume(hdlc.HdlcDecoder().feed(b"\x7e" + g + b"\x7e") == [])
    stream = bytearray(garbage[0])
    for f, g in zip(frames, garbage[1:]):
        stream += hdlc.encode(f) + g
    d = hdlc.HdlcDecoder()
    got: list[bytes] = []
    for i in range(0, len(stream), chunk):
        got += d.feed(bytes(stream[i:i + chunk]))
    got += d.feed(b"\x7e")  # close whatever is pending
    assert got == frames
    assert d.frames_ok == len(frames)
    # Every input byte is a flag, part of a good frame, garbage, or still pending.
    total = len(stream) + 1
    good_raw = sum(_raw_len(f) for f in frames)
    assert d.flags_seen + good_raw + d.garbage_bytes + d.pending_bytes == total
    used = garbage[:len(frames) + 1]
    garbage_without_flags = sum(len(g) - g.count(0x7E) for g in used)
    assert d.garbage_bytes == garbage_without_flags


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_property_random_bytes_never_crash(data: bytes) -> None:
    d = hdlc.HdlcDecoder(max_frame=128)
    frames = d.feed(data)
    for f in frames:
        assert len(f) >= 1
    assert d.flags_seen == data.count(0x7E)
    assert d.garbage_bytes + d.pending_bytes + d.flags_seen <= len(data)
