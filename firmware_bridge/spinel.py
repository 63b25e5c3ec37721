"""The subset of Spinel that hilbed needs to drive a stock OpenThread RCP.

Why: an nRF52840 flashed with OpenThread's ``ot-rcp`` exposes its 802.15.4
radio through Spinel (over HDLC-Lite).  Talking Spinel directly lets hilbed
send raw MAC frames with CSMA-CA/ACK handled on the chip, read RSSI/LQI of
received frames, and run energy-detect scans to measure Wi-Fi interference,
without running a Thread stack on the host.

Numeric identifiers and value layouts are taken from the Spinel
specification as maintained in OpenThread (``src/lib/spinel/spinel.h``,
protocol version 4.3).  Frame layout::

    header (1 byte: FLG=0b10 | IID (2 bits) | TID (4 bits))
    command (packed unsigned int, 1-3 bytes)
    payload (command specific; for property commands: prop id (packed) + value)

Data packing (``pack``/``unpack``) follows the spec's format characters;
multi-byte integers are little-endian, ``E``/``e``/``6`` are big-endian byte
strings, ``d`` is a blob with a uint16 length prefix, ``D`` is the rest of
the buffer, ``t(...)`` a struct with a uint16 length prefix, ``A(...)`` an
array that runs to the end of its enclosing buffer.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# --- header -----------------------------------------------------------------------
HEADER_FLAG = 0x80
HEADER_FLAG_MASK = 0xC0
HEADER_IID_SHIFT = 4
HEADER_IID_MASK = 0x30
HEADER_TID_MASK = 0x0F

PROTOCOL_VERSION_MAJOR = 4
PROTOCOL_VERSION_MINOR = 3

# --- commands ---------------------------------------------------------------------
CMD_NOOP = 0
CMD_RESET = 1
CMD_PROP_VALUE_GET = 2
CMD_PROP_VALUE_SET = 3
CMD_PROP_VALUE_INSERT = 4
CMD_PROP_VALUE_REMOVE = 5
CMD_PROP_VALUE_IS = 6
CMD_PROP_VALUE_INSERTED = 7
CMD_PROP_VALUE_REMOVED = 8

# --- status codes (PROP_LAST_STATUS values) ---------------------------------------
STATUS_OK = 0
STATUS_FAILURE = 1
STATUS_UNIMPLEMENTED = 2
STATUS_INVALID_ARGUMENT = 3
STATUS_INVALID_STATE = 4
STATUS_INVALID_COMMAND = 5
STATUS_INVALID_INTERFACE = 6
STATUS_INTERNAL_ERROR = 7
STATUS_SECURITY_ERROR = 8
STATUS_PARSE_ERROR = 9
STATUS_IN_PROGRESS = 10
STATUS_NOMEM = 11
STATUS_BUSY = 12
STATUS_PROP_NOT_FOUND = 13
STATUS_DROPPED = 14
STATUS_EMPTY = 15
STATUS_CMD_TOO_BIG = 16
STATUS_NO_ACK = 17
STATUS_CCA_FAILURE = 18
STATUS_ALREADY = 19
STATUS_ITEM_NOT_FOUND = 20
STATUS_INVALID_COMMAND_FOR_PROP = 21
STATUS_RESET_POWER_ON = 112
STATUS_RESET_EXTERNAL = 113
STATUS_RESET_SOFTWARE = 114
STATUS_RESET_FAULT = 115
STATUS_RESET_CRASH = 116
STATUS_RESET_ASSERT = 117
STATUS_RESET_OTHER = 118
STATUS_RESET_UNKNOWN = 119
STATUS_RESET_WATCHDOG = 120
STATUS_RESET_BEGIN = 112
STATUS_RESET_END = 128

STATUS_NAMES = {v: k[len("STATUS_"):] for k, v in list(globals().items())
                if k.startswith("STATUS_") and isinstance(v, int) and not k.endswith(("_BEGIN", "_END"))}

# --- properties -------------------------------------------------------------------
PROP_LAST_STATUS = 0  # i
PROP_PROTOCOL_VERSION = 1  # ii
PROP_NCP_VERSION = 2  # U
PROP_INTERFACE_TYPE = 3  # i
PROP_VENDOR_ID = 4  # i
PROP_CAPS = 5  # A(i)
PROP_INTERFACE_COUNT = 6  # C
PROP_HWADDR = 8  # E
PROP_PHY_ENABLED = 0x20  # b
PROP_PHY_CHAN = 0x21  # C
PROP_PHY_CHAN_SUPPORTED = 0x22  # A(C)
PROP_PHY_FREQ = 0x23  # L
PROP_PHY_CCA_THRESHOLD = 0x24  # c
PROP_PHY_TX_POWER = 0x25  # c
PROP_PHY_RSSI = 0x26  # c
PROP_PHY_RX_SENSITIVITY = 0x27  # c
PROP_MAC_SCAN_STATE = 0x30  # C
PROP_MAC_SCAN_MASK = 0x31  # A(C)
PROP_MAC_SCAN_PERIOD = 0x32  # S (ms per channel)
PROP_MAC_SCAN_BEACON = 0x33
PROP_MAC_15_4_LADDR = 0x34  # E
PROP_MAC_15_4_SADDR = 0x35  # S
PROP_MAC_15_4_PANID = 0x36  # S
PROP_MAC_RAW_STREAM_ENABLED = 0x37  # b
PROP_MAC_PROMISCUOUS_MODE = 0x38  # C
PROP_MAC_ENERGY_SCAN_RESULT = 0x39  # Cc
PROP_STREAM_DEBUG = 0x70  # U
PROP_STREAM_RAW = 0x71  # dD
PROP_STREAM_NET = 0x72  # dD

PROP_NAMES = {v: k[len("PROP_"):] for k, v in list(globals().items())
              if k.startswith("PROP_") and isinstance(v, int)}

# --- enumerations -----------------------------------------------------------------
SCAN_STATE_IDLE = 0
SCAN_STATE_BEACON = 1
SCAN_STATE_ENERGY = 2
SCAN_STATE_DISCOVER = 3

PROTOCOL_TYPE_THREAD = 3

# Capabilities (PROP_CAPS items), numbered as in spinel.h's SPINEL_CAP_* enum.
CAP_LOCK = 1
CAP_NET_SAVE = 2
CAP_HBO = 3
CAP_POWER_SAVE = 4
CAP_COUNTERS = 5
CAP_JAM_DETECT = 6
CAP_PEEK_POKE = 7
CAP_WRITABLE_RAW_STREAM = 8
CAP_GPIO = 9
CAP_TRNG = 10
CAP_CMD_MULTI = 11
CAP_UNSOL_UPDATE_FILTER = 12
CAP_MCU_POWER_STATE = 13
CAP_PCAP = 14
CAP_802_15_4_2003 = 16
CAP_802_15_4_2006 = 17
CAP_802_15_4_2011 = 18
CAP_802_15_4_PIB = 21
CAP_802_15_4_2450MHZ_OQPSK = 24
CAP_802_15_4_915MHZ_OQPSK = 25
CAP_CONFIG_FTD = 32
CAP_CONFIG_MTD = 33
CAP_CONFIG_RADIO = 34
CAP_ROLE_ROUTER = 48
CAP_ROLE_SLEEPY = 49
CAP_NET_THREAD_1_0 = 52
CAP_NET_THREAD_1_1 = 53
CAP_NET_THREAD_1_2 = 54
CAP_RCP_API_VERSION = 64
CAP_MAC_ALLOWLIST = 512
CAP_MAC_RAW = 513
CAP_POSIX = 521

CAP_NAMES = {v: k[len("CAP_"):] for k, v in list(globals().items())
             if k.startswith("CAP_") and isinstance(v, int)}

MD_FLAG_TX = 0x0001
MD_FLAG_BAD_FCS = 0x0004
MD_FLAG_DUPE = 0x0008
MD_FLAG_ACKED_FP = 0x0010
MD_FLAG_ACKED_SEC = 0x0020

PACKED_UINT_MAX = 2_097_151  # largest value that fits three bytes

# Value formats of the properties above (used by the host helpers and the emulator).
PROP_FORMATS: dict[int, str] = {
    PROP_LAST_STATUS: "i",
    PROP_PROTOCOL_VERSION: "ii",
    PROP_NCP_VERSION: "U",
    PROP_INTERFACE_TYPE: "i",
    PROP_VENDOR_ID: "i",
    PROP_CAPS: "A(i)",
    PROP_INTERFACE_COUNT: "C",
    PROP_HWADDR: "E",
    PROP_PHY_ENABLED: "b",
    PROP_PHY_CHAN: "C",
    PROP_PHY_CHAN_SUPPORTED: "A(C)",
    PROP_PHY_CCA_THRESHOLD: "c",
    PROP_PHY_TX_POWER: "c",
    PROP_PHY_RSSI: "c",
    PROP_PHY_RX_SENSITIVITY: "c",
    PROP_MAC_SCAN_STATE: "C",
    PROP_MAC_SCAN_MASK: "A(C)",
    PROP_MAC_SCAN_PERIOD: "S",
    PROP_MAC_15_4_LADDR: "E",
    PROP_MAC_15_4_SADDR: "S",
    PROP_MAC_15_4_PANID: "S",
    PROP_MAC_RAW_STREAM_ENABLED: "b",
    PROP_MAC_PROMISCUOUS_MODE: "C",
    PROP_MAC_ENERGY_SCAN_RESULT: "Cc",
}

#: STREAM_RAW transmit request (host -> RCP), as decoded by OpenThread's
#: ``NcpBase::DecodeStreamRawTxRequest``: PSDU (d), channel (C), max CSMA
#: backoffs (C), max frame retries (C), CSMA-CA enabled (b), header updated (b),
#: is retransmission (b), security processed (b), TX delay (L), TX delay base
#: time (L), RX channel after TX done (C), TX power (c).  All after the channel
#: are optional.
STREAM_RAW_TX_FORMAT = "dCCCbbbbLLCc"
#: Received frame / ACK frame (RCP -> host), ``NcpBase::PackRadioFrame``: PSDU (d),
#: RSSI (c), noise floor (c), flags (S), PHY data t(channel C, LQI C, timestamp
#: X in us), vendor data t(receive error i), MAC data t(ACK key id C, ACK frame
#: counter L).
STREAM_RAW_RX_FORMAT = "dccSt(CCX)t(i)t(CL)"
#: Transmit-done (RCP -> host): PROP_VALUE_IS LAST_STATUS with the request's TID:
#: status (i), frame pending in ACK (b), header updated (b), then on success the
#: ACK frame in STREAM_RAW_RX_FORMAT.
TX_DONE_FORMAT = "ibb"


class SpinelError(ValueError):
    """Malformed Spinel data (bad header, truncated value, bad format string)."""


# --- packed unsigned integers -----------------------------------------------------

def encode_packed_uint(value: int) -> bytes:
    """EXI-style varint: 7 bits per byte, little-endian, MSB set on all but the last byte.

    1337 -> b"\\xb9\\x0a" (example from the specification).
    """
    if not 0 <= value <= PACKED_UINT_MAX:
        raise SpinelError(f"packed uint {value} out of range 0..{PACKED_UINT_MAX}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_packed_uint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Return (value, bytes consumed).  Accepts at most 3 bytes as the spec limits it."""
    value = 0
    for i in range(3):
        if offset + i >= len(data):
            raise SpinelError("truncated packed uint")
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise SpinelError("packed uint longer than 3 bytes")


