"""Links carry what a real link would: the binary header and END are shaped, byte accounting can match Mahimahi's."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from hilbed.nodes import wire
from hilbed.nodes.codecs import make_codec
from hilbed.nodes.link.schedule import ConstantRate, OpportunitySchedule
from hilbed.nodes.link.shaper import TraceShaper
from hilbed.nodes.link.stages import Accounting, Pipeline
from hilbed.nodes.link.tcp import DirectLink, ShapedLink

JPEG = {"codec": "jpeg", "params": {"quality": 40}}


def _chunks() -> list[bytes]:
    img = (np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8)
    return make_codec(JPEG["codec"], JPEG["params"]).encode(img).chunks


class _StubModel:
    classes = list(range(10))

    def predict(self, x):
        return np.full((len(x), 10), 0.1)


@pytest.fixture
def edge():
    """An in-process edge agent on a real socket (a stub model: these tests are about the wire)."""
    from hilbed.nodes.edge import EdgeAgent
    e = EdgeAgent()
    e.model = _StubModel()
    port = e.op_listen("127.0.0.1", 0, secret="s")["port"]
    yield e, port
    e.teardown()


def _shaped(port: int, bps: float, **kw) -> ShapedLink:
    link = ShapedLink("127.0.0.1", port, ConstantRate(bps), None, **kw)
    assert link.authenticate("s")["authenticated"]
    link.announce_codec(JPEG["codec"], JPEG["params"])
    return link


# ------------------------------------------------------------------ format ---

def test_begin_is_a_compact_binary_header_that_round_trips():
    b = wire.Begin(70000, 3, 1_796_000_000_123_456_789, [812])
    f = wire.begin_frame(b)
    assert len(f) == 24  # frame header 7 + id 4 + codec 1 + flags 1 + deadline 8 + count 1 + size 2
    parsed = wire.parse_begin(f[wire.HDR.size:], max_chunks=16)
    assert parsed == b
    many = wire.begin_frame(wire.Begin(1, 0, 1, [120] * 8 + [20000]))
    assert len(many) <= 40
    radio = wire.Begin(9, 1, 5, [100, 0], via="radio", via_key=[None, 255])
    assert wire.parse_begin(wire.begin_frame(radio)[wire.HDR.size:], 16) == radio


@pytest.mark.parametrize("cut", [5, 15, 16, 17])
def test_a_truncated_begin_is_malformed_and_names_its_message(cut):
    payload = wire.begin_frame(wire.Begin(77, 0, 123, [300, 40000]))[wire.HDR.size:]
    with pytest.raises(wire.Malformed) as ei:
        wire.parse_begin(payload[:cut], 16)
    assert ei.value.msg_id == 77


def test_begin_refuses_too_many_chunks_and_trailing_bytes():
    payload = wire.begin_frame(wire.Begin(5, 0, 1, [1] * 20))[wire.HDR.size:]
    with pytest.raises(wire.Malformed, match="20 chunks"):
        wire.parse_begin(payload, 8)
    with pytest.raises(wire.Malformed, match="trailing"):
        wire.parse_begin(payload + b"\x00", 64)
    huge = bytearray(payload[:wire.BEGIN_FIXED.size])
    wire.put_varint(huge, 10 ** 9)  # a declared count is checked before any size is read
    with pytest.raises(wire.Malformed, match="chunks"):
        wire.parse_begin(bytes(huge), 1024)


def test_direct_link_counts_header_and_end_bytes(edge_sink):
    sink = edge_sink()
    link = DirectLink("127.0.0.1", sink.port)
    chunks = _chunks()
    rep = link.send_message(1, dict(JPEG), chunks, time.time_ns() + 10 ** 9)
    link.close()
    begin = wire.begin_frame(wire.Begin(1, 0, 0, [len(c) for c in chunks]))
    assert rep.wire_bytes_sent == len(begin) + sum(len(c) + wire.DATA_OVERHEAD for c in chunks) + wire.END_BYTES
    assert rep.packets_sent == 2 + len(chunks)
    assert link.stats()["accounting"] is None  # hilbed does not shape it


# ------------------------------------------------------------- shaped path ---

def test_the_header_and_end_pay_their_airtime(edge):
    e, port = edge
    bps = 37_500.0  # 37.5 kbit/s: 4.6875 bytes a millisecond
    link = _shaped(port, bps)
    plans = []
    link.up.on_packet = plans.append
    chunks = _chunks()
    rep = link.send_message(1, dict(JPEG), chunks, time.time_ns() + 2 * 10 ** 9)
    res = link.result(1, 10)
    link.close()
    assert res["decoded"] and res["close"] == "end"
    begin_len = plans[0].nbytes
    assert begin_len < 40 and plans[-1].nbytes == wire.END_BYTES  # BEGIN and END are packets of the link
    payload = sum(len(c) for c in chunks)
    assert rep.wire_bytes_sent == sum(p.nbytes for p in plans) == begin_len + payload + \
        wire.DATA_OVERHEAD * (len(plans) - 2) + wire.END_BYTES
    # the edge cannot have closed before every byte, header and END included, crossed the link
    airtime_s = rep.wire_bytes_sent * 8 / bps
    assert (res["edge_t_close_ns"] - rep.t_tx_start_ns) / 1e9 >= airtime_s
    assert (res["edge_t_close_ns"] - rep.t_tx_start_ns) / 1e9 >= (begin_len + payload) * 8 / bps
    # and its first byte of data came one header later: BEGIN itself was shaped (~5 ms here)
    assert (res["edge_t_begin_ns"] - rep.t_tx_start_ns) / 1e9 >= begin_len * 8 / bps
    assert link.stats()["header_bytes"] == begin_len


def test_a_header_that_cannot_make_the_deadline_sends_nothing(edge_sink):
    sink = edge_sink()
    link = ShapedLink("127.0.0.1", sink.port, ConstantRate(37_500.0), None)
    link.announce_codec(JPEG["codec"], JPEG["params"])
    time.sleep(0.05)
    n_setup = len(sink.frames)
    m0, deadline = time.monotonic(), time.time_ns() + 3_000_000  # a 24-byte BEGIN needs 5.1 ms
    rep = link.send_message(1, dict(JPEG), _chunks(), deadline)
    time.sleep(0.1)
    link.close()
    assert rep.header == "refused" and rep.aborted
    assert rep.packets_sent == 0 and rep.wire_bytes_sent == 0 and rep.chunks_delivered == 0
    types = [ty for _, ty in sink.frames[n_setup:]]
    assert types == [wire.VOID]  # no BEGIN, DATA or END: only the after-the-deadline notice
    t_void = sink.frames[n_setup][0]
    assert rep.t_tx_end_ns >= deadline and link.stats()["headers_refused"] == 1
    assert t_void >= m0 + 0.003  # the notice left at the deadline, not before


def test_a_refused_header_still_gets_an_unsent_reply(edge):
    e, port = edge
    link = _shaped(port, 37_500.0)
    rep = link.send_message(1, dict(JPEG), _chunks(), time.time_ns() + 3_000_000)
    res = link.result(1, 5)
    link.close()
    assert rep.header == "refused"
    assert res["close"] == "unsent" and res["decoded"] is False and res["chunks_received"] == 0
    assert res["edge_t_close_ns"] >= rep.t_tx_start_ns + 3_000_000 - 1_000_000
    assert e.op_stats()["messages"] == 0 and e.op_stats()["void_messages"] == 1


def test_an_end_cut_by_the_deadline_leaves_the_edge_closing_at_its_deadline(edge):
    e, port = edge
    bps = 16_000.0  # 2 bytes a millisecond: END (12 B) takes 6 ms
    link = _shaped(port, bps, packet_bytes=4096)
    chunks = _chunks()
    begin = wire.begin_frame(wire.Begin(1, 0, 0, [len(c) for c in chunks]))
    before_end = len(begin) + sum(len(c) + wire.DATA_OVERHEAD for c in chunks)
    t0 = time.time_ns()
    deadline = t0 + int((before_end + wire.END_BYTES / 2) * 8 / bps * 1e9)  # END would end 3 ms late
    rep = link.send_message(1, dict(JPEG), chunks, deadline)
    res = link.result(1, 10)
    link.close()
    assert link.stats()["ends_cut"] == 1 and not rep.aborted and rep.chunks_delivered == len(chunks)
    assert rep.t_tx_end_ns >= deadline  # the cut END held the link until the deadline
    assert res["close"] == "deadline" and res["decoded"] and res["bytes_received"] == sum(map(len, chunks))


def test_a_lost_header_loses_the_image_and_the_edge_still_answers(edge):
    e, port = edge
    seed = next(s for s in range(100) if random.Random(s).random() < 0.5)  # its first draw loses BEGIN
    link = _shaped(port, 200_000.0, loss=0.5, seed=seed)
    rep = link.send_message(1, dict(JPEG), _chunks(), time.time_ns() + 200_000_000)
    res = link.result(1, 5)
    link.close()
    assert rep.header == "lost" and link.stats()["headers_lost"] == 1
    assert res["close"] == "header_lost" and not res["decoded"] and res["bytes_received"] == 0


# -------------------------------------------------------------- accounting ---

def test_frame_accounting_charges_what_mahimahi_takes_from_its_tun():
    tcp, udp = Accounting("frame", "tcp"), Accounting("frame", "udp")
    assert Accounting().charge(100) == 100  # payload: as before
    assert tcp.charge(100) == 100 + 4 + 20 + 32
    assert tcp.charge(1448) == 1504  # one full MSS is exactly one Mahimahi opportunity
    assert tcp.charge(1449) == 1449 + 2 * 56
    assert udp.charge(100) == 100 + 4 + 20 + 8
    assert udp.charge(1472) == 1504
    assert udp.charge(1473) == 1473 + 8 + 2 * 24  # two IP fragments, one UDP header
    with pytest.raises(ValueError, match="allowed: payload, frame"):
        Accounting("bytes")


@pytest.mark.parametrize("protocol,overhead", [("tcp", 56), ("udp", 32)])
def test_frame_accounting_delivers_fewer_payload_bytes_by_the_expected_ratio(protocol, overhead):
    sched = OpportunitySchedule(list(range(1, 101)), 1504)  # Mahimahi's 12 Mbit/s: one 1504 B opportunity a ms
    delivered = {}
    for mode in ("payload", "frame"):
        p = Pipeline(sched, accounting=Accounting(mode, protocol))
        pkts = [p.offer(1000, 0.0) for _ in range(3000)]
        delivered[mode] = sum(k.nbytes for k in pkts if k.t_done <= 1.0)
    ratio = delivered["frame"] / delivered["payload"]
    assert ratio == pytest.approx(1000 / (1000 + overhead), rel=2e-3)


def test_the_udp_proxy_and_the_shaped_link_say_which_accounting_they_use(edge_sink):
    sh = TraceShaper(ConstantRate(1e6), accounting="frame")
    sh.send_up(b"x" * 100)
    st = sh.stats()
    sh.close()
    assert st["accounting"] == {"mode": "frame", "protocol": "udp", "per_packet_bytes": 32, "mtu": 1500}
    assert st["up"]["bytes_in"] == 132 and st["up"]["payload_bytes_in"] == 100
    times = {}
    for mode in ("payload", "frame"):
        sink = edge_sink()
        link = ShapedLink("127.0.0.1", sink.port, ConstantRate(400_000.0), None, packet_bytes=200)  # 50 B/ms
        link.set_accounting(mode)
        rep = link.send_message(1, dict(JPEG), [b"z" * 2000], time.time_ns() + 10 ** 9)
        stats = link.stats()
        link.close()
        assert stats["accounting"] == mode
        assert stats["charged_bytes"] == stats["wire_bytes"] + (56 * rep.packets_sent if mode == "frame" else 0)
        times[mode] = (rep.t_tx_end_ns - rep.t_tx_start_ns) / 1e9
        assert times[mode] >= stats["charged_bytes"] * 8 / 400_000.0 - 1e-3
    assert times["frame"] > times["payload"] + 0.010  # 12 packets x 56 B = 13 ms more airtime
