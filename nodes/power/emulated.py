"""The emulated meter: energy from a documented power model, for the embedded testbed without meters.

Encode (the Raspberry Pi 4B client): the idle baseline over the encode's wall
time plus one busy core's extra power over the CPU time the encoding thread
used (``time.thread_time_ns()`` around ``encode``). Transmit (the nRF52840
radio): supply voltage x (TX current x time on air + RX current x time
listening for CCA and ACKs) for 802.15.4 radio links; TX current x bytes on the
link x 8 / its rate for shaped links; TX current x the transmit window when the
link has no constant rate (traces, direct): an upper bound. Sources and which
numbers are assumptions: docs/energy.md.
"""

from __future__ import annotations

import math

from hilbed.firmware_bridge import phy

from .base import Energy, PowerMeter

#: Raspberry Pi 4B at 5 V, idle: 540 mA = 2.7 W (pidramble.com power-consumption benchmarks, Pi 4 B)
PI4B_IDLE_MW = 2700.0
#: Raspberry Pi 4B, 4 cores busy (stress --cpu 4): 1280 mA = 6.4 W (same source)
PI4B_LOAD_4CORE_MW = 6400.0
#: extra power of one busy core: (load - idle) / 4 -- ASSUMPTION: power grows linearly with busy cores
PI4B_CORE_ACTIVE_MW = (PI4B_LOAD_4CORE_MW - PI4B_IDLE_MW) / 4
#: nRF52840 supply voltage of the product specification's current figures (3 V, DC/DC on)
NRF52840_SUPPLY_V = 3.0
#: nRF52840 TX current at 0 dBm, DC/DC at 3 V (nRF52840 Product Specification v1.7, I_TX,0dBm,DCDC)
NRF52840_TX_0DBM_MA = 4.8
#: nRF52840 RX current, DC/DC at 3 V: the PS's 1 Mbit/s BLE figure (I_RX,1M,DCDC) -- ASSUMPTION for 802.15.4 RX
NRF52840_RX_MA = 4.6


def radio_airtime_us(frames: int, retries: int, payload_bytes: int) -> tuple[float, float]:
    """(time transmitting, time receiving) of one message's 802.15.4 frames, in us.

    Every attempt sends a frame of the mean size (payload spread over the
    distinct frames + MAC header + FCS, at most 127 B) after a CCA; each
    delivered frame listens for its ACK (turnaround + ACK air time), each retry
    waited the full ACK timeout. IEEE 802.15.4 timing from
    :mod:`hilbed.firmware_bridge.phy`.
    """
    if frames <= 0:
        return 0.0, 0.0
    per = math.ceil(max(0, payload_bytes) / frames)
    psdu = min(phy.MAX_PSDU, phy.SHORT_DATA_HEADER_LEN + phy.FCS_LEN + per)
    attempts = frames + max(0, retries)
    tx = attempts * phy.airtime_us(psdu)
    rx = attempts * phy.CCA_US + frames * (phy.TURNAROUND_US + phy.ack_airtime_us()) + max(0, retries) * phy.ACK_WAIT_US
    return float(tx), float(rx)


class EmulatedMeter(PowerMeter):
    """The model above; every constant can be overridden from the client's ``power_meter`` settings."""

    kind = "emulated"

    def __init__(self, idle_mw: float = PI4B_IDLE_MW, core_active_mw: float = PI4B_CORE_ACTIVE_MW,
                 supply_v: float = NRF52840_SUPPLY_V, tx_ma: float = NRF52840_TX_0DBM_MA,
                 rx_ma: float = NRF52840_RX_MA):
        self.idle_mw, self.core_active_mw = float(idle_mw), float(core_active_mw)
        self.supply_v, self.tx_ma, self.rx_ma = float(supply_v), float(tx_ma), float(rx_ma)

    def describe(self) -> dict:
        return {"kind": self.kind, "idle_mw": self.idle_mw, "core_active_mw": self.core_active_mw,
                "supply_v": self.supply_v, "tx_ma": self.tx_ma, "rx_ma": self.rx_ma}

    def baseline(self, duration_s: float) -> tuple[float | None, Energy]:
        """The model's idle power; nothing is sampled (a model does not need to wait)."""
        return self.idle_mw, Energy(self.idle_mw * duration_s, 0, 0, 0)

    def integrate(self, t0_ns: int, t1_ns: int) -> Energy:
        """With no activity known: idle power over the window."""
        return Energy(self.idle_mw * (t1_ns - t0_ns) / 1e9, 0, 0, 0)

    def encode_energy(self, t0_ns: int, t1_ns: int, cpu_ns: int) -> Energy:
        return Energy((self.idle_mw * (t1_ns - t0_ns) + self.core_active_mw * max(0, cpu_ns)) / 1e9, 0, 0, 0)

    def tx_energy(self, t0_ns: int, t1_ns: int, link: dict) -> Energy:
        """``link``: kind, rate_kbps, wire_bytes_sent, bytes_total, packets_sent, retries (the send report)."""
        if link.get("kind") == "radio":
            payload = link.get("wire_bytes_sent") or link.get("bytes_total") or 0
            tx_us, rx_us = radio_airtime_us(int(link.get("packets_sent") or 0), int(link.get("retries") or 0),
                                            int(payload))
        else:
            rate = link.get("rate_kbps")
            tx_us = (int(link.get("wire_bytes_sent") or 0) * 8 / (float(rate) * 1e3) * 1e6 if rate
                     else max(0, t1_ns - t0_ns) / 1e3)
            rx_us = 0.0
        # mA * V = mW; mW * us / 1e6 = mJ
        return Energy(self.supply_v * (self.tx_ma * tx_us + self.rx_ma * rx_us) / 1e6, 0, 0, 0)
