"""hilbed message framing on top of Nordic's "Wireless UART 15.4" example.

Why: the Wireless UART example firmware is a transparent bridge -- bytes
written to one board's UART come out of the other board's UART, packed into
802.15.4 frames by the firmware as they arrive.  The host therefore sees a
byte stream with no boundaries, no integrity check beyond the radio's own
FCS, and no indication of where an image or chunk starts.  When a radio
frame is lost for good, or the deadline cuts a transfer short, the receiver
must still find the next message boundary.  This module adds a small,
self-synchronising framing (documented in ``docs/wuart-framing.md``):

    offset size field
    0      2    magic 0x48 0x62 ("Hb")
    2      1    type (high nibble) | flags (low nibble)
    3      2    image sequence number (uint16 LE)
    5      2    chunk index (uint16 LE)
    7      2    fragment index within the chunk (uint16 LE)
    9      1    payload length N (0..64)
    10     N    payload
    10+N   2    CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over bytes 0..10+N-1, LE

Types: DATA (1), BEGIN (2: payload = chunk count u16 + total bytes u32),
END (3: payload = chunk count u16), ABORT (4: payload = chunks completed u16).
Flag bit 0 on DATA marks the last fragment of a chunk.

Payloads are limited to 64 bytes so a single lost radio frame (the firmware
packs up to ~100 UART bytes per frame) destroys at most two wuart frames, and
the decoder's worst-case resync scan stays short.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"Hb"
HEADER_LEN = 10
CRC_LEN = 2
MAX_PAYLOAD = 64
MAX_FRAME_LEN = HEADER_LEN + MAX_PAYLOAD + CRC_LEN
FLAG_LAST_FRAGMENT = 0x1
BAUDRATE = 230400  # the example firmware's UART speed (with RTS/CTS)

_HEADER = struct.Struct("<2sBHHHB")


class FrameType(IntEnum):
    DATA = 1
    BEGIN = 2
    END = 3
    ABORT = 4


def crc16_ccitt(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE (MSB first, poly 0x1021); crc16_ccitt(b"123456789") == 0x29B1."""
    return binascii.crc_hqx(bytes(data), crc)


@dataclass(frozen=True)
class WuartFrame:
    type: FrameType
    image_seq: int
    chunk_index: int = 0
    fragment_index: int = 0
    payload: bytes = b""
    flags: int = 0

    @property
    def last_fragment(self) -> bool:
        return bool(self.flags & FLAG_LAST_FRAGMENT)

    def encode(self) -> bytes:
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"wuart payload {len(self.payload)} > {MAX_PAYLOAD} bytes")
        head = _HEADER.pack(MAGIC, (int(self.type) << 4) | (self.flags & 0xF), self.image_seq & 0xFFFF,
                            self.chunk_index & 0xFFFF, self.fragment_index & 0xFFFF, len(self.payload))
        body = head + bytes(self.payload)
        return body + struct.pack("<H", crc16_ccitt(body))

    # Control-frame payload helpers
    def begin_info(self) -> tuple[int, int]:
        """(chunk count, total bytes) of a BEGIN frame."""
        return struct.unpack_from("<HI", self.payload.ljust(6, b"\0"))

    def count(self) -> int:
        """Chunk count (END) or chunks completed (ABORT)."""
        return struct.unpack_from("<H", self.payload.ljust(2, b"\0"))[0]


def begin_frame(image_seq: int, chunk_count: int, total_bytes: int) -> WuartFrame:
    return WuartFrame(FrameType.BEGIN, image_seq, payload=struct.pack("<HI", chunk_count, total_bytes))


def end_frame(image_seq: int, chunk_count: int) -> WuartFrame:
    return WuartFrame(FrameType.END, image_seq, chunk_index=chunk_count, payload=struct.pack("<H", chunk_count))


def abort_frame(image_seq: int, chunks_completed: int) -> WuartFrame:
    return WuartFrame(FrameType.ABORT, image_seq, chunk_index=chunks_completed,
                      payload=struct.pack("<H", chunks_completed))


def chunk_frames(image_seq: int, chunk_index: int, chunk: bytes) -> list[WuartFrame]:
    """Split one application chunk into DATA frames of at most 64 payload bytes."""
    pieces = [chunk[i:i + MAX_PAYLOAD] for i in range(0, len(chunk), MAX_PAYLOAD)] or [b""]
    if len(pieces) > 0xFFFF:
        raise ValueError("chunk too large for 16-bit fragment indices")
    return [WuartFrame(FrameType.DATA, image_seq, chunk_index, i, p,
                       FLAG_LAST_FRAGMENT if i == len(pieces) - 1 else 0)
            for i, p in enumerate(pieces)]


class WuartDecoder:
    """Streaming decoder: scans for the magic, validates length and CRC.

    On a bad CRC or an impossible header it skips one byte past the magic and
    scans again, so a frame that starts inside a corrupted one is still found.
    Counters: ``frames_ok``, ``bad_crc``, ``bad_header`` (unknown type or
    length > 64), ``garbage_bytes`` (bytes skipped while searching for a
    frame start).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames_ok = 0
        self.bad_crc = 0
        self.bad_header = 0
        self.garbage_bytes = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[WuartFrame]:
        self._buf += data
        buf = self._buf
        out: list[WuartFrame] = []
        while True:
            start = buf.find(MAGIC)
            if start < 0:
                # keep a trailing 'H' that may be the first half of the magic
                keep = 1 if buf[-1:] == MAGIC[:1] else 0
                self.garbage_bytes += len(buf) - keep
                del buf[:len(buf) - keep]
                break
            if start:
                self.garbage_bytes += start
                del buf[:start]
            if len(buf) < HEADER_LEN:
                break
            _, type_flags, seq, chunk, frag, length = _HEADER.unpack_from(buf, 0)
            ftype = type_flags >> 4
            if length > MAX_PAYLOAD or ftype not in FrameType._value2member_map_:
                self.bad_header += 1
                self.garbage_bytes += 1
                del buf[:1]
                continue
            total = HEADER_LEN + length + CRC_LEN
            if len(buf) < total:
                break
            (crc,) = struct.unpack_from("<H", buf, HEADER_LEN + length)
            if crc != crc16_ccitt(bytes(buf[:HEADER_LEN + length])):
                self.bad_crc += 1
                self.garbage_bytes += 1
                del buf[:1]
                continue
            out.append(WuartFrame(FrameType(ftype), seq, chunk, frag,
                                  bytes(buf[HEADER_LEN:HEADER_LEN + length]), type_flags & 0xF))
            self.frames_ok += 1
            del buf[:total]
        return out