# --- pack / unpack ----------------------------------------------------------------

_FIXED = {
    "b": "<?", "C": "<B", "c": "<b", "S": "<H", "s": "<h", "L": "<I", "l": "<i",
    "X": "<Q", "x": "<q",
}
_BYTES = {"E": 8, "e": 6, "6": 16}


@functools.lru_cache(maxsize=256)
def _split_format(fmt: str) -> tuple[tuple[str, str], ...]:
    """Tokenise a format string into (char, inner) pairs; inner for t(...) / A(...)."""
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(fmt):
        ch = fmt[i]
        if ch in "tA":
            if i + 1 >= len(fmt) or fmt[i + 1] != "(":
                raise SpinelError(f"'{ch}' must be followed by '(' in {fmt!r}")
            depth = 0
            j = i + 1
            while j < len(fmt):
                if fmt[j] == "(":
                    depth += 1
                elif fmt[j] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            else:
                raise SpinelError(f"unbalanced parentheses in {fmt!r}")
            tokens.append((ch, fmt[i + 2:j]))
            i = j + 1
        elif ch in _FIXED or ch in _BYTES or ch in "iUdD.":
            tokens.append((ch, ""))
            i += 1
        else:
            raise SpinelError(f"unsupported format character {ch!r} in {fmt!r}")
    return tuple(tokens)


