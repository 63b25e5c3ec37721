"""The edge's TCP listener against hostile input: no traceback, no hang, no escape.

Most cases run against a real edge agent process (its RSS is read from
/proc); the limit and thread cases use ``EdgeAgent`` in-process with a real
socket and small limits.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import numpy as np
import pytest

from hilbed.nodes import wire
from hilbed.nodes.codecs import make_codec
from hilbed.nodes.link.tcp import DirectLink
from hilbed.orchestrator.lab.transport import AgentHandle, LocalTransport

SECRET = "run-secret-for-tests"
GIB4 = 4 * 1024 ** 3


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _image_chunks() -> list[bytes]:
    img = (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)
    return make_codec("jpeg", {"quality": 60}).encode(img).chunks


JPEG = {"codec": "jpeg", "params": {"quality": 60}}


class Raw:
    """A hand-driven client: frames in, frames out, nothing checked for it."""

    def __init__(self, port: int, secret: str | None = SECRET, welcome: bool = True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = wire.FrameReader(self.sock)
        ch = self.read(5)
        assert ch is not None and ch.type == wire.CHALLENGE
        self.version, self.required, self.nonce = wire.parse_challenge(ch.payload)
        if secret is not None:
            self.sock.sendall(wire.auth_frame(secret, self.nonce))
            if welcome:
                w = self.read(5)
                assert w is not None and w.type == wire.WELCOME

    def read(self, timeout: float) -> wire.Frame | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            f = self.reader.read(max(0.0, end - time.monotonic()))
            if f is not None:
                return f
        return None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def codec(self, cid: int = 0) -> None:
        self.send(wire.codec_frame(cid, JPEG["codec"], JPEG["params"]))

    def replies(self, n: int, timeout: float = 10) -> list[wire.Frame]:
        out = []
        end = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < end:
            f = self.read(end - time.monotonic())
            if f is not None:
                out.append(f)
        return out

    def closed_by_peer(self, timeout: float = 5) -> bool:
        """True once the edge closed the connection (frames before that are skipped)."""
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                self.reader.read(0.2)
        except (EOFError, ConnectionError):
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def _begin(msg: int, sizes: list[int], codec_id: int = 0, deadline_s: float = 2.0) -> bytes:
    return wire.begin_frame(wire.Begin(msg, codec_id, time.time_ns() + int(deadline_s * 1e9), sizes))


def _proper_message(port: int, msg_id: int = 7) -> dict:
    """A well-formed image from a proper client: what every hostile case must leave working."""
    link = DirectLink("127.0.0.1", port)
    try:
        assert link.authenticate(SECRET) == {"authenticated": True}
        link.send_message(msg_id, dict(JPEG), _image_chunks(), time.time_ns() + 2_000_000_000)
        return link.result(msg_id, 20)
    finally:
        link.close()


# ------------------------------------------------------------- real process ---

@pytest.fixture(scope="module")
def edge_proc(tmp_path_factory, synthetic_model):
    d = tmp_path_factory.mktemp("edge")
    h = AgentHandle("edge", "edge", LocalTransport("edge").start_agent("hilbed.nodes.edge", [], d / "edge.log"),
                    lambda *a: None)
    try:
        h.wait_ready(60)
        h.call("load", timeout=300, model="synthetic-cnn", device="cpu", size=32)
        info = h.call("listen", host="127.0.0.1", port=0, secret=SECRET, limits={"auth_timeout_s": 1.0})
        assert info["authenticated"] is True and info["wire_version"] == wire.VERSION
        yield h, info["port"], h.proc.pid, d / "edge.log"
    finally:
        h.close()


def _stats(h) -> dict:
    return h.call("stats")


def test_a_4gib_begin_plus_one_data_byte_allocates_nothing(edge_proc):
    h, port, pid, _ = edge_proc
    assert _proper_message(port, 1)["decoded"]  # warm: model, codec, threads
    rss0 = _rss_kib(pid)
    c = Raw(port)
    c.codec()
    c.send(_begin(41, [GIB4]))
    c.send(wire.data_frame(41, 0, GIB4 - 1, b"x"))
    c.send(wire.data_frame(41, 0, 0, b"y"))
    [rep] = c.replies(1)
    res = rep.json()
    assert rep.type == wire.RESULT and res["msg_id"] == 41 and "limit" in res["error"]
    # the same connection keeps serving: a proper message on it gets decoded
    chunks = _image_chunks()
    c.send(_begin(42, [len(chunks[0])]))
    c.send(wire.data_frame(42, 0, 0, chunks[0]))
    c.send(wire.end_frame(42, False))
    [rep] = c.replies(1)
    assert rep.json()["msg_id"] == 42 and rep.json()["decoded"] is True
    c.close()
    grown_mib = (_rss_kib(pid) - rss0) / 1024
    assert grown_mib < 64, f"edge RSS grew {grown_mib:.0f} MiB"  # before: a 4 GiB bytearray
    st = _stats(h)
    assert st["rejected_messages"] >= 1 and st["discarded_frames"] >= 2
    assert st["buffered_bytes_peak"] < 1024 * 1024


@pytest.mark.parametrize("payload", [b'{"msg_id": 5, "codec": "jpeg"', b"\xff" * 3, b"\x00\x00\x00\x09\x00\x00"],
                         ids=["json-begin", "short", "truncated"])
def test_malformed_begin_gets_an_error_and_the_connection_keeps_serving(edge_proc, payload):
    h, port, _, _ = edge_proc
    bad0 = _stats(h)["bad_frames"]
    c = Raw(port)
    c.codec()
    c.send(wire.frame(wire.BEGIN, payload))
    [rep] = c.replies(1)
    assert rep.type in (wire.RESULT, wire.ERROR) and rep.json()["error"]
    if len(payload) >= 4:  # the message id could be read: the error names it
        assert rep.type == wire.RESULT and rep.json()["msg_id"] == struct.unpack(">I", payload[:4])[0]
    chunks = _image_chunks()
    c.send(_begin(8, [len(chunks[0])]) + wire.data_frame(8, 0, 0, chunks[0]) + wire.end_frame(8, False))
    [rep] = c.replies(1)
    assert rep.json()["msg_id"] == 8 and rep.json()["decoded"]
    c.close()
    assert _stats(h)["bad_frames"] > bad0


def test_bad_types_unknown_frames_and_an_unannounced_codec_each_get_one_error(edge_proc):
    h, port, _, _ = edge_proc
    c = Raw(port)
    c.send(_begin(20, [10]))                          # codec id 0 never announced -> error for msg 20
    c.send(wire.frame(wire.CODEC, b"\x00not json"))   # -> ERROR
    c.send(wire.frame(wire.CODEC, b"\x01" + json.dumps({"codec": "nope", "params": {}}).encode()))  # -> ERROR
    c.send(wire.frame(77, b"whatever"))               # unknown type -> ERROR
    c.send(wire.frame(wire.DATA, b"\x00\x01"))        # too short -> ERROR
    c.send(wire.frame(wire.END, b"\x00\x00\x00\x15\x00\x00\x00"))  # wrong length, msg 21 -> RESULT error
    reps = c.replies(6)
    assert len(reps) == 6
    assert reps[0].type == wire.RESULT and reps[0].json()["msg_id"] == 20 and "codec id 0" in reps[0].json()["error"]
    assert [r.type for r in reps[1:5]] == [wire.ERROR] * 4
    assert "unknown frame type 77" in reps[3].json()["error"]
    assert reps[5].type == wire.RESULT and reps[5].json()["msg_id"] == 21
    assert not c.closed_by_peer(0.5)  # nothing here desynchronised the stream
    c.close()
    assert _proper_message(port, 22)["decoded"]


def test_garbage_and_an_oversized_length_close_cleanly_with_an_error(edge_proc):
    h, port, pid, log_path = edge_proc
    st0 = _stats(h)
    rss0 = _rss_kib(pid)
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", wire.HDR.pack(wire.MAGIC, wire.DATA, 0xFFFFFFFF) + b"abc"):
        c = Raw(port)
        c.send(junk)
        f = c.read(5)
        assert f is not None and f.type == wire.ERROR and "closing" in f.json()["error"]
        assert c.closed_by_peer()
        c.close()
    assert (_rss_kib(pid) - rss0) / 1024 < 32  # the 4 GiB length was refused before buffering
    st = _stats(h)
    assert st["bad_streams"] == st0["bad_streams"] + 2 and st["reader_errors"] == 0
    assert _proper_message(port, 23)["decoded"]
    end = time.monotonic() + 5
    while _stats(h)["open_connections"] and time.monotonic() < end:
        time.sleep(0.05)
    assert _stats(h)["open_connections"] == 0  # every reader and worker ended with its connection
    assert "Traceback" not in log_path.read_text()


def test_connections_without_the_run_secret_are_closed_and_counted(edge_proc):
    h, port, _, _ = edge_proc
    rej0 = _stats(h)["rejected_connections"]
    wrong = Raw(port, secret="not-the-secret", welcome=False)
    f = wrong.read(5)
    assert f is not None and f.type == wire.ERROR and "authentication failed" in f.json()["error"]
    assert wrong.closed_by_peer()
    skip = Raw(port, secret=None)  # straight to a BEGIN, no AUTH
    assert skip.required
    skip.codec()
    skip.send(_begin(30, [10]))
    assert skip.closed_by_peer()
    silent = Raw(port, secret=None)  # says nothing: closed after auth_timeout_s (1 s here)
    t0 = time.monotonic()
    assert silent.closed_by_peer(5) and time.monotonic() - t0 < 3
    st = _stats(h)
    assert st["rejected_connections"] == rej0 + 3
    assert {"bad_auth", "no_auth", "timeout"} <= set(st["rejections"])
    for c in (wrong, skip, silent):
        c.close()
    # a proper client that forgot the secret is told so at open, not by a timeout later
    link = DirectLink("127.0.0.1", port)
    with pytest.raises(ConnectionError, match="requires the run secret"):
        link.authenticate(None)
    link.close()
    assert _proper_message(port, 31)["decoded"]


# ------------------------------------------------------------- in-process ---

class _StubModel:
    classes = list(range(10))

    def predict(self, x):
        return np.full((len(x), 10), 0.1)


@pytest.fixture
def small_edge():
    from hilbed.nodes.edge import EdgeAgent
    edges = []

    def make(**limits):
        e = EdgeAgent()
        e.model = _StubModel()
        info = e.op_listen("127.0.0.1", 0, secret=SECRET, limits=limits)
        edges.append(e)
        return e, info["port"]

    yield make
    for e in edges:
        e.teardown()


def _threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name)


def test_buffer_and_chunk_limits_answer_the_message_and_keep_the_connection(small_edge):
    edge, port = small_edge(max_buffered_bytes=4096, max_message_bytes=8192, max_chunks=4)
    c = Raw(port)
    c.codec()
    c.send(_begin(1, [3000, 3000]))  # fits the message limit, not the connection's buffer
    c.send(wire.data_frame(1, 0, 0, b"a" * 3000))
    c.send(wire.data_frame(1, 1, 0, b"b" * 3000))  # 6000 > 4096 held: the message fails, its bytes are freed
    c.send(wire.end_frame(1, False))
    c.send(_begin(2, [1] * 5))  # too many chunks
    c.send(_begin(3, [100]))
    c.send(wire.data_frame(3, 0, 90, b"z" * 20))  # beyond the chunk
    c.send(wire.end_frame(3, False))
    reps = [r.json() for r in c.replies(3)]
    assert [r["msg_id"] for r in reps] == [1, 2, 3]
    assert "buffer limit" in reps[0]["error"] and "chunks" in reps[1]["error"] and "beyond" in reps[2]["error"]
    st = edge.op_stats()
    assert st["buffered_bytes"] == 0 and st["buffered_bytes_peak"] <= 4096
    assert st["failed_messages"] == 2 and st["rejected_messages"] == 1
    c.close()


def test_the_edge_leaks_no_thread_and_honours_max_connections(small_edge):
    edge, port = small_edge(max_connections=2, auth_timeout_s=0.5)
    base_r, base_w = _threads("edge-read"), _threads("edge-infer")
    held = [Raw(port), Raw(port)]
    extra = socket.create_connection(("127.0.0.1", port), timeout=5)
    extra.settimeout(5)
    assert extra.recv(100) == b""  # over max_connections: closed at once
    extra.close()
    for c in held:
        c.send(b"\x00garbage")
    for c in held:
        assert c.closed_by_peer()
        c.close()
    end = time.monotonic() + 5
    while time.monotonic() < end and (_threads("edge-read") > base_r or _threads("edge-infer") > base_w
                                      or edge.op_stats()["open_connections"] > 0):
        time.sleep(0.05)  # the reader closes its connection, then its bookkeeping: wait for both
    assert _threads("edge-read") <= base_r and _threads("edge-infer") <= base_w
    st = edge.op_stats()
    assert st["rejections"].get("busy") == 1 and st["open_connections"] == 0


def test_listen_without_a_secret_still_serves_old_callers_and_says_so(small_edge):
    from hilbed.nodes.edge import EdgeAgent
    e = EdgeAgent()
    e.model = _StubModel()
    try:
        info = e.op_listen("127.0.0.1", 0)
        assert info["authenticated"] is False
        link = DirectLink("127.0.0.1", info["port"])
        assert link.authenticate(None) == {"authenticated": False}
        link.send_message(1, dict(JPEG), _image_chunks(), time.time_ns() + 2_000_000_000)
        assert link.result(1, 10)["decoded"]
        link.close()
        with pytest.raises(Exception, match="unknown limit"):
            e.op_listen("127.0.0.1", 0, limits={"max_bytes": 1})
    finally:
        e.teardown()
