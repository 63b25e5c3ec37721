"""One client connection at the edge: its reader (frames -> messages) and its worker.

Split from ``edge.py`` so the server's listener, ops and inference stay apart
from the per-connection protocol handling. :class:`Incoming` is one image
being reassembled; :class:`Budget` bounds the bytes a connection holds; the
:class:`Session` reader parses frames (trusting nothing) and its worker
decodes, infers (through the edge's :meth:`~hilbed.nodes.edge.EdgeAgent._process`,
which may batch across sessions) and replies in order.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hilbed.nodes import wire

log = logging.getLogger("hilbed.edge")


class Budget:
    """Received bytes one connection holds, against its limit (thread-safe)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


@dataclass
class Incoming:
    meta: dict
    t_begin_ns: int
    chunk_sizes: list[int]
    deadline_ns: int
    #: received pieces: chunk -> offset -> bytes (storage grows with what arrives, never with what BEGIN declared)
    pieces: dict[int, dict[int, bytes]] = field(default_factory=dict)
    filled: dict[int, int] = field(default_factory=dict)
    chunk_rx_ns: dict[int, int] = field(default_factory=dict)
    t_last_rx_ns: int | None = None
    late_packets: int = 0
    end_flag: str = "deadline"  # how the message closed: end / aborted / deadline / disconnect / superseded
    closed: bool = False
    work: "Session | None" = None  # whose worker answers it
    rssi: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    budget: Budget | None = None
    held: int = 0
    #: set when the message broke a limit or carried bad data: answered with this error, not decoded
    error: str | None = None

    def add(self, chunk: int, off: int, data: bytes, t_ns: int) -> str | None:
        """Store a piece; the reason it was refused, or None."""
        if self.closed or self.error is not None:
            return "closed"
        if not 0 <= chunk < len(self.chunk_sizes):
            return f"chunk {chunk} of a {len(self.chunk_sizes)}-chunk message"
        size = self.chunk_sizes[chunk]
        if off + len(data) > size:
            return f"bytes {off}..{off + len(data)} beyond chunk {chunk} of {size} bytes"
        parts = self.pieces.setdefault(chunk, {})
        old = parts.get(off)
        grow = len(data) - (len(old) if old is not None else 0)
        have = self.filled.get(chunk, 0)
        if have + grow > size:
            return f"overlapping data in chunk {chunk}"
        if grow > 0 and self.budget is not None and not self.budget.take(grow):
            return f"connection buffer limit ({self.budget.limit} bytes) reached"
        if grow < 0 and self.budget is not None:
            self.budget.give(-grow)
        parts[off] = bytes(data)
        self.held += grow
        self.filled[chunk] = have + grow
        self.t_last_rx_ns = t_ns
        if self.filled[chunk] >= size:
            self.chunk_rx_ns.setdefault(chunk, t_ns)
        return None

    def fail(self, reason: str) -> None:
        """Answer this message with ``reason`` and free what it holds now."""
        if self.error is None:
            self.error = reason
        self.release()

    def release(self) -> None:
        if self.budget is not None and self.held:
            self.budget.give(self.held)
        self.held = 0
        self.pieces = {}

    def prefix(self) -> list[bytes]:
        """Complete chunks in order, up to the first missing one."""
        out = []
        for i, size in enumerate(self.chunk_sizes):
            parts = self.pieces.get(i)
            if parts is None or self.filled.get(i, 0) < size:
                break
            buf = bytearray()
            for off in sorted(parts):
                if off > len(buf):
                    break  # a gap
                buf += parts[off][len(buf) - off:]
            if len(buf) < size:
                break
            out.append(bytes(buf[:size]))
        return out

    @property
    def bytes_received(self) -> int:
        return sum(min(v, self.chunk_sizes[k]) for k, v in self.filled.items())