def pack(fmt: str, *values: Any) -> bytes:
    """Serialise ``values`` according to the Spinel format string ``fmt``.

    ``t(...)`` takes a tuple/list of the struct's values, ``A(...)`` an iterable
    of items (a plain value for single-field item formats, else a tuple).
    """
    out = bytearray()
    tokens = _split_format(fmt)
    vals = list(values)
    consumed = 0
    for ch, inner in tokens:
        if ch == ".":
            continue
        if consumed >= len(vals):
            raise SpinelError(f"not enough values for format {fmt!r}")
        v = vals[consumed]
        consumed += 1
        out += _pack_one(ch, inner, v)
    if consumed != len(vals):
        raise SpinelError(f"too many values for format {fmt!r}")
    return bytes(out)


def _pack_one(ch: str, inner: str, v: Any) -> bytes:
    try:
        if ch in _FIXED:
            return struct.pack(_FIXED[ch], v)
        if ch in _BYTES:
            b = bytes(v)
            if len(b) != _BYTES[ch]:
                raise SpinelError(f"'{ch}' needs exactly {_BYTES[ch]} bytes, got {len(b)}")
            return b
        if ch == "i":
            return encode_packed_uint(int(v))
        if ch == "U":
            s = v.encode("utf-8") if isinstance(v, str) else bytes(v)
            if b"\x00" in s:
                raise SpinelError("UTF-8 string contains NUL")
            return s + b"\x00"
        if ch == "d":
            b = bytes(v)
            return struct.pack("<H", len(b)) + b
        if ch == "D":
            return bytes(v)
        if ch == "t":
            body = pack(inner, *v)
            return struct.pack("<H", len(body)) + body
        if ch == "A":
            single = len(_split_format(inner)) == 1
            return b"".join(pack(inner, item) if single else pack(inner, *item) for item in v)
    except struct.error as exc:
        raise SpinelError(f"cannot pack {v!r} as '{ch}': {exc}") from exc
    raise SpinelError(f"unsupported format character {ch!r}")


