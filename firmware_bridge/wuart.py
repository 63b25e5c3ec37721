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

#: hilbed's version query and reply on a Wireless UART port: understood by hilbed's emulated firmware only
#: (docs/wuart-framing.md); real firmware passes the query on to its peer, whose decoder counts it as garbage
WUART_VERSION_QUERY = b"\x00HBVER?\n"
WUART_VERSION_REPLY_PREFIX = b"\x00HBVER="


class FrameType(IntEnum):
    DATA = 1
    BEGIN = 2
    END = 3
    ABORT = 4


_TYPES = frozenset(int(t) for t in FrameType)


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
    A frame that is still incomplete is abandoned as soon as a *complete,
    CRC-valid* frame starts inside it: bytes lost on the link (a radio frame
    dropped for good) must not hold the next frame -- typically END or ABORT
    -- back until unrelated later bytes fill the truncated frame's length.
    Counters: ``frames_ok``, ``bad_crc``, ``bad_header`` (unknown type or
    length > 64), ``truncated`` (incomplete frames abandoned that way),
    ``overlapped`` (CRC-valid frames dropped because another valid frame
    starts inside them -- a garbage header whose CRC matched by chance),
    ``garbage_bytes`` (bytes that did not end up in a good frame).  After a
    good frame, scanning resumes at the first plausible frame start inside
    it, if any (see ``feed``); those bytes are counted again, so for any
    input ``bytes fed + reused_bytes == bytes of good frames + garbage_bytes
    + pending_bytes``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.frames_ok = 0
        self.bad_crc = 0
        self.bad_header = 0
        self.truncated = 0
        self.overlapped = 0
        self.garbage_bytes = 0
        self.reused_bytes = 0

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    @property
    def bad_frames(self) -> int:
        return self.bad_crc + self.bad_header + self.truncated + self.overlapped

    def counters(self) -> dict[str, int]:
        return {"frames_ok": self.frames_ok, "bad_crc": self.bad_crc, "bad_header": self.bad_header,
                "truncated": self.truncated, "overlapped": self.overlapped, "garbage_bytes": self.garbage_bytes,
                "reused_bytes": self.reused_bytes, "pending_bytes": self.pending_bytes}

    @staticmethod
    def _check(buf: bytearray, pos: int) -> int:
        """Length of the frame at ``pos`` if it is complete and valid, 0 if incomplete, -1 if invalid.

        ``buf[pos:pos+2]`` must be the magic.
        """
        have = len(buf) - pos
        if have > 2 and (buf[pos + 2] >> 4) not in _TYPES:
            return -1
        if have < HEADER_LEN:
            return 0
        length = buf[pos + 9]
        if length > MAX_PAYLOAD:
            return -1
        total = HEADER_LEN + length + CRC_LEN
        if len(buf) - pos < total:
            return 0
        end = pos + HEADER_LEN + length
        if buf[end] | (buf[end + 1] << 8) != binascii.crc_hqx(buf[pos:end], 0xFFFF):
            return -1
        return total

    def _complete_frame_after_start(self, buf: bytearray, end: int) -> int:
        """Offset in 1..end-1 of the first complete, valid frame starting there, or -1.

        ``end`` is at most one maximal frame, so this scan is bounded.  A magic
        whose second byte lies just past ``end`` counts as starting inside.
        """
        pos = buf.find(MAGIC, 1, end + 1)
        while pos > 0:
            if self._check(buf, pos) > 0:
                return pos
            pos = buf.find(MAGIC, pos + 1, end + 1)
        return -1

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
            total = self._check(buf, 0)
            if total == 0:
                later = self._complete_frame_after_start(buf, len(buf))
                if later < 0:
                    break  # wait for the rest of the frame
                self.truncated += 1
                self.garbage_bytes += later
                del buf[:later]
                continue
            if total > 0:
                # A valid frame starting inside a valid frame: the outer one is almost surely a
                # CRC collision -- a garbage header (p ~ 2^-16), or a frame cut short by one byte
                # whose CRC high byte happens to be the next frame's 'H' (p ~ 2^-8) -- rather than
                # a payload that embeds a whole valid frame (p ~ 2^-36 per byte); keep the inner
                # one.  Only an inner frame that is already complete counts: waiting for one would
                # hold the outer frame back (e.g. every END whose CRC ends in 'H').
                inner = self._complete_frame_after_start(buf, total)
                if inner > 0:
                    self.overlapped += 1
                    self.garbage_bytes += inner
                    del buf[:inner]
                    continue
            if total < 0:
                if len(buf) >= HEADER_LEN and buf[9] <= MAX_PAYLOAD and (buf[2] >> 4) in _TYPES:
                    self.bad_crc += 1
                else:
                    self.bad_header += 1
                self.garbage_bytes += 1
                del buf[:1]
                continue
            _, type_flags, seq, chunk, frag, length = _HEADER.unpack_from(buf, 0)
            out.append(WuartFrame(FrameType(type_flags >> 4), seq, chunk, frag,
                                  bytes(buf[HEADER_LEN:HEADER_LEN + length]), type_flags & 0xF))
            self.frames_ok += 1
            # If a frame may still start inside this one (its rest not here yet), scan on from
            # there: should this frame have been a CRC collision, the real one is not lost.
            resume = self._plausible_start_inside(buf, total)
            if resume > 0:
                self.reused_bytes += total - resume
                del buf[:resume]
            else:
                del buf[:total]
        return out

    def _plausible_start_inside(self, buf: bytearray, total: int) -> int:
        """Offset in 1..total-1 of the first magic whose frame is incomplete but not (yet) invalid, or -1."""
        pos = buf.find(MAGIC, 1, total + 1)
        while pos > 0:
            if self._check(buf, pos) == 0:
                return pos
            pos = buf.find(MAGIC, pos + 1, total + 1)
        if len(buf) == total and buf[total - 1] == MAGIC[0]:
            return total - 1  # a trailing 'H' may be the first half of the next magic
        return -1

    def flush(self) -> list[WuartFrame]:
        """End of stream: give up on a pending incomplete frame and decode what follows its start.

        Not used on a live link (the firmware can stall for as long as the
        channel is jammed, so silence is not a frame boundary); for captures
        and tests that know no more bytes will come.
        """
        out: list[WuartFrame] = []
        while self._buf:
            before = len(self._buf)
            if self._buf.startswith(MAGIC) and self._check(self._buf, 0) == 0:
                self.truncated += 1
                self.garbage_bytes += 1
                del self._buf[:1]
            out += self.feed(b"")
            if len(self._buf) == before:
                break
        if self._buf[-1:] == MAGIC[:1] and len(self._buf) == 1:
            self.garbage_bytes += 1
            self._buf.clear()
        return out
