"""Seeded serial fuzzing of HDLC-Lite, Spinel, Wireless UART and the MessageReceiver.

Why: every byte these decoders see comes from a device or the air.  No
input may raise, bad input must be counted (each decoder's conservation law
holds), and a clean frame or message after any garbage must come out
intact (resync).  The 10^6-random-byte runs are regression tests for
decoders that once survived them; all of this takes a few seconds on a
2-core CI machine.
"""

from __future__ import annotations

import struct
import time

import pytest

from hilbed.firmware_bridge import fuzz
from hilbed.firmware_bridge.message import (
    FLAG_LAST_FRAGMENT,
    KIND_ABORT,
    KIND_BEGIN,
    KIND_DATA,
    KIND_END,
    MessageReceiver,
)
from hilbed.firmware_bridge.radio import RxFrame

MIXED_BYTES = 300_000


def check(res: fuzz.FuzzResult) -> None:
    assert res.exceptions == 0, res.first_exception
    assert res.accounting_ok, res.as_dict()
    assert res.recovered == res.frames_planted, res.as_dict()
    assert res.late == 0, res.as_dict()  # no frame waited for bytes that belong to something else


@pytest.mark.parametrize("target", ["hdlc", "spinel", "wuart"])
def test_decoders_survive_a_million_random_bytes(target: str) -> None:
    res = fuzz.TARGETS[target](1_000_000, seed=1, mode="random")
    check(res)
    assert res.bytes == 1_000_000
    # random bytes are (nearly) all garbage, and the decoder says so
    assert res.garbage_bytes + res.counters.get("pending_bytes", 0) >= 990_000
    assert res.seconds < 10


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_mixed_streams_resync_and_count(target: str, seed: int) -> None:
    t0 = time.monotonic()
    res = fuzz.TARGETS[target](MIXED_BYTES, seed=seed, mode="mixed")
    check(res)
    assert res.frames_planted > 50
    assert res.bad > 0  # corruption was there, and was counted
    assert time.monotonic() - t0 < 20


@pytest.mark.parametrize("target", ["message_receiver", "message_receiver_wuart"])
def test_receivers_survive_random_frames(target: str) -> None:
    res = fuzz.TARGETS[target](200_000, seed=5, mode="random")
    check(res)


def test_every_pair_of_fragments_after_begin() -> None:
    """Exhaustive over small field values: BEGIN, then any two frames (the KeyError needed just two)."""
    domain = [(kind, flags, chunk, frag, payload)
              for kind in (KIND_DATA, KIND_BEGIN, KIND_END, KIND_ABORT)
              for flags in (0, FLAG_LAST_FRAGMENT)
              for chunk in (0, 1, 2)
              for frag in (0, 1, 5)
              for payload in (b"", b"x" * 110)]
    rx = MessageReceiver(None, protocol="spinel")
    src = fuzz._MacSource(0x0042)
    begin = struct.pack("<HI", 2, 300)
    for i, first in enumerate(domain):
        for j, second in enumerate(domain):
            msg_id = (i * len(domain) + j) & 0xFF
            rx.feed(RxFrame(src.frame(KIND_BEGIN, 0, msg_id, 0, 0, begin)))
            for kind, flags, chunk, frag, payload in (first, second):
                rx.feed(RxFrame(src.frame(kind, flags, msg_id, chunk, frag, payload)))
            rx.pop_events()
    st = rx.stats
    assert st.data_fragments == (st.delivered_fragments + st.duplicate_fragments + st.dropped_fragments
                                 + st.pending_fragments)
    assert st.bad_sequences > 0 and st.delivered_fragments > 0 and st.superseded_assemblies > 0


def test_fuzzer_catches_a_receiver_that_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: an exception inside a decoder is counted, not swallowed silently."""
    def boom(self: MessageReceiver, frame: RxFrame) -> None:
        raise KeyError(0)

    monkeypatch.setattr(MessageReceiver, "_handle_mac", boom)
    res = fuzz.fuzz_receiver(5_000, seed=1)
    assert res.exceptions > 0 and "KeyError" in (res.first_exception or "")
