"""SharedUplinkProxy with real sockets: clients -> proxy (one shaped uplink) -> a collector standing in for the edge.

The collector reads wire frames per connection, as the edge's listener does,
and records when each arrived; it is a stand-in only for the edge's decoding.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from hilbed.nodes import wire
from hilbed.nodes.link.schedule import ConstantRate
from hilbed.nodes.link.shared_uplink import SharedUplinkProxy

RATE_KBPS = 200.0
PAYLOAD = 1000


class Collector:
    """A TCP server that keeps every frame each connection sends, with its arrival time."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.conns: list[dict] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            rec = {"frames": [], "error": None, "closed": False, "sock": c}
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self._read, args=(c, rec), daemon=True).start()

    def _read(self, c: socket.socket, rec: dict) -> None:
        r = wire.FrameReader(c)
        try:
            while True:
                f = r.read(1.0)
                if f is not None:
                    rec["frames"].append((time.monotonic(), f))
        except EOFError:
            rec["closed"] = True
        except (OSError, wire.WireError) as exc:
            rec["error"] = str(exc)

    def close(self) -> None:
        self.sock.close()


def _begin(msg: int, n_chunks: int, deadline_s: float = 60.0) -> bytes:
    return wire.begin_frame(wire.Begin(msg, 0, time.time_ns() + int(deadline_s * 1e9), [PAYLOAD] * n_chunks))