def unpack(fmt: str, data: bytes, *, partial: bool = False) -> list[Any]:
    """Deserialise ``data`` according to ``fmt``; returns a list of values.

    With ``partial=True`` trailing fields that are absent (the spec makes
    metadata optional) are simply left out of the result instead of raising.
    Bytes left over after the last field are ignored (the spec allows fields
    to be appended in later versions).
    """
    values, _ = _unpack(fmt, memoryview(bytes(data)), 0, len(data), partial)
    return values


def _unpack(fmt: str, data: memoryview, pos: int, end: int, partial: bool) -> tuple[list[Any], int]:
    out: list[Any] = []
    for ch, inner in _split_format(fmt):
        if ch == ".":
            continue
        if pos >= end and partial:
            break
        if ch in _FIXED:
            size = struct.calcsize(_FIXED[ch])
            if pos + size > end:
                if partial:
                    break
                raise SpinelError(f"truncated '{ch}' field")
            (v,) = struct.unpack_from(_FIXED[ch], data, pos)
            if ch == "b" and data[pos] > 1:
                raise SpinelError(f"illegal bool value {data[pos]}")
            pos += size
        elif ch in _BYTES:
            size = _BYTES[ch]
            if pos + size > end:
                if partial:
                    break
                raise SpinelError(f"truncated '{ch}' field")
            v = bytes(data[pos:pos + size])
            pos += size
        elif ch == "i":
            v, n = decode_packed_uint(bytes(data[pos:min(end, pos + 3)]))
            pos += n
        elif ch == "U":
            raw = bytes(data[pos:end])
            nul = raw.find(b"\x00")
            if nul < 0:
                raise SpinelError("unterminated UTF-8 string")
            v = raw[:nul].decode("utf-8", errors="replace")
            pos += nul + 1
        elif ch in "dt":
            if pos + 2 > end:
                if partial:
                    break
                raise SpinelError(f"truncated '{ch}' length")
            (length,) = struct.unpack_from("<H", data, pos)
            pos += 2
            if pos + length > end:
                raise SpinelError(f"'{ch}' length {length} exceeds remaining {end - pos} bytes")
            if ch == "d":
                v = bytes(data[pos:pos + length])
            else:
                v, _ = _unpack(inner, data, pos, pos + length, True)
            pos += length
        elif ch == "D":
            v = bytes(data[pos:end])
            pos = end
        elif ch == "A":
            items = []
            single = len(_split_format(inner)) == 1
            while pos < end:
                item, new_pos = _unpack(inner, data, pos, end, False)
                if new_pos == pos:
                    raise SpinelError("array item consumed no bytes")
                pos = new_pos
                items.append(item[0] if single else tuple(item))
            v = items
        else:  # pragma: no cover - _split_format rejects unknown characters
            raise SpinelError(f"unsupported format character {ch!r}")
        out.append(v)
    return out, pos


