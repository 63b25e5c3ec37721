"""Emulated OpenThread RCP (``ot-rcp`` on an nRF52840) speaking Spinel over HDLC-Lite.

Why: lets hilbed's Spinel driver, the message transport and the benchmarks
run without boards, through a real pty and pyserial.  The behaviour mirrors
what the stock firmware does for the properties hilbed uses:

* GET/SET reply with ``PROP_VALUE_IS`` carrying the same TID; unknown
  properties give ``LAST_STATUS PROP_NOT_FOUND``; unknown commands
  ``INVALID_COMMAND``; malformed values ``PARSE_ERROR``;
* ``RESET`` clears the radio configuration and emits an unsolicited
  ``LAST_STATUS RESET_POWER_ON`` (status 112, TID 0);
* ``SET STREAM_RAW`` transmits one frame (CSMA-CA, ACK, retries handled by
  the radio model with the request's metadata) and completes with
  ``PROP_VALUE_IS LAST_STATUS`` carrying the request's TID: status, frame
  pending, header updated, and on success the ACK frame;
* received frames are emitted as unsolicited ``PROP_VALUE_IS STREAM_RAW``
  when ``PHY_ENABLED`` is true (OpenThread only installs the receive callback
  then) -- PSDU, RSSI, noise floor, flags, t(channel, LQI, timestamp), t(error),
  t(ACK key id, frame counter);
* ``SET MAC_SCAN_STATE = ENERGY`` scans each channel of ``MAC_SCAN_MASK``
  for ``MAC_SCAN_PERIOD`` ms and emits ``MAC_ENERGY_SCAN_RESULT`` (channel,
  max RSSI) per channel, then ``MAC_SCAN_STATE = IDLE``.
"""

from __future__ import annotations

import hashlib
import logging
import random

from .. import hdlc, phy, spinel
from .loop import EventLoop
from .medium import Medium
from .pty_port import PtyPort
from .radio_model import TX_CCA_FAILURE, TX_NO_ACK, TX_OK, RadioModel, RxInfo, TxRequest, TxResult

log = logging.getLogger(__name__)

#: What ``otGetVersionString()`` returns on ot-rcp ("OPENTHREAD/<version>;
#: <platform>; <build date>"), with "hilbed-emulated" in the version part so
#: an emulated radio never passes for a real one.
NCP_VERSION = "OPENTHREAD/thread-reference-20230706-hilbed-emulated; NRF52840; Jan  1 2024 00:00:00"
#: What an ot-rcp build reports in PROP_CAPS: NcpBase::HandlePropertyGet<SPINEL_PROP_CAPS>
#: (openthread src/ncp/ncp_base.cpp) with OPENTHREAD_RADIO and 2.4 GHz O-QPSK.
CAPS = [spinel.CAP_COUNTERS, spinel.CAP_UNSOL_UPDATE_FILTER, spinel.CAP_802_15_4_2450MHZ_OQPSK,
        spinel.CAP_CONFIG_RADIO, spinel.CAP_MAC_RAW, spinel.CAP_RCP_API_VERSION]
#: Nordic Semiconductor's IEEE OUI; the rest of the factory EUI-64 is per radio.
HWADDR_OUI = bytes([0xF4, 0xCE, 0x36])
DEFAULT_BAUD = 1_000_000
SUPPORTED_CHANNELS = list(range(11, 27))


