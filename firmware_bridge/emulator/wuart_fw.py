"""Emulated Nordic "Wireless UART 15.4" example firmware.

Why: the example is a transparent UART <-> 802.15.4 bridge; hilbed's wuart
path (framing, resync, deadline aborts) must be tested against the same
behaviour without boards.  What the firmware does, as modelled here:

* UART at 230400 baud, 8N1, RTS/CTS.  Bytes from the host accumulate in a
  buffer; when the buffer holds ``UART_BUFFER_LIMIT`` bytes the firmware
  stops accepting more (CTS deasserted -> the host's writes block);
* whenever the radio is idle and the buffer is not empty, the firmware sends
  one MCPS-DATA request carrying up to ``max_msdu`` buffered bytes to its
  peer (short addresses, PAN ID compression, ACK requested);
* a failed request (no ACK after the MAC's retries, or channel access
  failure) is repeated until it succeeds -- the example retries until it
  gets a successful confirm, so data is delayed, not lost, under jamming;
* received frames' MSDUs are written to the UART in order; MAC-level
  duplicates (same source and sequence number as the previous frame, i.e. a
  retransmission whose ACK was lost) are dropped, as the MAC does.

Not in the example, hilbed's addition: the version query
(``wuart.WUART_VERSION_QUERY``, docs/wuart-framing.md) is answered on
the UART and not transmitted, so ``hilbed check`` can tell emulated
firmware apart; real firmware sends those bytes to its peer instead.

Pairing with N radios: 0<->1, 2<->3, ...; an unpaired last radio
broadcasts.  Channel, PAN ID and addresses are fixed at "compile time".
"""

from __future__ import annotations

import logging
import random

from .. import phy
from ..wuart import WUART_VERSION_QUERY, WUART_VERSION_REPLY_PREFIX
from .loop import EventLoop
from .medium import Medium
from .pty_port import ByteQueue, PtyPort
from .radio_model import TX_OK, RadioModel, RxInfo, TxRequest, TxResult

log = logging.getLogger(__name__)

DEFAULT_BAUD = 230400
DEFAULT_CHANNEL = 11
PAN_ID = 0x1357
DEFAULT_MAX_MSDU = 100
UART_BUFFER_LIMIT = 1024
RETRY_DELAY_S = 0.0005
#: Answer to the version query; "hilbed-emulated" marks it as not real firmware.
WUART_VERSION = "hilbed-emulated-wuart/1.0; NRF52840; nRF5 SDK wireless_uart 802.15.4 example"
#: Held bytes that look like the start of a query are forwarded after this much
#: silence, so data ending in a query prefix is delayed, never kept.
QUERY_HOLD_S = 0.002


