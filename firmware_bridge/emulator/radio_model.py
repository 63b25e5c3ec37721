"""802.15.4 PHY/MAC behaviour of one emulated nRF52840 radio.

Why: both firmware models (OpenThread RCP and Nordic's Wireless UART) sit on
the same radio behaviour -- unslotted CSMA-CA, immediate ACKs, retries,
address filtering, half-duplex reception.  Getting the timing of those right
is what makes the emulated goodput comparable with the analytic bound and
with the hardware, so it lives in one place.

The transmit state machine runs on the emulator loop in *model time*
(seconds, ``time.monotonic`` base).  Each step is scheduled at the instant
the real radio would reach it:

    request -> [wait IFS] -> backoff (random 0..2^BE-1 unit periods)
            -> CCA (128 us) -- busy --> NB+=1, BE=min(BE+1, maxBE), retry or CHANNEL_ACCESS_FAILURE
            -- idle --> turnaround (192 us) -> PPDU on air -> (ACK requested?)
            -> receiver turnaround (192 us) -> ACK on air (352 us) -> done
            -> no ACK within macAckWaitDuration (864 us) -> retry (<= max_frame_retries) or NO_ACK
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import phy
from .loop import EventLoop
from .medium import FRAME_RSSI_DBM, Medium, Transmission

log = logging.getLogger(__name__)

US = 1e-6

TX_OK = "ok"
TX_NO_ACK = "no_ack"
TX_CCA_FAILURE = "channel_access_failure"


@dataclass
class TxRequest:
    psdu: bytes
    channel: int
    csma: bool = True
    max_csma_backoffs: int = phy.MAC_MAX_CSMA_BACKOFFS
    max_frame_retries: int = phy.MAC_MAX_FRAME_RETRIES
    done: Callable[[TxResult], None] | None = None


@dataclass
class TxResult:
    status: str
    ack_psdu: bytes | None
    attempts: int
    cca_failures: int
    t_done: float
    ack_rssi: int = FRAME_RSSI_DBM
    ack_lqi: int = 255


@dataclass
class RxInfo:
    psdu: bytes
    rssi: int
    lqi: int
    channel: int
    t_end: float


@dataclass
class _TxState:
    request: TxRequest
    attempt: int = 0
    cca_failures: int = 0
    nb: int = 0
    be: int = phy.MAC_MIN_BE
    tx: Transmission | None = None
    ack_expected: bool = False
    ack_tx: Transmission | None = None
    timers: list[Any] = field(default_factory=list)


class RadioModel:
    """One radio attached to a Medium; delivers received frames via ``on_receive``."""

    def __init__(self, loop: EventLoop, medium: Medium, peers: list[RadioModel], *,
                 rng: random.Random, name: str = "radio") -> None:
        self.loop = loop
        self.medium = medium
        self.peers = peers  # shared list of every radio in the emulator
        self.rng = rng
        self.name = name
        self.channel = 11
        self.pan_id = 0xFFFF
        self.short_addr = 0xFFFE
        self.ext_addr = bytes(8)  # over-the-air byte order (little-endian)
        self.rx_enabled = False
        self.promiscuous = False
        self.auto_ack = True
        self.tx_power = 0
        self.on_receive: Callable[[RxInfo], None] | None = None
        self._state: _TxState | None = None
        self._ifs_until = 0.0
        self._busy_until = 0.0  # end of our own PPDU / ACK (half duplex)
        self.counters = {"tx_frames": 0, "tx_attempts": 0, "tx_ok": 0, "tx_no_ack": 0, "tx_cca_fail": 0,
                         "cca_busy": 0, "rx_frames": 0, "rx_filtered": 0, "rx_lost": 0, "acks_sent": 0}

    @property
    def busy(self) -> bool:
        return self._state is not None

    # --- transmit ---------------------------------------------------------------
    def transmit(self, request: TxRequest, t_request: float) -> bool:
        """Start a transmission at model time ``t_request``; False if already busy."""
        if self._state is not None:
            return False
        if not 0 < len(request.psdu) <= phy.MAX_PSDU:
            raise ValueError("bad PSDU length")
        request.psdu = phy.with_valid_fcs(request.psdu) if len(request.psdu) >= 5 else request.psdu
        self._state = _TxState(request)
        self.counters["tx_frames"] += 1
        self._start_attempt(max(t_request, self._ifs_until))
        return True

    def _start_attempt(self, t: float) -> None:
        st = self._state
        assert st is not None
        st.attempt += 1
        st.nb = 0
        st.be = phy.MAC_MIN_BE
        self.counters["tx_attempts"] += 1
        if st.request.csma:
            self._backoff(t)
        else:
            self._start_ppdu(t + phy.TURNAROUND_US * US)

    def _backoff(self, t: float) -> None:
        st = self._state
        assert st is not None
        periods = self.rng.randrange(2 ** st.be)
        t_cca = t + periods * phy.UNIT_BACKOFF_US * US
        self.loop.call_at(t_cca + phy.CCA_US * US, self._cca_done, t_cca)

    def _cca_done(self, t_cca: float) -> None:
        st = self._state
        if st is None:
            return
        t_end = t_cca + phy.CCA_US * US
        if self.medium.cca_busy(self.channel_for(st), t_cca, t_end, self):
            st.nb += 1
            st.cca_failures += 1
            self.counters["cca_busy"] += 1
            if st.nb > st.request.max_csma_backoffs:
                self.medium.log_frame("cca_fail", t_end, self.name, st.request.psdu, attempt=st.attempt, nb=st.nb)
                self._finish(TX_CCA_FAILURE, None, t_end)
                return
            st.be = min(st.be + 1, phy.MAC_MAX_BE)
            self.medium.log_frame("cca_busy", t_end, self.name, st.request.psdu, attempt=st.attempt, nb=st.nb,
                                  be=st.be)
            self._backoff(t_end)
        else:
            self._start_ppdu(t_end + phy.TURNAROUND_US * US)

    def channel_for(self, st: _TxState) -> int:
        return st.request.channel

    def _start_ppdu(self, t_start: float) -> None:
        st = self._state
        assert st is not None
        psdu = st.request.psdu
        t_end = t_start + phy.airtime_us(len(psdu)) * US
        tx = Transmission(self, st.request.channel, t_start, t_end, psdu)
        self.medium.begin_tx(tx)
        st.tx = tx
        self._busy_until = t_end
        self.loop.call_at(t_end, self._ppdu_done, tx)

    def _ppdu_done(self, tx: Transmission) -> None:
        st = self._state
        if st is None or st.tx is not tx:
            return
        collided = tx.corrupted  # set by an overlapping PPDU; interference is judged just below
        survived = self.medium.frame_survives(tx)
        if self.medium.frame_log is not None:
            self.medium.log_frame("tx", tx.start, self.name, tx.psdu, attempt=st.attempt, end=round(tx.end, 6),
                                  result="ok" if survived else "collision" if collided else "jammed",
                                  collided_with=sorted(set(tx.collided_with)))
        ack_tx: Transmission | None = None
        try:
            header = phy.parse_mac_header(tx.psdu)
        except phy.MacParseError:
            header = None
        for peer in self.peers:
            if peer is self:
                continue
            got_ack = peer._receive(tx, header, survived)
            if got_ack is not None:
                ack_tx = got_ack
        wants_ack = header is not None and header.ack_request and not header.is_broadcast() \
            and header.frame_type != phy.FRAME_TYPE_ACK
        if not wants_ack:
            self._finish(TX_OK, None, tx.end)
            return
        if ack_tx is not None:
            st.ack_tx = ack_tx
            self.loop.call_at(ack_tx.end, self._ack_done, ack_tx)
        else:
            self.loop.call_at(tx.end + phy.ACK_WAIT_US * US, self._ack_timeout, tx)

    def _ack_done(self, ack_tx: Transmission) -> None:
        st = self._state
        if st is None or st.ack_tx is not ack_tx:
            return
        if self.medium.frame_survives(ack_tx):
            self._finish(TX_OK, ack_tx.psdu, ack_tx.end)
        else:
            # A corrupted ACK looks like no ACK: wait out macAckWaitDuration.
            assert st.tx is not None
            self._ack_timeout(st.tx, max(ack_tx.end, st.tx.end + phy.ACK_WAIT_US * US))

    def _ack_timeout(self, tx: Transmission, t: float | None = None) -> None:
        st = self._state
        if st is None or st.tx is not tx:
            return
        t = t if t is not None else tx.end + phy.ACK_WAIT_US * US
        self.medium.log_frame("retry" if st.attempt <= st.request.max_frame_retries else "no_ack", t, self.name,
                              st.request.psdu, attempt=st.attempt)
        if st.attempt <= st.request.max_frame_retries:
            st.tx = None
            st.ack_tx = None
            self._start_attempt(t)
        else:
            self._finish(TX_NO_ACK, None, t)

    def _finish(self, status: str, ack_psdu: bytes | None, t: float) -> None:
        st = self._state
        assert st is not None
        self._state = None
        psdu_len = len(st.request.psdu)
        self._ifs_until = t + phy.ifs_us(psdu_len) * US
        key = {TX_OK: "tx_ok", TX_NO_ACK: "tx_no_ack", TX_CCA_FAILURE: "tx_cca_fail"}[status]
        self.counters[key] += 1
        result = TxResult(status, ack_psdu, st.attempt, st.cca_failures, t,
                          ack_rssi=FRAME_RSSI_DBM + self.rng.randint(-3, 3), ack_lqi=self.rng.randint(200, 255))
        if st.request.done is not None:
            # Report at the model time the radio finishes.
            self.loop.call_at(t, st.request.done, result)

    # --- receive ----------------------------------------------------------------
    def _receive(self, tx: Transmission, header: phy.MacHeader | None, survived: bool) -> Transmission | None:
        """Called at the end of a peer's PPDU; returns our ACK transmission if we send one."""
        if not self.rx_enabled or tx.channel != self.channel:
            return None
        if self._busy_until > tx.start or (self._state is not None and self._state.tx is not None
                                           and self._state.tx.start < tx.end):
            self.counters["rx_lost"] += 1  # half duplex: we were transmitting
            return None
        if not survived:
            self.counters["rx_lost"] += 1
            return None
        if header is None or not self._accept(header):
            self.counters["rx_filtered"] += 1
            return None
        self.counters["rx_frames"] += 1
        ack_tx = None
        if self.auto_ack and header.ack_request and self._addressed_to_me(header) \
                and header.frame_type in (phy.FRAME_TYPE_DATA, phy.FRAME_TYPE_COMMAND):
            start = tx.end + phy.TURNAROUND_US * US
            ack_psdu = phy.build_ack(header.seq)
            ack_tx = Transmission(self, tx.channel, start, start + phy.ack_airtime_us() * US, ack_psdu, is_ack=True)
            self.medium.begin_tx(ack_tx)
            self._busy_until = max(self._busy_until, ack_tx.end)
            self.counters["acks_sent"] += 1
        if self.on_receive is not None:
            info = RxInfo(tx.psdu, FRAME_RSSI_DBM + self.rng.randint(-3, 3), self.rng.randint(200, 255),
                          tx.channel, tx.end)
            self.loop.call_at(tx.end, self.on_receive, info)
        return ack_tx

    def _addressed_to_me(self, h: phy.MacHeader) -> bool:
        if h.dst_pan is not None and h.dst_pan not in (self.pan_id, phy.BROADCAST_PAN):
            return False
        if isinstance(h.dst_addr, int):
            return h.dst_addr == self.short_addr
        if isinstance(h.dst_addr, bytes):
            return h.dst_addr == self.ext_addr
        return False

    def _accept(self, h: phy.MacHeader) -> bool:
        if self.promiscuous:
            return True
        if h.frame_type == phy.FRAME_TYPE_ACK:
            return False  # ACKs are consumed by the transmitter's state machine
        if h.dst_addr is None:
            return h.frame_type == phy.FRAME_TYPE_BEACON
        if h.dst_pan not in (self.pan_id, phy.BROADCAST_PAN):
            return False
        return h.dst_addr == phy.BROADCAST_ADDR or self._addressed_to_me(h)