class EmulatedSpinelRcp:
    def __init__(self, loop: EventLoop, medium: Medium, peers: list[RadioModel], *, index: int,
                 baud: int = DEFAULT_BAUD, rng: random.Random | None = None) -> None:
        self.loop = loop
        self.index = index
        self.rng = rng or random.Random()
        self.radio = RadioModel(loop, medium, peers, rng=self.rng, name=f"rcp{index}")
        peers.append(self.radio)
        self.radio.on_receive = self._on_receive
        self.port = PtyPort(loop, baud, self._on_bytes, name=f"rcp{index}")
        self.decoder = hdlc.HdlcDecoder(max_frame=spinel_frame_max())
        self.medium = medium
        self.hwaddr = emulated_hwaddr(self.rng, index)
        self.counters = {"frames_in": 0, "frames_out": 0, "bad_spinel": 0, "rx_dropped": 0}
        self._scan_queue: list[int] = []
        self._scan_period_ms = 0
        self._scan_mask: list[int] = []
        self._scan_state = spinel.SCAN_STATE_IDLE
        self._tx_tid = 0
        self._reset_state()

    @property
    def path(self) -> str:
        return self.port.path

    def _reset_state(self) -> None:
        r = self.radio
        r.rx_enabled = False
        r.channel = 11
        r.pan_id = 0xFFFF
        r.short_addr = 0xFFFE
        r.ext_addr = bytes(reversed(self.hwaddr))
        r.promiscuous = False
        r.tx_power = 0
        self.raw_stream_enabled = False
        self._scan_mask = []
        self._scan_period_ms = 0
        self._scan_queue = []
        self._scan_state = spinel.SCAN_STATE_IDLE

    # --- serial input -----------------------------------------------------------
    def _on_bytes(self, data: bytes, t: float) -> None:
        for payload in self.decoder.feed(data):
            self.counters["frames_in"] += 1
            try:
                frame = spinel.SpinelFrame.decode(payload)
            except spinel.SpinelError as exc:
                self.counters["bad_spinel"] += 1
                log.debug("rcp%d: dropping non-Spinel frame: %s", self.index, exc)
                continue
            try:
                self._handle(frame, t)
            except spinel.SpinelError as exc:
                self.counters["bad_spinel"] += 1
                self._send(spinel.last_status(spinel.STATUS_PARSE_ERROR, frame.tid), t)
                log.debug("rcp%d: parse error in %s: %s", self.index, frame.describe(), exc)

    def _send(self, spinel_frame: bytes, t: float | None = None) -> None:
        self.counters["frames_out"] += 1
        self.port.write(hdlc.encode(spinel_frame), not_before=t)

    # --- command dispatch -------------------------------------------------------
    def _handle(self, frame: spinel.SpinelFrame, t: float) -> None:
        tid = frame.tid
        if frame.command == spinel.CMD_NOOP:
            self._send(spinel.last_status(spinel.STATUS_OK, tid), t)
        elif frame.command == spinel.CMD_RESET:
            self._reset_state()
            self._send(spinel.last_status(spinel.STATUS_RESET_POWER_ON, 0), t)
        elif frame.command == spinel.CMD_PROP_VALUE_GET:
            prop, _ = frame.prop()
            value = self._get(prop)
            if value is None:
                self._send(spinel.last_status(spinel.STATUS_PROP_NOT_FOUND, tid), t)
            else:
                self._send(spinel.cmd_prop_is(prop, value, tid), t)
        elif frame.command == spinel.CMD_PROP_VALUE_SET:
            prop, value = frame.prop()
            self._set(prop, value, tid, t)
        else:
            self._send(spinel.last_status(spinel.STATUS_INVALID_COMMAND, tid), t)

    def _get(self, prop: int) -> bytes | None:
        r = self.radio
        p = spinel
        values = {
            p.PROP_LAST_STATUS: lambda: p.pack("i", p.STATUS_OK),
            p.PROP_PROTOCOL_VERSION: lambda: p.pack("ii", p.PROTOCOL_VERSION_MAJOR, p.PROTOCOL_VERSION_MINOR),
            p.PROP_NCP_VERSION: lambda: p.pack("U", NCP_VERSION),
            p.PROP_INTERFACE_TYPE: lambda: p.pack("i", p.PROTOCOL_TYPE_THREAD),
            p.PROP_VENDOR_ID: lambda: p.pack("i", 0),
            p.PROP_CAPS: lambda: p.pack("A(i)", CAPS),
            p.PROP_INTERFACE_COUNT: lambda: p.pack("C", 1),
            p.PROP_HWADDR: lambda: p.pack("E", self.hwaddr),
            p.PROP_PHY_ENABLED: lambda: p.pack("b", r.rx_enabled),
            p.PROP_PHY_CHAN: lambda: p.pack("C", r.channel),
            p.PROP_PHY_CHAN_SUPPORTED: lambda: p.pack("A(C)", SUPPORTED_CHANNELS),
            p.PROP_PHY_TX_POWER: lambda: p.pack("c", r.tx_power),
            p.PROP_PHY_RSSI: lambda: p.pack("c", self._rssi_now()),
            p.PROP_PHY_RX_SENSITIVITY: lambda: p.pack("c", -100),
            p.PROP_PHY_CCA_THRESHOLD: lambda: p.pack("c", -75),
            p.PROP_MAC_15_4_LADDR: lambda: p.pack("E", bytes(reversed(r.ext_addr))),
            p.PROP_MAC_15_4_SADDR: lambda: p.pack("S", r.short_addr),
            p.PROP_MAC_15_4_PANID: lambda: p.pack("S", r.pan_id),
            p.PROP_MAC_RAW_STREAM_ENABLED: lambda: p.pack("b", self.raw_stream_enabled),
            p.PROP_MAC_PROMISCUOUS_MODE: lambda: p.pack("C", 2 if r.promiscuous else 0),
            p.PROP_MAC_SCAN_STATE: lambda: p.pack("C", self._scan_state),
            p.PROP_MAC_SCAN_MASK: lambda: p.pack("A(C)", self._scan_mask),
            p.PROP_MAC_SCAN_PERIOD: lambda: p.pack("S", self._scan_period_ms),
        }
        getter = values.get(prop)
        return getter() if getter else None

    def _rssi_now(self) -> int:
        now = self.loop.time()
        return self.medium.energy_dbm(self.radio.channel, now - 0.000128, now, self.rng)

    def _set(self, prop: int, value: bytes, tid: int, t: float) -> None:
        r = self.radio
        p = spinel
        if prop == p.PROP_STREAM_RAW:
            self._transmit(value, tid, t)
            return
        if prop == p.PROP_MAC_SCAN_STATE:
            (state,) = p.unpack("C", value)
            if state == p.SCAN_STATE_ENERGY:
                if not self._scan_mask:
                    self._send(p.last_status(p.STATUS_INVALID_ARGUMENT, tid), t)
                    return
                self._scan_state = state
                self._send(p.cmd_prop_is(prop, p.pack("C", state), tid), t)
                self._scan_queue = list(self._scan_mask)
                self._scan_next(t)
            elif state == p.SCAN_STATE_IDLE:
                self._scan_state = state
                self._scan_queue = []
                self._send(p.cmd_prop_is(prop, p.pack("C", state), tid), t)
            else:
                self._send(p.last_status(p.STATUS_UNIMPLEMENTED, tid), t)
            return
        fmt = p.PROP_FORMATS.get(prop)
        setters = {
            p.PROP_PHY_ENABLED: lambda v: setattr(r, "rx_enabled", bool(v)),
            p.PROP_PHY_CHAN: self._set_channel,
            p.PROP_PHY_TX_POWER: lambda v: setattr(r, "tx_power", max(-40, min(8, v))),
            p.PROP_MAC_15_4_LADDR: lambda v: setattr(r, "ext_addr", bytes(reversed(v))),
            p.PROP_MAC_15_4_SADDR: lambda v: setattr(r, "short_addr", v),
            p.PROP_MAC_15_4_PANID: lambda v: setattr(r, "pan_id", v),
            p.PROP_MAC_RAW_STREAM_ENABLED: lambda v: setattr(self, "raw_stream_enabled", bool(v)),
            p.PROP_MAC_PROMISCUOUS_MODE: lambda v: setattr(r, "promiscuous", v != 0),
            p.PROP_MAC_SCAN_MASK: self._set_scan_mask,
            p.PROP_MAC_SCAN_PERIOD: lambda v: setattr(self, "_scan_period_ms", v),
        }
        setter = setters.get(prop)
        if setter is None or fmt is None:
            status = p.STATUS_PROP_NOT_FOUND if self._get(prop) is None else p.STATUS_INVALID_COMMAND_FOR_PROP
            self._send(p.last_status(status, tid), t)
            return
        values = p.unpack(fmt, value)
        try:
            setter(values[0])
        except ValueError:
            self._send(p.last_status(p.STATUS_INVALID_ARGUMENT, tid), t)
            return
        reply = self._get(prop)
        assert reply is not None
        self._send(p.cmd_prop_is(prop, reply, tid), t)

    def _set_channel(self, channel: int) -> None:
        if channel not in SUPPORTED_CHANNELS:
            raise ValueError(f"channel {channel} not supported")
        self.radio.channel = channel

    def _set_scan_mask(self, channels: list[int]) -> None:
        if any(c not in SUPPORTED_CHANNELS for c in channels):
            raise ValueError("bad channel in scan mask")
        self._scan_mask = list(channels)

    # --- transmit ---------------------------------------------------------------
    def _transmit(self, value: bytes, tid: int, t: float) -> None:
        p = spinel
        fields = p.unpack(p.STREAM_RAW_TX_FORMAT, value, partial=True)
        if len(fields) < 2:
            raise p.SpinelError("STREAM_RAW transmit needs PSDU and channel")
        psdu, channel = fields[0], fields[1]
        max_backoffs = fields[2] if len(fields) > 2 else 4
        max_retries = fields[3] if len(fields) > 3 else 3
        csma = fields[4] if len(fields) > 4 else True
        if not self.radio.rx_enabled:  # otLinkRawIsEnabled(): PHY_ENABLED must be set
            self._send(p.last_status(p.STATUS_INVALID_STATE, tid), t)
            return
        if not 5 <= len(psdu) <= phy.MAX_PSDU or channel not in SUPPORTED_CHANNELS:
            self._send(p.last_status(p.STATUS_INVALID_ARGUMENT, tid), t)
            return
        if self.radio.busy:
            self._send(p.last_status(p.STATUS_INVALID_STATE, tid), t)
            return
        self._tx_tid = tid
        # OpenThread switches the receiver to the frame's channel for the
        # transmission and stays there (rx channel after TX defaults to it).
        self.radio.channel = channel
        request = TxRequest(psdu, channel, csma=csma, max_csma_backoffs=max_backoffs,
                            max_frame_retries=max_retries, done=lambda res: self._tx_done(res, tid))
        self.radio.transmit(request, t)

    def _tx_done(self, res: TxResult, tid: int) -> None:
        p = spinel
        status = {TX_OK: p.STATUS_OK, TX_NO_ACK: p.STATUS_NO_ACK, TX_CCA_FAILURE: p.STATUS_CCA_FAILURE}[res.status]
        value = p.pack("ibb", status, False, False)
        if res.status == TX_OK:
            info = p.RawFrameInfo(res.ack_psdu or b"", rssi=res.ack_rssi if res.ack_psdu else None,
                                  channel=self.radio.channel, lqi=res.ack_lqi if res.ack_psdu else None,
                                  timestamp_us=int(res.t_done * 1e6))
            value += p.pack_raw_frame(info)
        self._send(p.cmd_prop_is(p.PROP_LAST_STATUS, value, tid), res.t_done)

    # --- receive ----------------------------------------------------------------
    def _on_receive(self, rx: RxInfo) -> None:
        if not self.radio.rx_enabled:
            self.counters["rx_dropped"] += 1
            return
        info = spinel.RawFrameInfo(rx.psdu, rssi=rx.rssi, noise_floor=None, flags=0, channel=rx.channel,
                                   lqi=rx.lqi, timestamp_us=int(rx.t_end * 1e6))
        self._send(spinel.cmd_prop_is(spinel.PROP_STREAM_RAW, spinel.pack_raw_frame(info), 0), rx.t_end)

    # --- energy scan ------------------------------------------------------------
    def _scan_next(self, t: float) -> None:
        if not self._scan_queue:
            self._scan_state = spinel.SCAN_STATE_IDLE
            self._send(spinel.cmd_prop_is(spinel.PROP_MAC_SCAN_STATE, spinel.pack("C", 0), 0), t)
            return
        channel = self._scan_queue.pop(0)
        duration = max(self._scan_period_ms, 1) / 1000.0
        self.loop.call_at(t + duration, self._scan_channel_done, channel, t, t + duration)

    def _scan_channel_done(self, channel: int, t0: float, t1: float) -> None:
        if self._scan_state != spinel.SCAN_STATE_ENERGY:
            return
        rssi = self.medium.energy_dbm(channel, t0, t1, self.rng)
        self._send(spinel.cmd_prop_is(spinel.PROP_MAC_ENERGY_SCAN_RESULT, spinel.pack("Cc", channel, rssi), 0), t1)
        self._scan_next(t1)

    def close(self) -> None:
        self.port.close()


def emulated_hwaddr(rng: random.Random, index: int) -> bytes:
    """Factory EUI-64 of emulated radio ``index``: Nordic OUI, 4 bytes from the radio's seed, the index.

    Derived from the rng's state without drawing from it, so seeded runs keep
    their backoff/interference sequences; the index byte keeps the radios of
    one emulator distinct even when the random bytes collide.
    """
    digest = hashlib.sha256(repr(rng.getstate()).encode()).digest()
    return HWADDR_OUI + digest[:4] + bytes([index & 0xFF])


def spinel_frame_max() -> int:
    return 1300
