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

Inference of the main model can be batched across connections
(``batching`` op, :mod:`hilbed.nodes.batching`): each connection's worker
submits its decoded image with its deadline to one batcher thread and waits
for its row of one ``predict`` over the batch. Off (``max_batch`` 1, the
default) each worker runs ``predict`` on its one image under the inference
lock, as before. Split-computing codecs (their own later stages) and codecs'
extra reference images are never batched: they run on the worker under the
same lock. Every reply says ``batch_size`` and ``batch_wait_ms``.
"""

from __future__ import annotations

import collections
import logging
import math
import socket
import struct
import threading
import time

import numpy as np

from hilbed.nodes import wire
from hilbed.nodes.agent import Agent, AgentError, run_agent
from hilbed.nodes.batching import MAX_BATCH_LIMIT, MAX_WAIT_MS_LIMIT, Batcher, BatcherClosed
from hilbed.nodes.codecs import Codec, make_codec

# the connection's classes live in edge_session.py; imported here for callers of hilbed.nodes.edge
from hilbed.nodes.edge_session import Budget, Incoming, Session  # noqa: F401
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
INFER_TIMEOUT_S = 120.0  # a worker waits this long for its batch's result before answering with an error


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
        #: one inference at a time on the model's device (the batcher's thread takes it too)
        self.infer_lock = threading.Lock()
        self.batching: dict = {"max_batch": 1, "max_wait_ms": 0.0, "amp": False}
        self._batcher: Batcher | None = None  # None: batching off (each worker infers its own image)
        self._batching_lock = threading.Lock()
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
                "batching": {**self.batching, **self._amp_facts()},
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
                "batching": {**self.batching, **(self._batcher.describe() if self._batcher else {})},
                "receivers": {k: rx.receiver_stats() for k, rx in self.receivers.items()}}

    def op_batching(self, max_batch: int, max_wait_ms: float, amp: bool = False) -> dict:
        """Batch the main model's inference across connections; returns the settings applied.

        ``max_batch`` 1..256 images per ``predict`` (1: off, each image alone as before);
        ``max_wait_ms`` 0..1000: how long a batch may wait for more images after its first
        (never past its earliest deadline less the estimated inference time). ``amp``: float16
        autocast, applied on CUDA only; elsewhere it is ignored and ``amp_note`` says why.
        Applies to images inferred from now on; a previous batcher finishes its queued images.
        """
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH_LIMIT:
            raise AgentError(f"batching max_batch must be an integer 1..{MAX_BATCH_LIMIT}, got {max_batch!r}")
        if (isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or not math.isfinite(max_wait_ms)
                or not 0 <= max_wait_ms <= MAX_WAIT_MS_LIMIT):
            raise AgentError(f"batching max_wait_ms must be a number 0..{MAX_WAIT_MS_LIMIT:g}, got {max_wait_ms!r}")
        if not isinstance(amp, bool):
            raise AgentError(f"batching amp must be true or false, got {amp!r}")
        with self._batching_lock:
            old = self._batcher
            self.batching = {"max_batch": max_batch, "max_wait_ms": float(max_wait_ms), "amp": amp}
            self._batcher = Batcher(self._predict_batch, max_batch, max_wait_ms) if max_batch > 1 else None
        if old is not None:
            old.close(drain=True)
        return {**self.batching, **self._amp_facts()}

    def _amp_facts(self) -> dict:
        """Whether ``amp`` takes effect on the loaded model, and a note when it is asked for and does not."""
        if not self.batching["amp"]:
            return {"amp_applied": False}
        if self.model is None:
            return {"amp_applied": None, "amp_note": "no model loaded yet: amp applies only to a torch model on CUDA"}
        if getattr(self.model, "amp_applies", False):
            return {"amp_applied": True}
        where = getattr(self.model, "device", "an unknown device")
        return {"amp_applied": False,
                "amp_note": f"amp ignored: float16 autocast applies to a torch model on CUDA; this model runs on {where}"}

    def op_warm_codec(self, codec: str, params: dict) -> dict:
        """Build a trial's codec (weights, torch, compressai) now, before its stream starts.

        Built lazily at the first image instead, a neural codec's seconds of loading fell on the first
        images' deadlines (measured: 51 of 2,000 entropic-student images missed a 2 s deadline).
        """
        t0 = time.monotonic()
        try:
            c = self._codec(codec, params)
        except Exception as exc:  # a codec that cannot load here: say so; its images will fail the same way
            raise AgentError(f"codec {codec!r} does not load on the edge: {exc}") from None
        return {"codec": codec, "load_s": round(time.monotonic() - t0, 3),
                "split_computing": bool(c.split_computing)}

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
        batch_size: int | None = None
        batch_wait_ms: float | None = None
        if decoded is not None:
            if split:  # the codec's own stages: never batched (see the module docstring)
                t_ready = time.time_ns()
                with self.infer_lock:
                    t_inf0 = time.time_ns()
                    p = codec.predict_features(decoded)[0]
                batch_size, batch_wait_ms = 1, (t_inf0 - t_ready) / 1e6
            else:
                p, batch_size, batch_wait_ms = self._infer(decoded, inc.deadline_ns)
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
                    ps = self._predict(np.stack(extra))
                extra_top5 = [[int(i) for i in np.argsort(-p)[:5]] for p in ps]
        return {
            "msg_id": inc.meta["msg_id"], "decoded": decoded is not None, "top5": top5, "top5_prob": probs,
            "chunks_received": len(prefix), "chunks_total": total,
            "bytes_received": inc.bytes_received, "late_packets": inc.late_packets, "close": inc.end_flag,
            "edge_t_begin_ns": inc.t_begin_ns, "edge_t_rx_end_ns": inc.t_last_rx_ns,
            "edge_t_close_ns": t_close, "edge_t_decode_start_ns": t_dec0, "edge_t_decode_end_ns": t_dec1,
            "edge_t_infer_end_ns": t_inf1, "edge_t_reply_ns": time.time_ns(),
            "rssi_dbm": (sum(inc.rssi) / len(inc.rssi)) if inc.rssi else None,
            "batch_size": batch_size, "batch_wait_ms": batch_wait_ms,
            "classified_by": None if decoded is None else ("codec" if split else "edge-model"),
            **({"extra_top5": extra_top5} if extra_top5 is not None else {}),
        }

    def _predict(self, images: np.ndarray) -> np.ndarray:
        """The main model on a batch (the caller holds the inference lock), with AMP when set."""
        if self.batching["amp"] and getattr(self.model, "amp_applies", False):
            return self.model.predict(images, amp=True)
        return self.model.predict(images)

    def _predict_batch(self, images: np.ndarray) -> np.ndarray:
        """The batcher's call: one inference at a time on the device, as for every other caller."""
        with self.infer_lock:
            return self._predict(images)

    def _infer(self, image: np.ndarray, deadline_ns: int) -> tuple[np.ndarray, int, float]:
        """One decoded image through the main model: (probabilities, batch size, ms waited for inference)."""
        for _ in range(3):  # a batcher replaced by the batching op under us: use the new one
            batcher = self._batcher
            if batcher is None:
                t_ready = time.time_ns()
                with self.infer_lock:
                    t_inf0 = time.time_ns()
                    p = self._predict(image[None])[0]
                return p, 1, (t_inf0 - t_ready) / 1e6
            try:
                t = batcher.submit(image, deadline_ns)
            except BatcherClosed:
                if self._batcher is batcher:
                    raise
                continue
            # generous: the batch waits at most max_wait_ms, then only for the model
            t.result(timeout=INFER_TIMEOUT_S)
            return t.probs, t.batch_size, t.batch_wait_ms
        raise BatcherClosed("batching was reconfigured repeatedly while this image waited")

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
        # after the connections: a worker still inferring gets its batch's result or a one-line error
        with self._batching_lock:
            batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close(drain=False, timeout=5.0)


if __name__ == "__main__":
    run_agent(EdgeAgent)