def _stream(client: int, n: int) -> list[bytes]:
    """One message of ``n`` chunks whose bytes say which client and chunk they are."""
    frames = [_begin(client, n)]
    for i in range(n):
        frames.append(wire.data_frame(client, i, 0, bytes([client, i % 256]) * (PAYLOAD // 2)))
    frames.append(wire.end_frame(client, False))
    return frames


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def _connect(proxy: SharedUplinkProxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=5)


def _wait(cond, timeout: float) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_three_greedy_clients_share_one_rate_with_streams_intact(collector):
    proxy = SharedUplinkProxy(("127.0.0.1", 0), collector.address, ConstantRate(RATE_KBPS * 1000),
                              window_bytes=4096, realtime=False)
    try:
        n = 24  # 3 x 24 KB = ~3 s at 200 kbit/s
        socks = [_connect(proxy) for _ in range(3)]
        streams = {k + 1: _stream(k + 1, n) for k in range(3)}
        senders = [threading.Thread(target=s.sendall, args=(b"".join(streams[k + 1]),)) for k, s in enumerate(socks)]
        for t in senders:
            t.start()
        assert _wait(lambda: len(collector.conns) == 3 and all(len(c["frames"]) == n + 2 for c in collector.conns),
                     20), [len(c["frames"]) for c in collector.conns]
        by_client = {}
        for c in collector.conns:
            frames = [f for _, f in c["frames"]]
            assert c["error"] is None
            client = wire.parse_begin(frames[0].payload, 100).msg_id
            # every byte intact and in the order the client sent it
            assert [wire.frame(f.type, f.payload) for f in frames] == streams[client]
            by_client[client] = c["frames"]
        assert sorted(by_client) == [1, 2, 3]
        t0 = min(fr[0][0] for fr in by_client.values())
        t1 = max(fr[-1][0] for fr in by_client.values())
        total = sum(len(s) for st in streams.values() for s in st)
        rate = total * 8 / (t1 - t0) / 1000
        # the first frame left at t0, so the window saw all but that one
        assert abs(rate - RATE_KBPS) / RATE_KBPS < 0.15, rate
        # while all three were sending, each got about a third of the link
        t_first_done = min(fr[-1][0] for fr in by_client.values())
        share = {k: sum(len(f.payload) for t, f in fr if t <= t_first_done) for k, fr in by_client.items()}
        tot = sum(share.values())
        assert all(0.25 < v / tot < 0.42 for v in share.values()), share
        # and they finished close together, not one after another
        ends = sorted(fr[-1][0] for fr in by_client.values())
        assert ends[-1] - ends[0] < 0.25 * (t1 - t0), ends
        st = proxy.stats()
        assert st["connections"] == 3 and st["uplink"]["dropped_packets"] == 0
        assert sorted(f["packets_out"] for f in st["flows"].values()) == [n + 2] * 3
        print(f"rate {rate:.1f} kbit/s; shares", {k: round(v / tot, 3) for k, v in share.items()})
        for s in socks:
            s.close()
    finally:
        proxy.close()


def test_light_clients_are_served_in_arrival_order(collector):
    """Not round robin: a frame that arrives first leaves first, whichever client sent it."""
    proxy = SharedUplinkProxy(("127.0.0.1", 0), collector.address, ConstantRate(RATE_KBPS * 1000), realtime=False)
    try:
        a, b = _connect(proxy), _connect(proxy)
        assert _wait(lambda: len(collector.conns) == 2, 5)
        a.sendall(b"".join(_stream(1, 8)))  # 8 KB: 0.33 s of link
        time.sleep(0.05)
        b.sendall(b"".join(_stream(2, 1)))
        assert _wait(lambda: sum(len(c["frames"]) for c in collector.conns) == 10 + 3, 10)
        last_a = max(t for c in collector.conns for t, f in c["frames"] if f.type == wire.END
                     and f.end()[0] == 1)
        first_b = min(t for c in collector.conns for t, f in c["frames"] if f.type == wire.DATA
                      and f.data()[0] == 2)
        assert first_b > last_a - 0.01  # b's chunk queued behind all of a's
        a.close()
        b.close()
    finally:
        proxy.close()


def test_disconnect_and_drop_tail_keep_other_streams_whole(collector):
    proxy = SharedUplinkProxy(("127.0.0.1", 0), collector.address, ConstantRate(RATE_KBPS * 1000),
                              queue_bytes=6000, realtime=False)
    try:
        a, b = _connect(proxy), _connect(proxy)
        assert _wait(lambda: len(collector.conns) == 2, 5)
        a.sendall(b"".join(_stream(1, 20)))  # far more than the 6 KB queue: the tail is dropped
        b.sendall(b"".join(_stream(2, 20)))
        time.sleep(0.3)
        a.close()  # mid-stream
        assert _wait(lambda: sum(c["closed"] for c in collector.conns) >= 1, 10)
        time.sleep(1.0)
        c3 = _connect(proxy)  # the proxy still serves new clients
        c3.sendall(b"".join(_stream(3, 2)))
        assert _wait(lambda: len(collector.conns) == 3 and len(collector.conns[2]["frames"]) == 4, 10)
        for c in collector.conns:  # what got through is whole frames, in order
            assert c["error"] is None
            data = [f.data() for _, f in c["frames"] if f.type == wire.DATA]
            assert [d[1] for d in data] == sorted(d[1] for d in data)
            assert all(d[3] == bytes([d[0], d[1] % 256]) * (PAYLOAD // 2) for d in data)
        b.close()
        c3.close()
    finally:
        st = proxy.close()
    flows = list(st["flows"].values())
    assert sum(f["dropped_packets"] for f in flows) > 0
    assert st["uplink"]["dropped_packets"] == sum(f["dropped_packets"] for f in flows)
    for f in flows:  # every frame read is accounted for: released, dropped, refused or lost
        assert f["packets_in"] == f["packets_out"] + f["dropped_packets"] + f["refused_packets"] + f["lost_packets"]


def test_a_refused_header_becomes_a_void_at_its_deadline(collector):
    """The edge must hear of a message whose BEGIN never made it, or the client waits for a reply forever."""
    proxy = SharedUplinkProxy(("127.0.0.1", 0), collector.address, ConstantRate(8000), realtime=False)  # 1 KB/s
    try:
        a, b = _connect(proxy), _connect(proxy)
        assert _wait(lambda: len(collector.conns) == 2, 5)
        a.sendall(b"".join(_stream(1, 2)))  # 2 KB: the link is busy for 2 s
        time.sleep(0.05)
        b.sendall(_begin(7, 3, deadline_s=0.2) + wire.data_frame(7, 0, 0, b"x" * PAYLOAD))
        assert _wait(lambda: any(f.type == wire.VOID for c in collector.conns for _, f in c["frames"]), 3)
        void = next(f for c in collector.conns for _, f in c["frames"] if f.type == wire.VOID)
        assert wire.parse_void(void.payload, 100) == (7, wire.VOID_LOST, 3)
        fb = next(f for f in proxy.stats()["flows"].values() if f["voids_sent"])
        assert fb["refused_packets"] == 2 and fb["packets_out"] == 0
        a.close()
        b.close()
    finally:
        proxy.close()


def test_link_log_is_written(collector, tmp_path):
    log = tmp_path / "shared.log"
    proxy = SharedUplinkProxy(("127.0.0.1", 0), collector.address, ConstantRate(RATE_KBPS * 1000),
                              log_path=str(log), realtime=False)
    a = _connect(proxy)
    a.sendall(b"".join(_stream(1, 3)))
    assert _wait(lambda: collector.conns and len(collector.conns[0]["frames"]) == 5, 5)
    a.close()
    proxy.close()
    lines = log.read_text().splitlines()
    assert any(x.startswith("# base timestamp") for x in lines)
    assert sum(1 for x in lines if " + " in x) == 5 and sum(1 for x in lines if " - " in x) == 5
