"""Framing of the client <-> edge data stream.

Every frame is ``b"HB" | type u8 | length u32 | payload``. DATA frames are
self-contained (message id, chunk index, byte offset) so a link may drop or
cut packets at frame boundaries and the stream stays parseable. BEGIN/END are
small control frames; RESULT carries the edge's answer.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass

MAGIC = b"HB"
HDR = struct.Struct(">2sBI")  # magic, type, payload length
DATA_HDR = struct.Struct(">IHI")  # message id, chunk index, offset in chunk
END_HDR = struct.Struct(">IB")  # message id, flags

BEGIN, DATA, END, RESULT = 1, 2, 3, 4
END_ABORTED = 1
MAX_PAYLOAD = 16 * 1024 * 1024
#: bytes a DATA frame adds to its payload on the wire
DATA_OVERHEAD = HDR.size + DATA_HDR.size


class WireError(Exception):
    pass


def frame(ftype: int, payload: bytes) -> bytes:
    return HDR.pack(MAGIC, ftype, len(payload)) + payload


def begin_frame(meta: dict) -> bytes:
    return frame(BEGIN, json.dumps(meta, separators=(",", ":")).encode())


def data_frame(msg: int, chunk: int, offset: int, data: bytes) -> bytes:
    return frame(DATA, DATA_HDR.pack(msg, chunk, offset) + data)


def end_frame(msg: int, aborted: bool) -> bytes:
    return frame(END, END_HDR.pack(msg, END_ABORTED if aborted else 0))


def result_frame(result: dict) -> bytes:
    return frame(RESULT, json.dumps(result, separators=(",", ":")).encode())


@dataclass
class Frame:
    type: int
    payload: bytes

    def json(self) -> dict:
        return json.loads(self.payload)

    def data(self) -> tuple[int, int, int, bytes]:
        msg, chunk, off = DATA_HDR.unpack_from(self.payload)
        return msg, chunk, off, self.payload[DATA_HDR.size:]

    def end(self) -> tuple[int, bool]:
        msg, flags = END_HDR.unpack_from(self.payload)
        return msg, bool(flags & END_ABORTED)


class FrameReader:
    """Reads frames from a socket; ``read(timeout)`` returns None on timeout."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.closed = False

    def _parse(self) -> Frame | None:
        if len(self.buf) < HDR.size:
            return None
        magic, ftype, n = HDR.unpack_from(self.buf)
        if magic != MAGIC or n > MAX_PAYLOAD:
            raise WireError(f"bad frame header {bytes(self.buf[:HDR.size])!r}")
        if len(self.buf) < HDR.size + n:
            return None
        payload = bytes(self.buf[HDR.size:HDR.size + n])
        del self.buf[:HDR.size + n]
        return Frame(ftype, payload)

    def read(self, timeout: float | None) -> Frame | None:
        f = self._parse()
        if f is not None:
            return f
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return None
            if not data:
                self.closed = True
                raise EOFError("peer closed")
            self.buf += data
            f = self._parse()
            if f is not None:
                return f