class EmulatedWuart:
    def __init__(self, loop: EventLoop, medium: Medium, peers: list[RadioModel], *, index: int, count: int,
                 baud: int = DEFAULT_BAUD, channel: int = DEFAULT_CHANNEL, max_msdu: int = DEFAULT_MAX_MSDU,
                 rng: random.Random | None = None) -> None:
        if not 1 <= max_msdu <= phy.MAX_SHORT_DATA_PAYLOAD:
            raise ValueError(f"max_msdu must be 1..{phy.MAX_SHORT_DATA_PAYLOAD}")
        self.loop = loop
        self.index = index
        self.rng = rng or random.Random()
        self.max_msdu = max_msdu
        self.radio = RadioModel(loop, medium, peers, rng=self.rng, name=f"wuart{index}")
        peers.append(self.radio)
        self.radio.channel = channel
        self.radio.pan_id = PAN_ID
        self.radio.short_addr = 0x0001 + index
        self.radio.rx_enabled = True
        self.radio.on_receive = self._on_receive
        partner = index ^ 1
        self.peer_addr = 0x0001 + partner if partner < count else phy.BROADCAST_ADDR
        self.port = PtyPort(loop, baud, self._on_uart_bytes, name=f"wuart{index}")
        self.uart_in = ByteQueue()
        self._seq = self.rng.randrange(256)
        self._inflight: bytes | None = None
        self._last_rx: tuple[int | bytes | None, int] | None = None
        self.counters = {"frames_sent": 0, "msdu_bytes_sent": 0, "request_failures": 0,
                         "frames_received": 0, "duplicates": 0, "version_queries": 0}
        self._held = b""  # bytes matching a prefix of the version query, not forwarded yet
        self._hold_gen = 0

    @property
    def path(self) -> str:
        return self.port.path

    # --- UART -> radio ----------------------------------------------------------
    def _on_uart_bytes(self, data: bytes, t: float) -> None:
        data = self._filter_query(data, t)
        if data:
            self.uart_in.push(data)
        if len(self.uart_in) + self.port.in_flight >= UART_BUFFER_LIMIT:
            self.port.pause_reading()
        self._kick(t)

    def _filter_query(self, data: bytes, t: float) -> bytes:
        """Strip version queries from the UART stream (answering each); return the bytes to forward.

        A streaming match: bytes that could begin the query are held until the
        query completes (answered, dropped) or diverges (forwarded in order).
        The query's first byte occurs only at its start, so on a mismatch the
        held bytes can be released whole and the current byte re-examined.
        """
        q = WUART_VERSION_QUERY
        out = bytearray()
        held = self._held
        for b in data:
            if held and q[len(held)] != b:
                out += held
                held = b""
            if q[len(held)] == b:
                held += bytes((b,))
                if held == q:
                    held = b""
                    self.counters["version_queries"] += 1
                    self.port.write(WUART_VERSION_REPLY_PREFIX + WUART_VERSION.encode() + b"\n", not_before=t)
            else:
                out.append(b)
        self._held = held
        if held:
            self._hold_gen += 1
            self.loop.call_at(t + QUERY_HOLD_S, self._release_held, self._hold_gen)
        return bytes(out)

    def _release_held(self, gen: int) -> None:
        if gen != self._hold_gen or not self._held:
            return
        held, self._held = self._held, b""
        self.uart_in.push(held)
        self._kick(self.loop.time())

    def _kick(self, t: float) -> None:
        if self._inflight is not None or self.radio.busy or not len(self.uart_in):
            return
        msdu = self.uart_in.pop(self.max_msdu)
        if len(self.uart_in) + self.port.in_flight < UART_BUFFER_LIMIT // 2:
            self.port.resume_reading()
        self._inflight = msdu
        self._seq = (self._seq + 1) & 0xFF
        self._send_inflight(t)

    def _send_inflight(self, t: float) -> None:
        assert self._inflight is not None
        psdu = phy.build_data_frame(self._seq, PAN_ID, self.peer_addr, self.radio.short_addr, self._inflight)
        req = TxRequest(psdu, self.radio.channel, done=self._tx_done)
        if not self.radio.transmit(req, t):  # pragma: no cover - guarded by _kick
            log.error("wuart%d: radio unexpectedly busy", self.index)

    def _tx_done(self, res: TxResult) -> None:
        assert self._inflight is not None
        if res.status == TX_OK:
            self.counters["frames_sent"] += 1
            self.counters["msdu_bytes_sent"] += len(self._inflight)
            self._inflight = None
            self._kick(res.t_done)
        else:
            self.counters["request_failures"] += 1
            self.loop.call_at(res.t_done + RETRY_DELAY_S, self._send_inflight, res.t_done + RETRY_DELAY_S)

    # --- radio -> UART ----------------------------------------------------------
    def _on_receive(self, rx: RxInfo) -> None:
        try:
            header = phy.parse_mac_header(rx.psdu)
        except phy.MacParseError:
            return
        if header.frame_type != phy.FRAME_TYPE_DATA:
            return
        key = (header.src_addr, header.seq)
        if key == self._last_rx:
            self.counters["duplicates"] += 1
            return
        self._last_rx = key
        self.counters["frames_received"] += 1
        self.port.write(phy.mac_payload(rx.psdu, header), not_before=rx.t_end)

    def close(self) -> None:
        self.port.close()