class Session:
    """One client connection: its reader (frames -> messages) and its worker (decode, infer, reply).

    The worker is the only writer after the handshake, so replies keep their order;
    a full queue makes the reader wait (back-pressure on the client) instead of growing.
    """

    def __init__(self, edge: Any, sock: socket.socket, addr: tuple):  # edge: the EdgeAgent (no import: no cycle)
        self.edge = edge
        self.sock = sock
        self.addr = addr
        self.limits = edge.limits
        self.secret = edge.secret
        self.work: queue.Queue = queue.Queue(maxsize=int(self.limits["max_pending_messages"]))
        self.budget = Budget(int(self.limits["max_buffered_bytes"]))
        self.codecs: dict[int, tuple[str, dict]] = {}
        self.cur: Incoming | None = None
        self.refused: int | None = None  # the last message id answered with an error at BEGIN
        self.alive = True
        self.authenticated = False
        self._send_lock = threading.Lock()
        self.worker = threading.Thread(target=self._work, daemon=True, name="edge-infer")
        self.reader = threading.Thread(target=self._read, daemon=True, name="edge-read")

    def start(self) -> None:
        self.worker.start()
        self.reader.start()

    # -- plumbing ----------------------------------------------------------
    def send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def put(self, item) -> None:
        """Hand an item to the worker; waits while its queue is full, drops it once the worker is gone."""
        while True:
            try:
                self.work.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self.worker.is_alive():
                    if isinstance(item, Incoming):
                        item.release()
                    return

    def shutdown(self) -> None:
        self.alive = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def reply_error(self, msg_id: int | None, text: str) -> None:
        """One error reply: a RESULT (its record gets the error) when the message is known, else ERROR."""
        if msg_id is None:
            self.put(wire.error_frame(None, text))
        else:
            self.put(wire.result_frame({"msg_id": msg_id, "error": text, "close": "rejected"}))

    # -- reader ------------------------------------------------------------
    def _read(self) -> None:
        reader = wire.FrameReader(self.sock, int(self.limits["max_frame_bytes"]))
        try:
            if self._handshake(reader):
                self._serve(reader)
        except (EOFError, OSError):
            pass
        except wire.WireError as exc:  # the stream is out of sync: nothing after this can be trusted
            self.edge.count("bad_frames")
            self.edge.count("bad_streams")
            log.warning("closing %s: %s", self.addr, exc)
            self.reply_error(None, f"closing the connection: {exc}")  # an open message is answered as it closes
        except Exception as exc:  # a bug here must cost one connection, not the reader's silence
            self.edge.count("reader_errors")
            log.warning("closing %s after an internal error: %s: %s", self.addr, type(exc).__name__, exc)
            log.debug("reader error", exc_info=True)
            self.reply_error(None, "internal error, closing the connection")
        finally:
            if self.cur is not None:
                self.edge._finish(self.cur, "disconnect")
                self.cur = None
            self.put(None)

    def _handshake(self, reader: wire.FrameReader) -> bool:
        """CHALLENGE the client; with a run secret only a correct AUTH lets it on (else it is closed)."""
        nonce = os.urandom(wire.NONCE_BYTES)
        self.send(wire.challenge_frame(nonce, self.secret is not None))
        if self.secret is None:
            return True
        t_end = time.monotonic() + float(self.limits["auth_timeout_s"])
        f = None
        try:
            while f is None and time.monotonic() < t_end:
                f = reader.read(max(0.0, t_end - time.monotonic()))
        except wire.WireError:
            f = None
        if f is None:
            why = "timeout"
        elif f.type != wire.AUTH:
            why = "no_auth"
        elif not wire.check_auth(self.secret, nonce, f.payload):
            why = "bad_auth"
        else:
            self.authenticated = True
            self.send(wire.frame(wire.WELCOME, b""))
            return True
        self.edge.reject(why)
        log.warning("rejected connection from %s (%s)", self.addr, why)
        self.reply_error(None, "authentication failed")
        return False

    def _serve(self, reader: wire.FrameReader) -> None:
        while True:
            cur = self.cur
            timeout = None if cur is None else max(0.0, (cur.deadline_ns - time.time_ns()) / 1e9)
            f = reader.read(timeout)
            now = time.time_ns()
            if cur is not None and now > cur.deadline_ns:
                self._close_cur("deadline")
            if f is None:
                continue
            try:
                self._dispatch(f, now)
            except wire.Malformed as exc:
                self._malformed(exc.msg_id, f"{wire.FRAME_NAMES.get(f.type, f'type {f.type}')}: {exc}")

    def _close_cur(self, how: str) -> None:
        if self.cur is not None:
            self.edge._finish(self.cur, how)
            self.cur = None

    def _malformed(self, msg_id: int | None, text: str) -> None:
        self.edge.count("bad_frames")
        cur = self.cur
        if cur is not None and msg_id == cur.meta["msg_id"]:
            with cur.lock:
                cur.fail(text)  # answered once, when it closes
        else:
            self.edge.count("rejected_messages" if msg_id is not None else "error_replies")
            self.reply_error(msg_id, text)

    def _dispatch(self, f: wire.Frame, now: int) -> None:
        if f.type == wire.DATA:
            self._on_data(f, now)
        elif f.type == wire.BEGIN:
            self._on_begin(f, now)
        elif f.type == wire.END:
            msg, aborted = wire.parse_end(f.payload)
            cur = self.cur
            if cur is not None and msg == cur.meta["msg_id"]:
                if cur.meta.get("via") and not aborted:
                    # the sender is done, but frames may still be in the side channel's
                    # buffers (a radio's): its own END (or the deadline) closes it
                    return
                self._close_cur("aborted" if aborted else "end")
        elif f.type == wire.CODEC:
            self._on_codec(f)
        elif f.type == wire.VOID:
            msg, reason, n = wire.parse_void(f.payload, int(self.limits["max_chunks"]))
            if self.cur is not None and self.cur.meta["msg_id"] == msg:
                return  # its header did arrive after all: it closes as usual
            self.edge.count("void_messages")
            self.put(("void", msg, reason, n, now))
        elif f.type == wire.AUTH:
            return  # a client authenticating with an edge that did not ask
        else:
            raise wire.Malformed(f"unknown frame type {f.type}")

    def _on_codec(self, f: wire.Frame) -> None:
        cid, name, params = wire.parse_codec(f.payload)
        self.codecs.pop(cid, None)
        from hilbed.nodes.codecs import validate_codec_params
        try:
            validate_codec_params(name, params)
        except Exception as exc:  # CodecParamsError and whatever a codec's validator raises
            raise wire.Malformed(f"codec {name!r}: {exc}") from None
        self.codecs[cid] = (name, params)

    def _on_begin(self, f: wire.Frame, now: int) -> None:
        lim = self.limits
        b = wire.parse_begin(f.payload, int(lim["max_chunks"]))
        self._close_cur("superseded")  # a previous message that never ended closes now
        spec = self.codecs.get(b.codec_id)
        if spec is None:
            raise wire.Malformed(f"codec id {b.codec_id} was not announced", b.msg_id)
        total = sum(b.chunk_sizes)
        if total > lim["max_message_bytes"]:
            self.refused = b.msg_id
            raise wire.Malformed(f"declares {total} bytes (limit {int(lim['max_message_bytes'])})", b.msg_id)
        deadline = min(b.deadline_edge_ns, now + int(lim["max_open_s"] * 1e9))
        meta = {"msg_id": b.msg_id, "codec": spec[0], "params": spec[1], "chunk_sizes": b.chunk_sizes,
                "deadline_edge_ns": b.deadline_edge_ns}
        if b.via:
            meta |= {"via": b.via, "via_key": b.via_key}
        inc = Incoming(meta, now, list(b.chunk_sizes), deadline, work=self, budget=self.budget)
        if b.via:
            self.edge.side_inbox[(b.via, tuple(b.via_key))] = inc
        self.cur = inc

    def _on_data(self, f: wire.Frame, now: int) -> None:
        msg, chunk, off, data = wire.parse_data(f.payload)
        cur = self.cur
        if cur is None or msg != cur.meta["msg_id"]:
            self.edge.count("discarded_frames" if msg == self.refused else "late_packets")
            return
        with cur.lock:
            why = cur.add(chunk, off, data, now)
        if why == "closed":
            self.edge.count("discarded_frames")
        elif why is not None:
            self.edge.count("failed_messages")
            with cur.lock:
                cur.fail(why)

    # -- worker ------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                item = self.work.get()
                if item is None:
                    return
                data = self._answer(item)
                if data is None or not self.alive:
                    continue
                try:
                    self.send(data)
                except OSError:
                    self.shutdown()
        finally:
            self.shutdown()
            try:
                self.sock.close()
            except OSError:
                pass
            self.edge._forget(self)
            while True:  # whatever is still queued holds bytes: free them
                try:
                    item = self.work.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, Incoming):
                    item.release()

    def _answer(self, item) -> bytes | None:
        """The frame that answers a queued item (None: nothing to send)."""
        if isinstance(item, bytes):
            return item
        if isinstance(item, tuple):  # ("void", msg, reason, n, t_ns)
            return wire.result_frame(self.edge._void_result(*item[1:]))
        inc: Incoming = item
        try:
            if not self.alive:
                return None
            if inc.error is not None:
                res = {"msg_id": inc.meta["msg_id"], "error": inc.error, "close": inc.end_flag,
                       "chunks_total": len(inc.chunk_sizes), "edge_t_begin_ns": inc.t_begin_ns,
                       "edge_t_close_ns": time.time_ns()}
            else:
                try:
                    res = self.edge._process(inc)
                except Exception as exc:  # a broken image must not kill the server
                    log.warning("processing message %s failed: %s: %s", inc.meta["msg_id"], type(exc).__name__, exc)
                    log.debug("processing failed", exc_info=True)
                    res = {"msg_id": inc.meta["msg_id"], "error": f"{type(exc).__name__}: {exc}"}
            return wire.result_frame(res)
        finally:
            inc.release()