# --- frames -----------------------------------------------------------------------

def make_header(tid: int, iid: int = 0) -> int:
    if not 0 <= tid <= 15 or not 0 <= iid <= 3:
        raise SpinelError(f"TID {tid} / IID {iid} out of range")
    return HEADER_FLAG | (iid << HEADER_IID_SHIFT) | tid


@dataclass(frozen=True)
class SpinelFrame:
    header: int
    command: int
    payload: bytes = b""

    @property
    def tid(self) -> int:
        return self.header & HEADER_TID_MASK

    @property
    def iid(self) -> int:
        return (self.header & HEADER_IID_MASK) >> HEADER_IID_SHIFT

    def encode(self) -> bytes:
        return bytes((self.header,)) + encode_packed_uint(self.command) + self.payload

    @classmethod
    def decode(cls, data: bytes) -> SpinelFrame:
        if len(data) < 2:
            raise SpinelError("Spinel frame shorter than 2 bytes")
        header = data[0]
        if header & HEADER_FLAG_MASK != HEADER_FLAG:
            raise SpinelError(f"header 0x{header:02x} does not carry the 0b10 flag")
        command, n = decode_packed_uint(data, 1)
        return cls(header, command, bytes(data[1 + n:]))

    # Property helpers (valid for the PROP_VALUE_* commands).
    def prop(self) -> tuple[int, bytes]:
        prop_id, n = decode_packed_uint(self.payload)
        return prop_id, self.payload[n:]

    def describe(self) -> str:
        name = {CMD_RESET: "RESET", CMD_PROP_VALUE_GET: "GET", CMD_PROP_VALUE_SET: "SET",
                CMD_PROP_VALUE_IS: "IS", CMD_NOOP: "NOOP"}.get(self.command, f"CMD{self.command}")
        if self.command in (CMD_PROP_VALUE_GET, CMD_PROP_VALUE_SET, CMD_PROP_VALUE_IS,
                            CMD_PROP_VALUE_INSERT, CMD_PROP_VALUE_INSERTED):
            try:
                prop_id, value = self.prop()
                return f"tid={self.tid} {name} {PROP_NAMES.get(prop_id, hex(prop_id))} {value.hex()}"
            except SpinelError:
                pass
        return f"tid={self.tid} {name} {self.payload.hex()}"


def frame(command: int, payload: bytes = b"", *, tid: int = 0, iid: int = 0) -> bytes:
    return SpinelFrame(make_header(tid, iid), command, payload).encode()


