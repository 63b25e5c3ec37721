"""Framing of the client <-> edge data stream (wire version 2).

Every frame is ``b"HB" | type u8 | length u32 (big endian) | payload``. DATA
frames are self-contained (message id, chunk index, byte offset) so a link
may drop or cut packets at frame boundaries and the stream stays parseable.
Per image the client sends BEGIN (a compact binary header: ~24 bytes for a
one-chunk image, where the JSON header it replaces took ~184), DATA frames
and END; the codec's name and parameters travel once per connection in a
CODEC frame keyed by a one-byte id. CHALLENGE/AUTH/WELCOME authenticate the
connection with the run's secret; VOID tells the edge, after the deadline,
that a message's header never made it; ERROR reports a problem the edge
could not tie to a message. The byte layout is in docs/links.md.

Parsing never trusts a length: every parser raises :class:`Malformed`
(carrying the message id when it could be read) and the reader refuses a
frame longer than its ``max_payload`` before buffering it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import select
import socket
import struct
from dataclasses import dataclass, field

VERSION = 2
MAGIC = b"HB"
HDR = struct.Struct(">2sBI")  # magic, type, payload length
DATA_HDR = struct.Struct(">IHI")  # message id, chunk index, offset in chunk
END_HDR = struct.Struct(">IB")  # message id, flags
BEGIN_FIXED = struct.Struct(">IBBQ")  # message id, codec id, flags, deadline on the edge clock (ns)
VOID_HDR = struct.Struct(">IB")  # message id, reason
CHALLENGE_HDR = struct.Struct(">BB16s")  # version, flags, nonce

BEGIN, DATA, END, RESULT, CODEC, VOID, CHALLENGE, AUTH, WELCOME, ERROR = range(1, 11)
FRAME_NAMES = {BEGIN: "BEGIN", DATA: "DATA", END: "END", RESULT: "RESULT", CODEC: "CODEC", VOID: "VOID",
               CHALLENGE: "CHALLENGE", AUTH: "AUTH", WELCOME: "WELCOME", ERROR: "ERROR"}
END_ABORTED = 1
BEGIN_VIA = 1  # BEGIN flag: the data comes by a side channel (radio); a via section follows the sizes
CHALLENGE_AUTH_REQUIRED = 1
#: VOID reasons: the header could not leave before the deadline / the link lost it
VOID_REFUSED, VOID_LOST = 1, 2
VOID_CLOSE = {VOID_REFUSED: "unsent", VOID_LOST: "header_lost"}

#: what a reader accepts by default (the edge passes its own, smaller, limit)
MAX_PAYLOAD = 16 * 1024 * 1024
MAX_CODEC_SPEC = 4096  # bytes of a CODEC frame's JSON
MAX_VIA_NAME = 32
MAX_VIA_KEYS = 8
#: bytes a DATA frame adds to its payload on the wire
DATA_OVERHEAD = HDR.size + DATA_HDR.size
END_BYTES = HDR.size + END_HDR.size
#: connection authentication: HMAC-SHA256(secret, AUTH_CONTEXT + nonce), first AUTH_TAG_BYTES bytes
AUTH_CONTEXT = b"hilbed-wire-auth/2"
AUTH_TAG_BYTES = 16
NONCE_BYTES = 16


class WireError(Exception):
    """The byte stream cannot be parsed any further (bad magic, oversized length): close the connection."""


class Malformed(ValueError):
    """One frame's payload is invalid; the stream itself is still in sync."""

    def __init__(self, text: str, msg_id: int | None = None):
        super().__init__(text)
        self.msg_id = msg_id


# --------------------------------------------------------------- varints ---

def put_varint(out: bytearray, v: int) -> None:
    """LEB128 unsigned (7 bits a byte, low first): 1 byte below 128, 2 below 16384, 3 below 2 MiB."""
    if v < 0:
        raise ValueError(f"varint of a negative number {v}")
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def get_varint(buf: bytes, pos: int, max_bytes: int = 10) -> tuple[int, int]:
    """(value, next position); Malformed when truncated or longer than ``max_bytes``."""
    v = shift = 0
    for i in range(max_bytes):
        if pos + i >= len(buf):
            raise Malformed("truncated varint")
        b = buf[pos + i]
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, pos + i + 1
        shift += 7
    raise Malformed("varint too long")


# ---------------------------------------------------------------- frames ---

def frame(ftype: int, payload: bytes) -> bytes:
    return HDR.pack(MAGIC, ftype, len(payload)) + payload


@dataclass
class Begin:
    """A message's header as the edge needs it (nothing else crosses the link per image)."""

    msg_id: int
    codec_id: int
    deadline_edge_ns: int
    chunk_sizes: list[int]
    via: str | None = None
    via_key: list = field(default_factory=list)


