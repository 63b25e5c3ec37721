"""Edge server agent: ``python -m hilbed.nodes.edge``.

Loads the target model (CUDA when present, else CPU), accepts client
connections on TCP, reassembles each image's chunks, and at END or at the
deadline (its own clock) decodes whatever prefix of chunks arrived in time,
runs inference and replies with top-5 and its own timestamps. Reading and
inference run on separate threads so a busy model never delays the arrival
timestamps of the next image.
"""

from __future__ import annotations

import logging
import queue
import socket
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


@dataclass
class Incoming:
    meta: dict
    t_begin_ns: int
    chunk_sizes: list[int]
    deadline_ns: int
    got: dict[int, bytearray] = field(default_factory=dict)
    filled: dict[int, int] = field(default_factory=dict)
    chunk_rx_ns: dict[int, int] = field(default_factory=dict)
    t_last_rx_ns: int | None = None
    late_packets: int = 0
    end_flag: str = "deadline"  # how the message closed: end / aborted / deadline / disconnect
    closed: bool = False
    work: "queue.Queue | None" = None
    rssi: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, chunk: int, off: int, data: bytes, t_ns: int) -> None:
        if chunk >= len(self.chunk_sizes) or self.closed:
            return
        buf = self.got.setdefault(chunk, bytearray(self.chunk_sizes[chunk]))
        buf[off:off + len(data)] = data
        self.filled[chunk] = self.filled.get(chunk, 0) + len(data)
        self.t_last_rx_ns = t_ns
        if self.filled[chunk] >= self.chunk_sizes[chunk]:
            self.chunk_rx_ns.setdefault(chunk, t_ns)

    def prefix(self) -> list[bytes]:
        """Complete chunks in order, up to the first missing one."""
        out = []
        for i, size in enumerate(self.chunk_sizes):
            if self.filled.get(i, 0) < size or (size == 0 and i not in self.got):
                break
            out.append(bytes(self.got[i]))
        return out

    @property
    def bytes_received(self) -> int:
        return sum(min(v, self.chunk_sizes[k]) for k, v in self.filled.items())


class EdgeAgent(Agent):
    name = "edge"

    def __init__(self) -> None:
        super().__init__()
        self.model = None
        self.codecs: dict[str, Codec] = {}
        self.server: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.infer_lock = threading.Lock()
        #: link kinds receiving by their own path (radios), by kind name
        self.receivers: dict[str, LinkKind] = {}
        #: messages whose data arrives by a side channel: (via, key) -> message
        self.side_inbox: dict[tuple, Incoming] = {}
        self.stats = {"messages": 0, "decoded": 0, "late_packets": 0, "connections": 0, "bad_frames": 0}

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

    def op_listen(self, host: str = "127.0.0.1", port: int = 0) -> dict:
        if self.server is not None:
            return {"port": self.server.getsockname()[1]}
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, port))
        srv.listen(64)
        self.server = srv
        threading.Thread(target=self._accept_loop, daemon=True, name="edge-accept").start()
        return {"port": srv.getsockname()[1]}

    def op_stats(self) -> dict:
        return {**self.stats, "receivers": {k: rx.receiver_stats() for k, rx in self.receivers.items()}}

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
        self.stats[stat] = self.stats.get(stat, 0) + n

    def finish_message(self, inc: Incoming, how: str) -> None:
        self._finish(inc, how)

    # -- serving ----------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self.server is not None
        while not self._stopping.is_set():
            try:
                conn, addr = self.server.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns.append(conn)
            self.stats["connections"] += 1
            work: queue.Queue = queue.Queue()
            threading.Thread(target=self._worker, args=(conn, work), daemon=True, name="edge-infer").start()
            threading.Thread(target=self._reader, args=(conn, work), daemon=True, name="edge-read").start()

    def _reader(self, conn: socket.socket, work: queue.Queue) -> None:
        reader = wire.FrameReader(conn)
        cur: Incoming | None = None
        closed_ids: set[int] = set()
        try:
            while True:
                timeout = None
                if cur is not None:
                    timeout = max(0.0, (cur.deadline_ns - time.time_ns()) / 1e9)
                f = reader.read(timeout)
                now = time.time_ns()
                if cur is not None and now > cur.deadline_ns:
                    self._finish(cur, "deadline")
                    closed_ids.add(cur.meta["msg_id"])
                    cur = None
                if f is None:
                    continue
                if f.type == wire.BEGIN:
                    meta = f.json()
                    if cur is not None:  # previous message never ended: close it now
                        self._finish(cur, "superseded")
                        closed_ids.add(cur.meta["msg_id"])
                    cur = Incoming(meta, now, list(meta["chunk_sizes"]), int(meta["deadline_edge_ns"]), work=work)
                    if meta.get("via"):
                        self.side_inbox[(meta["via"], tuple(meta["via_key"]))] = cur
                elif f.type == wire.DATA:
                    msg, chunk, off, data = f.data()
                    if cur is not None and msg == cur.meta["msg_id"]:
                        cur.add(chunk, off, data, now)
                    else:
                        self.stats["late_packets"] += 1
                elif f.type == wire.END:
                    msg, aborted = f.end()
                    if cur is not None and msg == cur.meta["msg_id"]:
                        if cur.meta.get("via") and not aborted:
                            # the sender is done, but frames may still be in the side channel's
                            # buffers (a radio's): its own END (or the deadline) closes it
                            continue
                        self._finish(cur, "aborted" if aborted else "end")
                        closed_ids.add(msg)
                        cur = None
        except (EOFError, OSError):
            pass
        except wire.WireError as exc:
            self.stats["bad_frames"] += 1
            log.warning("closing connection on bad framing: %s", exc)
        if cur is not None:
            self._finish(cur, "disconnect")
        work.put(None)

    def _finish(self, inc: Incoming, how: str) -> None:
        """Close a message exactly once and queue it for decoding."""
        with inc.lock:
            if inc.closed:
                return
            inc.closed = True
            inc.end_flag = how
        if inc.meta.get("via"):
            self.side_inbox.pop((inc.meta["via"], tuple(inc.meta["via_key"])), None)
        assert inc.work is not None
        inc.work.put(inc)

    def _codec(self, name: str, params: dict) -> Codec:
        key = name + repr(sorted(params.items()))
        c = self.codecs.get(key)
        if c is None:
            c = self.codecs[key] = make_codec(name, params)
        return c

    def _worker(self, conn: socket.socket, work: queue.Queue) -> None:
        while True:
            inc = work.get()
            if inc is None:
                return
            try:
                res = self._process(inc)
            except Exception as exc:  # a broken image must not kill the server
                log.exception("processing failed")
                res = {"msg_id": inc.meta["msg_id"], "error": f"{type(exc).__name__}: {exc}"}
            try:
                conn.sendall(wire.result_frame(res))
            except OSError:
                return

    def _process(self, inc: Incoming) -> dict:
        if self.model is None:
            raise AgentError("model not loaded")
        self.stats["messages"] += 1
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
            self.stats["decoded"] += 1
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
            try:
                self.server.close()
            except OSError:
                pass
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


if __name__ == "__main__":
    run_agent(EdgeAgent)