def cmd_reset(tid: int = 0, reset_type: int | None = None) -> bytes:
    return frame(CMD_RESET, b"" if reset_type is None else bytes((reset_type,)), tid=tid)


def cmd_noop(tid: int = 0) -> bytes:
    return frame(CMD_NOOP, tid=tid)


def cmd_prop_get(prop: int, tid: int = 0) -> bytes:
    return frame(CMD_PROP_VALUE_GET, encode_packed_uint(prop), tid=tid)


def cmd_prop_set(prop: int, value: bytes, tid: int = 0) -> bytes:
    return frame(CMD_PROP_VALUE_SET, encode_packed_uint(prop) + value, tid=tid)


def cmd_prop_is(prop: int, value: bytes, tid: int = 0) -> bytes:
    return frame(CMD_PROP_VALUE_IS, encode_packed_uint(prop) + value, tid=tid)


def last_status(status: int, tid: int = 0) -> bytes:
    return cmd_prop_is(PROP_LAST_STATUS, encode_packed_uint(status), tid=tid)


def stream_raw_tx_value(psdu: bytes, channel: int, *, max_csma_backoffs: int = 4,
                        max_frame_retries: int = 3, csma_ca: bool = True,
                        tx_power: int | None = None, full: bool = False) -> bytes:
    """Value of a PROP_VALUE_SET STREAM_RAW transmit request (see STREAM_RAW_TX_FORMAT).

    The specification lets the host stop after any metadata field ("partially
    specified metadata MUST be accepted"); by default the request ends after
    the CSMA-CA flag, which saves 13 bytes per frame on the serial link.
    ``full=True`` (or a ``tx_power``) writes every field OpenThread defines.
    """
    value = pack("dCCCb", psdu, channel, max_csma_backoffs, max_frame_retries, csma_ca)
    if full or tx_power is not None:
        value += pack("bbbLLC", False, False, False, 0, 0, channel)
        if tx_power is not None:
            value += pack("c", tx_power)
    return value


@dataclass(frozen=True)
class RawFrameInfo:
    """A STREAM_RAW frame as reported by the RCP (received frame or ACK)."""

    psdu: bytes
    rssi: int | None = None
    noise_floor: int | None = None
    flags: int = 0
    channel: int | None = None
    lqi: int | None = None
    timestamp_us: int | None = None
    error: int = 0


def pack_raw_frame(info: RawFrameInfo) -> bytes:
    return pack(STREAM_RAW_RX_FORMAT, info.psdu,
                -128 if info.rssi is None else info.rssi,
                -128 if info.noise_floor is None else info.noise_floor,
                info.flags,
                (info.channel or 0, 255 if info.lqi is None else info.lqi, info.timestamp_us or 0),
                (info.error,), (0, 0))


def unpack_raw_frame(value: bytes) -> tuple[RawFrameInfo, int]:
    """Parse a STREAM_RAW value; returns (info, bytes consumed)."""
    vals, pos = _unpack(STREAM_RAW_RX_FORMAT, memoryview(bytes(value)), 0, len(value), True)
    if not vals:
        raise SpinelError("STREAM_RAW value without frame data")
    psdu = vals[0]
    rssi = vals[1] if len(vals) > 1 else None
    noise = vals[2] if len(vals) > 2 else None
    flags = vals[3] if len(vals) > 3 else 0
    phy = vals[4] if len(vals) > 4 else []
    vendor = vals[5] if len(vals) > 5 else []
    info = RawFrameInfo(
        psdu=psdu,
        rssi=None if rssi in (None, -128) else rssi,
        noise_floor=None if noise in (None, -128) else noise,
        flags=flags,
        channel=phy[0] if len(phy) > 0 else None,
        lqi=phy[1] if len(phy) > 1 else None,
        timestamp_us=phy[2] if len(phy) > 2 else None,
        error=vendor[0] if vendor else 0,
    )
    return info, pos


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"STATUS_{status}")


def channels_mask(channels: Iterable[int]) -> bytes:
    return pack("A(C)", list(channels))