def begin_frame(b: Begin) -> bytes:
    """``msg u32 | codec id u8 | flags u8 | deadline u64 | n varint | n x size varint [| via]``."""
    if not 0 <= b.deadline_edge_ns < 1 << 64:
        raise ValueError(f"deadline {b.deadline_edge_ns} out of range")
    out = bytearray(BEGIN_FIXED.pack(b.msg_id & 0xFFFFFFFF, b.codec_id, BEGIN_VIA if b.via else 0,
                                     b.deadline_edge_ns))
    put_varint(out, len(b.chunk_sizes))
    for n in b.chunk_sizes:
        put_varint(out, n)
    if b.via:
        name = b.via.encode()
        if len(name) > MAX_VIA_NAME or len(b.via_key) > MAX_VIA_KEYS:
            raise ValueError("via name or key too long")
        out.append(len(name))
        out += name
        out.append(len(b.via_key))
        for k in b.via_key:  # 0 = null, else value + 1
            put_varint(out, 0 if k is None else int(k) + 1)
    return frame(BEGIN, bytes(out))


def parse_begin(payload: bytes, max_chunks: int) -> Begin:
    """The header of a BEGIN payload; refuses more than ``max_chunks`` sizes before reading them."""
    if len(payload) < 4:
        raise Malformed(f"BEGIN of {len(payload)} bytes")
    msg = struct.unpack_from(">I", payload)[0]
    if len(payload) < BEGIN_FIXED.size + 1:
        raise Malformed(f"BEGIN of {len(payload)} bytes", msg)
    try:
        msg, codec_id, flags, deadline = BEGIN_FIXED.unpack_from(payload)
        pos = BEGIN_FIXED.size
        n, pos = get_varint(payload, pos)
        if n > max_chunks:
            raise Malformed(f"BEGIN declares {n} chunks (limit {max_chunks})", msg)
        sizes = []
        for _ in range(n):
            s, pos = get_varint(payload, pos)
            sizes.append(s)
        via, key = None, []
        if flags & BEGIN_VIA:
            if pos >= len(payload):
                raise Malformed("BEGIN via section missing")
            ln = payload[pos]
            pos += 1
            if ln == 0 or ln > MAX_VIA_NAME or pos + ln > len(payload):
                raise Malformed("bad via name")
            via = payload[pos:pos + ln].decode("ascii")
            pos += ln
            if pos >= len(payload) or payload[pos] > MAX_VIA_KEYS:
                raise Malformed("bad via key")
            nk = payload[pos]
            pos += 1
            for _ in range(nk):
                k, pos = get_varint(payload, pos)
                key.append(None if k == 0 else k - 1)
        if flags & ~BEGIN_VIA:
            raise Malformed(f"unknown BEGIN flags {flags:#x}")
        if pos != len(payload):
            raise Malformed(f"{len(payload) - pos} trailing bytes after BEGIN")
    except Malformed as exc:
        exc.msg_id = msg
        raise
    except (UnicodeDecodeError, struct.error) as exc:
        raise Malformed(f"bad BEGIN: {exc}", msg) from None
    return Begin(msg, codec_id, deadline, sizes, via, key)


def codec_frame(codec_id: int, codec: str, params: dict | None) -> bytes:
    """``codec id u8 | JSON {"codec", "params"}``: the codec spec, once per connection."""
    spec = json.dumps({"codec": codec, "params": params or {}}, separators=(",", ":"), sort_keys=True).encode()
    if len(spec) > MAX_CODEC_SPEC:
        raise ValueError(f"codec spec of {len(spec)} bytes (limit {MAX_CODEC_SPEC})")
    return frame(CODEC, bytes([codec_id]) + spec)


def parse_codec(payload: bytes) -> tuple[int, str, dict]:
    if len(payload) < 2 or len(payload) > 1 + MAX_CODEC_SPEC:
        raise Malformed(f"CODEC of {len(payload)} bytes")
    try:
        spec = json.loads(payload[1:])
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"CODEC is not JSON: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("codec"), str) or \
            not isinstance(spec.get("params", {}), dict):
        raise Malformed("CODEC needs {codec: str, params: object}")
    return payload[0], spec["codec"], spec.get("params") or {}


def data_frame(msg: int, chunk: int, offset: int, data: bytes) -> bytes:
    return frame(DATA, DATA_HDR.pack(msg & 0xFFFFFFFF, chunk, offset) + data)


def parse_data(payload: bytes) -> tuple[int, int, int, bytes]:
    if len(payload) < DATA_HDR.size:
        raise Malformed(f"DATA of {len(payload)} bytes", struct.unpack_from(">I", payload)[0]
                        if len(payload) >= 4 else None)
    msg, chunk, off = DATA_HDR.unpack_from(payload)
    return msg, chunk, off, payload[DATA_HDR.size:]


def end_frame(msg: int, aborted: bool) -> bytes:
    return frame(END, END_HDR.pack(msg & 0xFFFFFFFF, END_ABORTED if aborted else 0))


