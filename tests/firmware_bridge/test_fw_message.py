"""Deadline-bounded message transport end to end over emulated radios."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator

import pytest

from hilbed.firmware_bridge import phy
from hilbed.firmware_bridge.emulator import Emulator, EmulatorProcess
from hilbed.firmware_bridge.message import (
    FLAG_LAST_FRAGMENT,
    FRAGMENT_HEADER,
    FRAGMENT_PAYLOAD,
    KIND_BEGIN,
    KIND_DATA,
    KIND_END,
    MessageReceiver,
    MessageSender,
    ReceivedMessage,
    SendReport,
)
from hilbed.firmware_bridge.radio import Radio, SpinelRadio, open_radio

PAN = 0x2024
FAST_BAUD = 4_000_000


def make_chunks(total: int, n: int, seed: int = 1) -> list[bytes]:
    data = bytes((i * 7 + seed) & 0xFF for i in range(total))
    size = -(-total // n)
    return [data[i:i + size] for i in range(0, total, size)]


def transfer(sender: Radio, receiver: Radio, msg_id: int, chunks: list[bytes], deadline_s: float,
             rx_timeout: float | None = None) -> tuple[SendReport, ReceivedMessage | None]:
    rx = MessageReceiver(receiver)
    result: dict[str, ReceivedMessage | None] = {}
    th = threading.Thread(target=lambda: result.setdefault("m", rx.receive_message(rx_timeout or deadline_s + 3,
                                                                                   msg_id=msg_id)))
    th.start()
    time.sleep(0.02)
    report = MessageSender(sender, dst=0x0002).send(msg_id, chunks, time.monotonic() + deadline_s)
    th.join(deadline_s + 10)
    return report, result.get("m")


def configure_pair(a: Radio, b: Radio, channel: int = 15) -> None:
    assert isinstance(a, SpinelRadio) and isinstance(b, SpinelRadio)
    a.configure(channel=channel, pan_id=PAN, short_addr=0x0001)
    b.configure(channel=channel, pan_id=PAN, short_addr=0x0002)


def assert_increasing(times: list[float]) -> None:
    assert all(t1 > t0 for t0, t1 in zip(times, times[1:])), times


def test_analytic_frame_time_and_goodput() -> None:
    # 1120 backoff + 128 CCA + 192 turnaround + 133*32 PPDU + 192 turnaround + 11*32 ACK + 640 LIFS
    assert phy.frame_exchange_time_us(127) == 1120 + 128 + 192 + 4256 + 192 + 352 + 640 == 6880
    assert phy.analytic_goodput_kbps(116) == pytest.approx(134.88, abs=0.01)
    assert phy.MAX_SHORT_DATA_PAYLOAD == 116
    assert FRAGMENT_PAYLOAD == 110
    assert phy.airtime_us(127) == 4256 and phy.ack_airtime_us() == 352


@pytest.fixture(scope="module")
def spinel_pair() -> Iterator[tuple[Radio, Radio]]:
    with EmulatorProcess("spinel", 2, baud=FAST_BAUD, seed=21) as ports:
        a = open_radio("spinel", ports[0], baud=FAST_BAUD)
        b = open_radio("spinel", ports[1], baud=FAST_BAUD)
        configure_pair(a, b)
        yield a, b
        a.close()
        b.close()


@pytest.fixture(scope="module")
def wuart_pair() -> Iterator[tuple[Radio, Radio]]:
    with EmulatorProcess("wuart", 2, seed=22) as ports:
        a = open_radio("wuart", ports[0])
        b = open_radio("wuart", ports[1])
        yield a, b
        a.close()
        b.close()


@pytest.mark.parametrize("pair", ["spinel_pair", "wuart_pair"])
def test_3kb_message_in_4_chunks(pair: str, request: pytest.FixtureRequest) -> None:
    a, b = request.getfixturevalue(pair)
    chunks = make_chunks(3000, 4)
    t_start_wall = time.time()
    report, msg = transfer(a, b, 5, chunks, deadline_s=5.0)
    assert report.complete and not report.aborted
    assert report.chunks_delivered == 4 and report.bytes_delivered == 3000
    assert msg is not None and msg.complete and msg.ended and not msg.aborted
    assert msg.chunks == chunks
    assert msg.chunk_count == 4 and msg.total_bytes == 3000
    for times in (report.chunk_times, msg.chunk_times):
        assert [c.index for c in times] == [0, 1, 2, 3]
        assert_increasing([c.t_monotonic for c in times])
        assert_increasing([c.t_wall for c in times])
        assert t_start_wall <= times[0].t_wall <= time.time()
    # The receiver cannot hold a chunk before the sender started sending it.
    assert msg.chunk_times[0].t_monotonic > report.started_monotonic
    # 3000 bytes need >= 28 frames of >= 4.3 ms air time each.
    frames_needed = sum(-(-len(c) // FRAGMENT_PAYLOAD) for c in chunks)
    min_air = frames_needed * phy.airtime_us(127) / 1e6 * 0.8
    assert msg.chunk_times[-1].t_monotonic - report.started_monotonic > min_air
    if isinstance(a, SpinelRadio):
        assert report.frames == frames_needed + 2  # + BEGIN and END
        assert report.retries == 0 and report.cca_failures == 0


def test_abort_at_deadline_yields_prefix(spinel_pair: tuple[Radio, Radio]) -> None:
    a, b = spinel_pair
    chunks = make_chunks(40_000, 20, seed=3)  # ~3 s of air time, far beyond the deadline
    deadline_s = 0.6
    report, msg = transfer(a, b, 6, chunks, deadline_s=deadline_s)
    assert report.aborted and not report.complete
    assert 0 < report.chunks_delivered < len(chunks)
    assert report.abort_delivered
    assert report.finished_monotonic - report.deadline_monotonic < 0.2
    # No transmission starts after the deadline; the one in flight may finish (a few ms).
    assert all(c.t_monotonic <= report.deadline_monotonic + 0.05 for c in report.chunk_times)
    assert msg is not None and msg.aborted and not msg.complete
    assert msg.chunks == chunks[:len(msg.chunks)]
    assert len(msg.chunks) == report.chunks_delivered


def test_a_frame_stopped_before_its_first_attempt_does_not_make_retries_negative(
        spinel_pair: tuple[Radio, Radio]) -> None:
    """The deadline stops a data frame before it is sent; the abort frame then goes out on its first attempt."""
    a, _ = spinel_pair
    sender = MessageSender(a, dst=0x0002)
    report = SendReport(1, a.protocol, 1, 10, started_monotonic=time.monotonic(), deadline_monotonic=0.0)
    ok, _, _ = sender._deliver(b"\x00" * 12, time.monotonic() - 1.0, report)  # deadline already passed
    assert not ok and report.frames == 1 and report.attempts == 0
    ok, _, _ = sender._deliver(sender._frame(KIND_END, 0, 1, 0, 0, b"\x00\x00"), None, report, max_transactions=2)
    assert ok and report.frames == 2 and report.attempts >= 1
    assert report.retries == report.attempts - 1 >= 0  # was attempts - frames: -1 here


def test_abort_over_wuart_yields_prefix(wuart_pair: tuple[Radio, Radio]) -> None:
    a, b = wuart_pair
    chunks = make_chunks(12_000, 24, seed=4)
    report, msg = transfer(a, b, 7, chunks, deadline_s=0.25, rx_timeout=6)
    assert report.aborted and 0 < report.chunks_delivered < len(chunks)
    assert msg is not None and msg.aborted
    assert msg.chunks == chunks[:len(msg.chunks)]
    assert 0 < len(msg.chunks) <= report.chunks_delivered


def test_jamming_lowers_goodput_and_raises_retries() -> None:
    chunks = make_chunks(14_000, 7, seed=5)
    outcomes: dict[float, tuple[SendReport, ReceivedMessage | None]] = {}
    with Emulator("spinel", 2, baud=FAST_BAUD, seed=8) as emu:
        a = open_radio("spinel", emu.ports[0], baud=FAST_BAUD)
        b = open_radio("spinel", emu.ports[1], baud=FAST_BAUD)
        try:
            configure_pair(a, b)
            for i, load in enumerate((0.0, 0.7)):
                emu.set_load(load)
                outcomes[load] = transfer(a, b, 10 + i, chunks, deadline_s=2.5)
        finally:
            a.close()
            b.close()
    clean, jammed = outcomes[0.0][0], outcomes[0.7][0]
    assert clean.complete and clean.retries == 0
    assert jammed.bytes_delivered < clean.bytes_delivered
    assert jammed.retries + jammed.cca_failures > 10
    assert jammed.cca_failures > clean.cca_failures
    assert jammed.retries > clean.retries
    assert clean.goodput_kbps() > 60
    rx_jammed = outcomes[0.7][1]
    assert rx_jammed is not None and rx_jammed.chunks == chunks[:len(rx_jammed.chunks)]


def test_receiver_ignores_duplicates_and_foreign_frames(spinel_pair: tuple[Radio, Radio]) -> None:
    a, b = spinel_pair
    assert isinstance(a, SpinelRadio) and isinstance(b, SpinelRadio)
    while b.recv_frame(0) is not None:
        pass

    def frag(kind: int, flags: int, chunk: int, index: int, payload: bytes) -> bytes:
        body = FRAGMENT_HEADER.pack((kind << 4) | flags, 9, chunk, index) + payload
        return phy.build_data_frame(a.next_seq(), PAN, 2, 1, body)

    sequence = [
        phy.build_data_frame(a.next_seq(), PAN, 2, 1, b"\x01"),  # not a hilbed frame (too short)
        frag(KIND_BEGIN, 0, 0, 0, struct.pack("<HI", 2, 6)),
        frag(KIND_BEGIN, 0, 0, 0, struct.pack("<HI", 2, 6)),  # duplicate BEGIN (lost ACK)
        frag(KIND_DATA, 0, 0, 0, b"ab"),
        frag(KIND_DATA, 0, 0, 0, b"ab"),  # duplicate fragment
        frag(KIND_DATA, FLAG_LAST_FRAGMENT, 0, 1, b"c"),
        frag(KIND_DATA, FLAG_LAST_FRAGMENT, 1, 0, b"def"),
        frag(KIND_END, 0, 2, 0, struct.pack("<H", 2)),
        frag(KIND_END, 0, 2, 0, struct.pack("<H", 2)),
    ]
    for psdu in sequence:
        assert a.send_frame(psdu).ok
    rx = MessageReceiver(b)
    events = []
    while (ev := rx.recv(0.5)) is not None:
        events.append(ev)
    assert [e.kind for e in events] == ["begin", "chunk", "chunk", "end"]
    assert [e.data for e in events if e.kind == "chunk"] == [b"abc", b"def"]
    assert events[0].chunk_count == 2 and events[-1].chunk_count == 2
    assert rx.ignored_frames == 1
    assert rx.duplicate_fragments == 1
