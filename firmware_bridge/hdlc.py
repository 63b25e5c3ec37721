"""HDLC-Lite framing as used by OpenThread on the RCP's UART / USB CDC link.

Why: Spinel frames travel over a plain byte stream.  HDLC-Lite (RFC 1662
style, without address/control fields) delimits them so that a host that
attaches mid-stream, or a line that drops/corrupts bytes, resynchronises at
the next flag instead of losing the session.  Every malformed frame is
counted and discarded; nothing in here raises on bad input.

Wire format (identical to OpenThread's ``src/lib/hdlc``):

* flag ``0x7E`` opens and closes every frame (the encoder emits both);
* inside a frame the bytes ``0x7E 0x7D 0x11 0x13 0xF8`` are sent as ``0x7D``
  followed by the byte XOR ``0x20`` (XON/XOFF are escaped so software flow
  control never sees them, 0xF8 because some UART bridges treat it specially);
* the payload is followed by a 16-bit FCS: CRC-16/X.25 (reflected polynomial
  0x8408, initial value 0xFFFF, result complemented), sent low byte first.
  Running the CRC over payload+FCS leaves the constant residue 0xF0B8.
"""

from __future__ import annotations

import binascii
import re

FLAG = 0x7E
ESCAPE = 0x7D
XON = 0x11
XOFF = 0x13
SPECIAL = 0xF8
ESCAPE_XOR = 0x20
ESCAPED_BYTES = frozenset({FLAG, ESCAPE, XON, XOFF, SPECIAL})

FCS_INIT = 0xFFFF
FCS_GOOD_RESIDUE = 0xF0B8
DEFAULT_MAX_FRAME = 2048  # decoded bytes; Spinel frames are <= 1300 bytes


# The X.25 CRC is the bit-reflected form of CRC-CCITT: reflecting every input
# byte, running the MSB-first CRC (binascii.crc_hqx, implemented in C) and
# reflecting the 16-bit result gives the same value as the LSB-first
# polynomial 0x8408 -- at C speed instead of a Python loop per byte.
_REFLECT8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _reflect16(x: int) -> int:
    return (_REFLECT8[x & 0xFF] << 8) | _REFLECT8[x >> 8]


def fcs16_update(fcs: int, data: bytes) -> int:
    """Advance the (uncomplemented) LSB-first CRC state ``fcs`` over ``data``."""
    return _reflect16(binascii.crc_hqx(bytes(data).translate(_REFLECT8), _reflect16(fcs)))


def fcs16(data: bytes) -> int:
    """The value sent on the wire (already complemented); fcs16(b"123456789") == 0x906E."""
    return fcs16_update(FCS_INIT, data) ^ 0xFFFF


_ESCAPE_RE = re.compile(b"[\x7d\x7e\x11\x13\xf8]")


def _escape(data: bytes) -> bytes:
    return _ESCAPE_RE.sub(lambda m: bytes((ESCAPE, m.group()[0] ^ ESCAPE_XOR)), data)


def encode(payload: bytes) -> bytes:
    """Frame ``payload``: FLAG, escaped(payload + FCS little-endian), FLAG."""
    fcs = fcs16(payload)
    body = bytes(payload) + bytes((fcs & 0xFF, fcs >> 8))
    return b"\x7e" + _escape(body) + b"\x7e"


class HdlcDecoder:
    """Streaming HDLC-Lite decoder.

    ``feed(data)`` returns the payloads of all frames completed by ``data``.
    Counters (all monotonically increasing):

    * ``frames_ok``     valid frames returned;
    * ``bad_fcs``       frames whose FCS did not check (or that ended in an
                        escape byte, i.e. an HDLC abort sequence);
    * ``too_short``     frames with fewer than 3 decoded bytes (nothing after
                        removing the 2-byte FCS);
    * ``overruns``      frames longer than ``max_frame`` decoded bytes;
    * ``garbage_bytes`` raw (still escaped) bytes that did not end up in a
                        valid frame, excluding flag bytes.  Bytes before the
                        first flag, inside rejected frames, and of overruns
                        all count here, so for any input stream
                        ``len(stream) == flags_seen + frame_bytes +
                        garbage_bytes + pending_bytes``;
    * ``frame_bytes``   raw bytes of the valid frames (a peer may escape
                        bytes that need no escaping, so this is not always
                        the re-encoded length).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._max_raw = 2 * max_frame + 4
        self._buf = bytearray()
        self._synced = False
        self._discarding = False  # inside an overrun frame: drop until next flag
        self.frames_ok = 0
        self.bad_fcs = 0
        self.too_short = 0
        self.overruns = 0
        self.garbage_bytes = 0
        self.frame_bytes = 0
        self.flags_seen = 0

    @property
    def pending_bytes(self) -> int:
        """Raw bytes buffered in a frame that has not been closed yet."""
        return len(self._buf)

    @property
    def bad_frames(self) -> int:
        return self.bad_fcs + self.too_short + self.overruns

    def reset(self) -> None:
        self.garbage_bytes += len(self._buf)
        self._buf.clear()
        self._synced = False
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        view = memoryview(data)
        pos = 0
        n = len(data)
        while pos < n:
            idx = data.find(b"\x7e", pos)
            if idx < 0:
                segment = view[pos:]
                pos = n
                closed = False
            else:
                segment = view[pos:idx]
                pos = idx + 1
                closed = True
            if not self._synced:
                self.garbage_bytes += len(segment)
            elif self._discarding:
                self.garbage_bytes += len(segment)
            else:
                self._buf += segment
                if len(self._buf) > self._max_raw:
                    self.overruns += 1
                    self.garbage_bytes += len(self._buf)
                    self._buf.clear()
                    self._discarding = True
            if closed:
                self.flags_seen += 1
                if self._synced and not self._discarding and self._buf:
                    frame = self._finish(bytes(self._buf))
                    if frame is not None:
                        frames.append(frame)
                self._buf.clear()
                self._synced = True
                self._discarding = False
        return frames

    def _finish(self, raw: bytes) -> bytes | None:
        if raw[-1] == ESCAPE:  # abort sequence 0x7D 0x7E
            self.bad_fcs += 1
            self.garbage_bytes += len(raw)
            return None
        if ESCAPE in raw:
            out = bytearray()
            i = 0
            while True:
                j = raw.find(b"\x7d", i)
                if j < 0:
                    out += raw[i:]
                    break
                out += raw[i:j]
                out.append(raw[j + 1] ^ ESCAPE_XOR)
                i = j + 2
            decoded = bytes(out)
        else:
            decoded = raw
        if len(decoded) > self.max_frame + 2:
            self.overruns += 1
            self.garbage_bytes += len(raw)
            return None
        if len(decoded) < 3:
            self.too_short += 1
            self.garbage_bytes += len(raw)
            return None
        if fcs16_update(FCS_INIT, decoded) != FCS_GOOD_RESIDUE:
            self.bad_fcs += 1
            self.garbage_bytes += len(raw)
            return None
        self.frames_ok += 1
        self.frame_bytes += len(raw)
        return decoded[:-2]
