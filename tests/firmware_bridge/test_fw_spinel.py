"""Spinel encoding against byte vectors written out by hand from the specification."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hilbed.firmware_bridge import spinel
from hilbed.firmware_bridge.spinel import SpinelError, SpinelFrame


@pytest.mark.parametrize("value, encoded", [
    (0, "00"),
    (1, "01"),
    (127, "7f"),
    (128, "8001"),
    (1337, "b90a"),  # the example in the specification
    (16383, "ff7f"),
    (16384, "808001"),
    (2_097_151, "ffff7f"),
])
def test_packed_uint_vectors(value: int, encoded: str) -> None:
    assert spinel.encode_packed_uint(value) == bytes.fromhex(encoded)
    assert spinel.decode_packed_uint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


def test_packed_uint_limits() -> None:
    with pytest.raises(SpinelError):
        spinel.encode_packed_uint(2_097_152)
    with pytest.raises(SpinelError):
        spinel.decode_packed_uint(b"\x80\x80\x80\x01")
    with pytest.raises(SpinelError):
        spinel.decode_packed_uint(b"\x80")


def test_header_layout() -> None:
    # FLG=0b10 in the two top bits, IID in bits 4-5, TID in bits 0-3.
    assert spinel.make_header(1) == 0x81
    assert spinel.make_header(15, iid=3) == 0b10_11_1111
    assert SpinelFrame(0xB5, 6).iid == 3 and SpinelFrame(0xB5, 6).tid == 5


def test_command_vectors() -> None:
    assert spinel.cmd_reset(tid=1) == bytes([0x81, 0x01])
    assert spinel.cmd_noop(tid=0) == bytes([0x80, 0x00])
    # PROP_VALUE_GET(PROTOCOL_VERSION=1), TID 2
    assert spinel.cmd_prop_get(spinel.PROP_PROTOCOL_VERSION, tid=2) == bytes([0x82, 0x02, 0x01])
    # PROP_VALUE_GET(NCP_VERSION=2), TID 3
    assert spinel.cmd_prop_get(spinel.PROP_NCP_VERSION, tid=3) == bytes([0x83, 0x02, 0x02])
    # PROP_VALUE_SET(PHY_CHAN=0x21, 15), TID 4
    assert spinel.cmd_prop_set(spinel.PROP_PHY_CHAN, spinel.pack("C", 15), tid=4) == bytes([0x84, 0x03, 0x21, 0x0F])
    # PROP_VALUE_SET(PHY_ENABLED=0x20, true)
    assert spinel.cmd_prop_set(spinel.PROP_PHY_ENABLED, spinel.pack("b", True), tid=5) == \
        bytes([0x85, 0x03, 0x20, 0x01])
    # PROP_VALUE_SET(MAC_15_4_PANID=0x36, 0xABCD): uint16 little-endian
    assert spinel.cmd_prop_set(spinel.PROP_MAC_15_4_PANID, spinel.pack("S", 0xABCD), tid=6) == \
        bytes([0x86, 0x03, 0x36, 0xCD, 0xAB])
    # PROP_VALUE_IS(LAST_STATUS=0, RESET_POWER_ON=112), TID 0
    assert spinel.last_status(spinel.STATUS_RESET_POWER_ON) == bytes([0x80, 0x06, 0x00, 0x70])
    # PROP_VALUE_IS(PROTOCOL_VERSION, 4, 3)
    assert spinel.cmd_prop_is(1, spinel.pack("ii", 4, 3), tid=2) == bytes([0x82, 0x06, 0x01, 0x04, 0x03])


def test_property_ids_from_spec() -> None:
    assert (spinel.PROP_PHY_ENABLED, spinel.PROP_PHY_CHAN, spinel.PROP_PHY_TX_POWER, spinel.PROP_PHY_RSSI) == \
        (0x20, 0x21, 0x25, 0x26)
    assert (spinel.PROP_MAC_SCAN_STATE, spinel.PROP_MAC_SCAN_MASK, spinel.PROP_MAC_SCAN_PERIOD) == (0x30, 0x31, 0x32)
    assert (spinel.PROP_MAC_15_4_LADDR, spinel.PROP_MAC_15_4_SADDR, spinel.PROP_MAC_15_4_PANID) == (0x34, 0x35, 0x36)
    assert (spinel.PROP_MAC_RAW_STREAM_ENABLED, spinel.PROP_MAC_ENERGY_SCAN_RESULT) == (0x37, 0x39)
    assert spinel.PROP_STREAM_RAW == 0x71
    assert (spinel.STATUS_NO_ACK, spinel.STATUS_CCA_FAILURE, spinel.STATUS_RESET_POWER_ON) == (17, 18, 112)


def test_stream_raw_transmit_request_bytes() -> None:
    psdu = bytes([0x41, 0x88, 0x07]) + b"\x00\x00"
    value = spinel.stream_raw_tx_value(psdu, 15, max_csma_backoffs=4, max_frame_retries=0, csma_ca=True)
    # d: length 5 (LE) + PSDU, C channel, C max backoffs, C max retries, b CSMA-CA
    assert value == bytes([0x05, 0x00]) + psdu + bytes([15, 4, 0, 1])
    full = spinel.stream_raw_tx_value(psdu, 15, tx_power=-4)
    tail = bytes([15, 4, 3, 1, 0, 0, 0]) + bytes(8) + bytes([15, 0xFC])
    assert full == bytes([0x05, 0x00]) + psdu + tail
    assert spinel.unpack(spinel.STREAM_RAW_TX_FORMAT, full) == [psdu, 15, 4, 3, True, False, False, False, 0, 0, 15, -4]
    assert spinel.unpack(spinel.STREAM_RAW_TX_FORMAT, value, partial=True) == [psdu, 15, 4, 0, True]
    frame = spinel.cmd_prop_set(spinel.PROP_STREAM_RAW, value, tid=7)
    assert frame[:3] == bytes([0x87, 0x03, 0x71])


def test_received_frame_layout() -> None:
    info = spinel.RawFrameInfo(b"\x02\x00\x11\xaa\xbb", rssi=-60, channel=15, lqi=200, timestamp_us=0x0102030405)
    value = spinel.pack_raw_frame(info)
    expected = (bytes([0x05, 0x00, 0x02, 0x00, 0x11, 0xAA, 0xBB])  # d
                + bytes([0xC4, 0x80])  # rssi -60, noise floor -128 (unknown)
                + bytes([0x00, 0x00])  # flags
                + bytes([0x0A, 0x00, 15, 200]) + bytes([5, 4, 3, 2, 1, 0, 0, 0])  # t(CCX)
                + bytes([0x01, 0x00, 0x00])  # t(i) receive error 0
                + bytes([0x05, 0x00, 0x00, 0, 0, 0, 0]))  # t(CL)
    assert value == expected
    parsed, used = spinel.unpack_raw_frame(value)
    assert used == len(value)
    assert parsed == spinel.RawFrameInfo(info.psdu, rssi=-60, noise_floor=None, flags=0, channel=15, lqi=200,
                                         timestamp_us=0x0102030405, error=0)
    # Older RCPs send less metadata; a bare 'd' must still parse.
    bare, _ = spinel.unpack_raw_frame(bytes([0x01, 0x00, 0x42]))
    assert bare.psdu == b"\x42" and bare.channel is None and bare.rssi is None


def test_pack_unpack_formats() -> None:
    data = spinel.pack("bCcSsLliEUdA(C)", True, 200, -5, 0xBEEF, -2, 0xDEADBEEF, -7, 300, bytes(range(8)), "hi",
                       b"xyz", [11, 12])
    assert spinel.unpack("bCcSsLliEUdA(C)", data) == [True, 200, -5, 0xBEEF, -2, 0xDEADBEEF, -7, 300,
                                                     bytes(range(8)), "hi", b"xyz", [11, 12]]
    assert spinel.pack("A(i)", [1, 200]) == bytes([1, 0xC8, 0x01])
    assert spinel.pack("t(Cc)", (1, -1)) == bytes([2, 0, 1, 0xFF])
    assert spinel.pack("Cc", 15, -45) == bytes([15, 0xD3])  # MAC_ENERGY_SCAN_RESULT
    assert spinel.unpack("D", b"rest") == [b"rest"]


def test_unpack_errors_are_spinel_errors() -> None:
    with pytest.raises(SpinelError):
        spinel.unpack("S", b"\x01")
    with pytest.raises(SpinelError):
        spinel.unpack("d", b"\x05\x00ab")
    with pytest.raises(SpinelError):
        spinel.unpack("U", b"no terminator")
    with pytest.raises(SpinelError):
        spinel.unpack("b", b"\x02")
    with pytest.raises(SpinelError):
        spinel.pack("Z", 1)
    with pytest.raises(SpinelError):
        SpinelFrame.decode(b"\x41\x06")  # flag bits 0b01: not Spinel (HCI-like)


def test_frame_decode_roundtrip() -> None:
    raw = spinel.cmd_prop_is(spinel.PROP_MAC_ENERGY_SCAN_RESULT, spinel.pack("Cc", 20, -50), tid=0)
    f = SpinelFrame.decode(raw)
    assert (f.tid, f.command) == (0, spinel.CMD_PROP_VALUE_IS)
    assert f.prop() == (0x39, bytes([20, 0xCE]))
    assert f.encode() == raw


@settings(max_examples=100, deadline=None)
@given(st.integers(0, spinel.PACKED_UINT_MAX))
def test_property_packed_uint_roundtrip(v: int) -> None:
    enc = spinel.encode_packed_uint(v)
    assert spinel.decode_packed_uint(enc + b"\xff") == (v, len(enc))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_property_random_values_only_raise_spinel_errors(data: bytes) -> None:
    for fmt in (spinel.STREAM_RAW_RX_FORMAT, "A(i)", "iD", "Ut(CCX)"):
        try:
            spinel.unpack(fmt, data, partial=True)
        except SpinelError:
            pass