def parse_end(payload: bytes) -> tuple[int, bool]:
    if len(payload) != END_HDR.size:
        raise Malformed(f"END of {len(payload)} bytes", struct.unpack_from(">I", payload)[0]
                        if len(payload) >= 4 else None)
    msg, flags = END_HDR.unpack_from(payload)
    return msg, bool(flags & END_ABORTED)


def void_frame(msg: int, reason: int, n_chunks: int) -> bytes:
    out = bytearray(VOID_HDR.pack(msg & 0xFFFFFFFF, reason))
    put_varint(out, n_chunks)
    return frame(VOID, bytes(out))


def parse_void(payload: bytes, max_chunks: int) -> tuple[int, int, int]:
    if len(payload) < VOID_HDR.size + 1:
        raise Malformed(f"VOID of {len(payload)} bytes")
    msg, reason = VOID_HDR.unpack_from(payload)
    try:
        n, pos = get_varint(payload, VOID_HDR.size)
    except Malformed as exc:
        exc.msg_id = msg
        raise
    if reason not in VOID_CLOSE or n > max_chunks or pos != len(payload):
        raise Malformed("bad VOID", msg)
    return msg, reason, n


def challenge_frame(nonce: bytes, auth_required: bool) -> bytes:
    return frame(CHALLENGE, CHALLENGE_HDR.pack(VERSION, CHALLENGE_AUTH_REQUIRED if auth_required else 0, nonce))


def parse_challenge(payload: bytes) -> tuple[int, bool, bytes]:
    if len(payload) != CHALLENGE_HDR.size:
        raise Malformed(f"CHALLENGE of {len(payload)} bytes")
    version, flags, nonce = CHALLENGE_HDR.unpack(payload)
    return version, bool(flags & CHALLENGE_AUTH_REQUIRED), nonce


def auth_tag(secret: str, nonce: bytes) -> bytes:
    return hmac.new(secret.encode(), AUTH_CONTEXT + nonce, hashlib.sha256).digest()[:AUTH_TAG_BYTES]


def auth_frame(secret: str, nonce: bytes) -> bytes:
    return frame(AUTH, bytes([VERSION]) + auth_tag(secret, nonce))


def check_auth(secret: str, nonce: bytes, payload: bytes) -> bool:
    """Constant-time check of an AUTH payload against the secret and this connection's nonce."""
    if len(payload) != 1 + AUTH_TAG_BYTES or payload[0] != VERSION:
        return False
    return hmac.compare_digest(payload[1:], auth_tag(secret, nonce))


def result_frame(result: dict) -> bytes:
    return frame(RESULT, json.dumps(result, separators=(",", ":")).encode())


def error_frame(msg_id: int | None, text: str) -> bytes:
    return frame(ERROR, json.dumps({"msg_id": msg_id, "error": text[:500]}, separators=(",", ":")).encode())


@dataclass
class Frame:
    type: int
    payload: bytes

    def json(self) -> dict:
        return json.loads(self.payload)

    def data(self) -> tuple[int, int, int, bytes]:
        return parse_data(self.payload)

    def end(self) -> tuple[int, bool]:
        return parse_end(self.payload)


class FrameReader:
    """Reads frames from a socket; ``read(timeout)`` returns None on timeout.

    Waits with ``poll`` instead of changing the socket's timeout, so another
    thread's ``sendall`` on the same socket keeps its own blocking mode.
    A length above ``max_payload`` is refused before anything is buffered.
    """

    def __init__(self, sock: socket.socket, max_payload: int = MAX_PAYLOAD):
        self.sock = sock
        self.buf = bytearray()
        self.closed = False
        self.max_payload = max_payload
        self.bytes_read = 0
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)

    def _parse(self) -> Frame | None:
        if len(self.buf) < HDR.size:
            if self.buf and self.buf[:len(MAGIC)] != MAGIC[:len(self.buf)]:
                raise WireError(f"bad frame header {bytes(self.buf[:HDR.size])!r}")
            return None
        magic, ftype, n = HDR.unpack_from(self.buf)
        if magic != MAGIC:
            raise WireError(f"bad frame header {bytes(self.buf[:HDR.size])!r}")
        if n > self.max_payload:
            raise WireError(f"frame length {n} above the limit {self.max_payload}")
        if len(self.buf) < HDR.size + n:
            return None
        payload = bytes(self.buf[HDR.size:HDR.size + n])
        del self.buf[:HDR.size + n]
        return Frame(ftype, payload)

    def read(self, timeout: float | None) -> Frame | None:
        f = self._parse()
        if f is not None:
            return f
        while True:
            ready = self._poll.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
            if not ready:
                return None
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError, InterruptedError):
                continue
            if not data:
                self.closed = True
                raise EOFError("peer closed")
            self.bytes_read += len(data)
            self.buf += data
            f = self._parse()
            if f is not None:
                return f
            if timeout is not None:
                return None  # partial frame: let the caller check its deadline
