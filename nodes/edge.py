"""Edge server agent: ``python -m hilbed.nodes.edge``.

Loads the target model (CUDA when present, else CPU), accepts client
connections on TCP, reassembles each image's chunks, and at END or at the
deadline (its own clock) decodes whatever prefix of chunks arrived in time,
runs inference and replies with top-5 and its own timestamps. Reading and
inference run on separate threads so a busy model never delays the arrival
timestamps of the next image.

The listener faces the lab network, so it trusts nothing it reads: with a
run secret a connection must answer the CHALLENGE with the secret's HMAC
before anything else (else it is closed and counted); every allocation is
bounded by the listen ``limits`` (memory grows only with bytes received);
a malformed frame gets an error reply (a RESULT with ``error`` when its
message id is known, else an ERROR frame) and the connection keeps being
served; a stream that cannot be parsed any further is closed after the
replies already due. No input ends a reader thread with a traceback or
leaves its worker behind.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from hilbed.nodes import wire
from hilbed.nodes.agent import Agent, AgentError, run_agent
from hilbed.nodes.codecs import Codec, make_codec
from hilbed.nodes.events import AgentEvent
from hilbed.nodes.link.kind import LinkKind
from hilbed.nodes.link.registry import link_kind

log = logging.getLogger("hilbed.edge")

#: the edge's bounds unless ``listen(limits=...)`` says otherwise (the controller derives them from the scenario)
DEFAULT_LIMITS: dict[str, float] = {
    "max_chunks": 1024,                       # chunks one BEGIN may declare
    "max_message_bytes": 4 * 1024 * 1024,     # bytes one BEGIN may declare (sum of its chunk sizes)
    "max_buffered_bytes": 16 * 1024 * 1024,   # received bytes a connection holds (open + awaiting decode)
    "max_frame_bytes": 128 * 1024,            # one frame's payload (DATA carries at most packet_bytes + 10)
    "max_pending_messages": 64,               # closed messages a connection has waiting for its decoder
    "max_connections": 64,                    # connections served at once
    "max_open_s": 120.0,                      # a message stays open at most this long after its BEGIN
    "auth_timeout_s": 10.0,                   # time a new connection has to authenticate
}
_INT_LIMITS = {k for k, v in DEFAULT_LIMITS.items() if isinstance(v, int)}
MAX_SECRET_CHARS = 1024
CODEC_CACHE = 32  # codec instances the edge keeps (an LRU: hostile params cannot grow it)


def check_limits(limits: dict | None) -> dict:
    """DEFAULT_LIMITS updated by ``limits``; AgentError naming the key for an unknown or non-positive one."""
    out = dict(DEFAULT_LIMITS)
    for k, v in (limits or {}).items():
        if k not in DEFAULT_LIMITS:
            raise AgentError(f"unknown limit {k!r} (allowed: {', '.join(DEFAULT_LIMITS)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise AgentError(f"limit {k} must be a positive number, got {v!r}")
        out[k] = int(v) if k in _INT_LIMITS else float(v)
    if out["max_frame_bytes"] < 1024:
        raise AgentError("limit max_frame_bytes must be at least 1024")
    return out


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

    def __init__(self, edge: "EdgeAgent", sock: socket.socket, addr: tuple):
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


class EdgeAgent(Agent):
    name = "edge"

    def __init__(self) -> None:
        super().__init__()
        self.model = None
        self.codecs: collections.OrderedDict[str, Codec] = collections.OrderedDict()
        self._codecs_lock = threading.Lock()
        self.server: socket.socket | None = None
        self.secret: str | None = None
        self.limits: dict = dict(DEFAULT_LIMITS)
        self.sessions: set[Session] = set()
        self._sessions_lock = threading.Lock()
        self.infer_lock = threading.Lock()
        #: link kinds receiving by their own path (radios), by kind name
        self.receivers: dict[str, LinkKind] = {}
        #: messages whose data arrives by a side channel: (via, key) -> message
        self.side_inbox: dict[tuple, Incoming] = {}
        self._stats_lock = threading.Lock()
        self._peak_buffered = 0
        self.stats = {"messages": 0, "decoded": 0, "late_packets": 0, "connections": 0, "bad_frames": 0,
                      "bad_streams": 0, "rejected_connections": 0, "rejections": {}, "rejected_messages": 0,
                      "failed_messages": 0, "discarded_frames": 0, "error_replies": 0, "void_messages": 0,
                      "reader_errors": 0, "accept_errors": 0}

    # -- ops --------------------------------------------------------------
    def op_load(self, model: str, device: str = "auto", size: int = 32) -> dict:
        from hilbed.nodes.workload.models import load_model

        def progress(msg: str, frac: float) -> None:
            self.event(AgentEvent.PROGRESS, what="train model", message=msg, fraction=frac)

        t0 = time.monotonic()
        self.model = load_model(model, device, size, progress)
        warm = np.zeros((1, size, size, 3), np.uint8)
        self.model.predict(warm)
        import torch
        return {"model": model, "device": str(self.model.device), "classes": list(self.model.classes),
                "facts": {k: v for k, v in self.model.facts.items() if k != "config"},
                "load_s": time.monotonic() - t0, "torch": torch.__version__,
                "cuda": torch.cuda.is_available(),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}

    def op_listen(self, host: str = "127.0.0.1", port: int = 0, secret: str | None = None,
                  limits: dict | None = None) -> dict:
        """Listen for clients on ``host:port``; with ``secret`` only connections that prove it are served.

        ``limits`` overrides :data:`DEFAULT_LIMITS` key by key. Called again, it keeps the socket and
        applies the new secret and limits to connections accepted from then on.
        """
        if secret is not None and (not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET_CHARS):
            raise AgentError(f"secret must be a non-empty string of at most {MAX_SECRET_CHARS} characters")
        self.limits = check_limits(limits)
        self.secret = secret
        if self.server is None:
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind((host, port))
            srv.listen(64)
            self.server = srv
            threading.Thread(target=self._accept_loop, daemon=True, name="edge-accept").start()
        bound = self.server.getsockname()
        return {"port": bound[1], "host": bound[0], "authenticated": secret is not None,
                "wire_version": wire.VERSION, "limits": dict(self.limits)}

    def op_stats(self) -> dict:
        with self._sessions_lock:
            sessions = list(self.sessions)
        with self._stats_lock:
            out = {**self.stats, "rejections": dict(self.stats["rejections"])}
        return {**out, "open_connections": len(sessions),
                "buffered_bytes": sum(s.budget.used for s in sessions),
                "buffered_bytes_peak": max([s.budget.peak for s in sessions] + [self._peak_buffered]),
                "authenticated": self.secret is not None, "limits": dict(self.limits),
                "receivers": {k: rx.receiver_stats() for k, rx in self.receivers.items()}}

    def op_open_receiver(self, kind: str, spec: dict) -> dict:
        """Receive a link kind's data by its own path (radios); returns the kind's facts (firmware, port)."""
        self.op_close_receiver(kind)
        self.receivers[kind] = link_kind(kind)
        return self.receivers[kind].open_receiver(self, spec)

    def op_close_receiver(self, kind: str) -> dict:
        rx = self.receivers.pop(kind, None)
        return rx.close_receiver(self) if rx is not None else {}

    # -- for link kinds' receivers ---------------------------------------
    def side_message(self, via: str, key: list) -> Incoming | None:
        """The open message a side channel's data belongs to (announced by its BEGIN on TCP)."""
        return self.side_inbox.get((via, tuple(key)))

    def count(self, stat: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[stat] = self.stats.get(stat, 0) + n

    def reject(self, reason: str) -> None:
        with self._stats_lock:
            self.stats["rejected_connections"] += 1
            self.stats["rejections"][reason] = self.stats["rejections"].get(reason, 0) + 1

    def finish_message(self, inc: Incoming, how: str) -> None:
        self._finish(inc, how)

    # -- serving ----------------------------------------------------------
    def _accept_loop(self) -> None:
        srv = self.server
        assert srv is not None
        while not self._stopping.is_set():
            try:
                conn, addr = srv.accept()
            except OSError:
                if self.server is not srv or srv.fileno() < 0:
                    return  # closed
                self.count("accept_errors")  # e.g. out of file descriptors: keep serving the others
                time.sleep(0.1)
                continue
            try:
                with self._sessions_lock:
                    busy = len(self.sessions) >= int(self.limits["max_connections"])
                if busy:
                    self.reject("busy")
                    conn.close()
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:  # a client that stops reading blocks a reply at most this long
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 30, 0))
                except (OSError, struct.error):
                    pass
                sess = Session(self, conn, addr)
                with self._sessions_lock:
                    self.sessions.add(sess)
                self.count("connections")
                sess.start()
            except Exception as exc:
                self.count("accept_errors")
                log.warning("could not serve %s: %s", addr, exc)
                try:
                    conn.close()
                except OSError:
                    pass

    def _forget(self, sess: Session) -> None:
        with self._sessions_lock:
            self.sessions.discard(sess)
        with self._stats_lock:
            self._peak_buffered = max(self._peak_buffered, sess.budget.peak)

    def _finish(self, inc: Incoming, how: str) -> None:
        """Close a message exactly once and queue it for decoding."""
        with inc.lock:
            if inc.closed:
                return
            inc.closed = True
            inc.end_flag = how
        if inc.meta.get("via"):
            key = (inc.meta["via"], tuple(inc.meta["via_key"]))
            if self.side_inbox.get(key) is inc:
                self.side_inbox.pop(key, None)
        assert inc.work is not None
        inc.work.put(inc)

    def _void_result(self, msg_id: int, reason: int, n_chunks: int, t_ns: int) -> dict:
        """The reply for a message whose header never arrived: nothing received, nothing decoded."""
        return {"msg_id": msg_id, "decoded": False, "top5": [], "top5_prob": [], "chunks_received": 0,
                "chunks_total": n_chunks, "bytes_received": 0, "late_packets": 0,
                "close": wire.VOID_CLOSE[reason], "edge_t_begin_ns": None, "edge_t_rx_end_ns": None,
                "edge_t_close_ns": t_ns, "edge_t_decode_start_ns": t_ns, "edge_t_decode_end_ns": t_ns,
                "edge_t_infer_end_ns": t_ns, "edge_t_reply_ns": time.time_ns(), "rssi_dbm": None}

    def _codec(self, name: str, params: dict) -> Codec:
        key = name + repr(sorted(params.items()))
        with self._codecs_lock:
            c = self.codecs.get(key)
            if c is not None:
                self.codecs.move_to_end(key)
                return c
        c = make_codec(name, params)
        with self._codecs_lock:
            self.codecs[key] = c
            while len(self.codecs) > CODEC_CACHE:
                self.codecs.popitem(last=False)
        return c

    def _process(self, inc: Incoming) -> dict:
        if self.model is None:
            raise AgentError("model not loaded")
        self.count("messages")
        t_close = time.time_ns()
        codec = self._codec(inc.meta["codec"], inc.meta.get("params") or {})
        prefix = inc.prefix()
        total = len(inc.chunk_sizes)
        t_dec0 = time.time_ns()
        # Split-computing codecs (entropic student, CR+BQ) decode to the features that
        # replace the model's first stage and classify with their own later stages;
        # every other codec decodes to pixels for the edge's model.
        split = codec.split_computing
        if split:
            decoded = codec.decode_features(prefix, total) if prefix else None
        else:
            decoded = codec.decode(prefix, total) if prefix else None
        t_dec1 = time.time_ns()
        top5: list[int] = []
        probs: list[float] = []
        t_inf1 = t_dec1
        if decoded is not None:
            with self.infer_lock:
                p = codec.predict_features(decoded)[0] if split else self.model.predict(decoded[None])[0]
            idx = np.argsort(-p)[:5]
            top5 = [int(i) for i in idx]
            probs = [float(p[i]) for i in idx]
            t_inf1 = time.time_ns()
            self.count("decoded")
        extra_top5 = None
        if decoded is not None:  # e.g. AdaCompress's reference upload; [] for most codecs
            extra = codec.decode_extra(prefix, total)
            if extra:
                with self.infer_lock:
                    ps = self.model.predict(np.stack(extra))
                extra_top5 = [[int(i) for i in np.argsort(-p)[:5]] for p in ps]
        return {
            "msg_id": inc.meta["msg_id"], "decoded": decoded is not None, "top5": top5, "top5_prob": probs,
            "chunks_received": len(prefix), "chunks_total": total,
            "bytes_received": inc.bytes_received, "late_packets": inc.late_packets, "close": inc.end_flag,
            "edge_t_begin_ns": inc.t_begin_ns, "edge_t_rx_end_ns": inc.t_last_rx_ns,
            "edge_t_close_ns": t_close, "edge_t_decode_start_ns": t_dec0, "edge_t_decode_end_ns": t_dec1,
            "edge_t_infer_end_ns": t_inf1, "edge_t_reply_ns": time.time_ns(),
            "rssi_dbm": (sum(inc.rssi) / len(inc.rssi)) if inc.rssi else None,
            **({"extra_top5": extra_top5} if extra_top5 is not None else {}),
        }

    def teardown(self) -> None:
        for kind in list(self.receivers):
            self.op_close_receiver(kind)
        if self.server is not None:
            srv, self.server = self.server, None
            for stop in (lambda: srv.shutdown(socket.SHUT_RDWR), srv.close):  # shutdown wakes a blocked accept
                try:
                    stop()
                except OSError:
                    pass
        with self._sessions_lock:
            sessions = list(self.sessions)
        for sess in sessions:
            sess.shutdown()


if __name__ == "__main__":
    run_agent(EdgeAgent)
