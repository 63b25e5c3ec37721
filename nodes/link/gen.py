"""Synthetic LPWAN link traces (Mahimahi opportunities), seeded and documented.

Each generator returns a :class:`GeneratedTrace`: opportunity times in whole
milliseconds plus the opportunity size to use with them (LPWAN opportunities
are much smaller than Mahimahi's 1504 bytes). Models and sources are in
docs/links.md:

- LoRa: Semtech AN1200.13 time on air; bit rate Rb = SF * BW / 2^SF * CR;
  one opportunity (one frame's payload) per frame, frames spaced by the
  duty-cycle off time (ETSI EN 300 220: Toff = ToA / duty - ToA).
- LTE-M (Cat-M1) uplink: a Gauss-Markov shadowing process in dB mapped to a
  rate clipped to [50, 375] kbit/s (HD-FDD; 1 Mbit/s peak with FD-FDD), sent
  in the uplink subframes of the HD-FDD pattern (3 of every 8 ms), with
  random scheduling gaps (other UEs, downlink, paging).
- IEEE 802.15.4 (2.4 GHz O-QPSK, 250 kbit/s PHY): one MAC payload per frame
  cycle of unslotted CSMA-CA backoff + CCA + turnaround + frame + ACK + IFS.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass
class GeneratedTrace:
    kind: str
    times_ms: list[int]
    opportunity_bytes: int
    params: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)

    @property
    def mean_kbps(self) -> float:
        return len(self.times_ms) * self.opportunity_bytes * 8 / self.times_ms[-1] if self.times_ms[-1] else math.inf


# ---------------------------------------------------------------- LoRa ---

LORA_SF = range(5, 13)
LORA_BW_KHZ = (7.8, 10.4, 15.6, 20.8, 31.25, 41.7, 62.5, 125.0, 250.0, 500.0)


def lora_bitrate_bps(sf: int, bw_hz: float, cr: int = 1) -> float:
    """Rb = SF * BW / 2^SF * 4 / (4 + cr) (cr 1..4 = coding rate 4/5..4/8)."""
    return sf * bw_hz / 2 ** sf * 4.0 / (4 + cr)


def lora_time_on_air_s(payload_bytes: int, sf: int, bw_hz: float, cr: int = 1, preamble: int = 8,
                       explicit_header: bool = True, crc: bool = True, ldro: bool | None = None) -> float:
    """Semtech AN1200.13 time on air of one LoRa frame, seconds."""
    if sf not in LORA_SF:
        raise ValueError(f"spreading factor {sf} out of range (allowed: 5..12)")
    if cr not in (1, 2, 3, 4):
        raise ValueError(f"coding rate index {cr} out of range (1..4 for 4/5..4/8)")
    if not 0 <= payload_bytes <= 255:
        raise ValueError("LoRa payload must be 0..255 bytes")
    t_sym = 2 ** sf / bw_hz
    if ldro is None:  # low data rate optimisation is mandated above 16 ms symbols
        ldro = t_sym > 0.016
    de = 1 if ldro else 0
    ih = 0 if explicit_header else 1
    t_preamble = (preamble + 4.25) * t_sym
    num = 8 * payload_bytes - 4 * sf + 28 + 16 * (1 if crc else 0) - 20 * ih
    n_payload = 8 + max(math.ceil(num / (4 * (sf - 2 * de))) * (cr + 4), 0)
    return t_preamble + n_payload * t_sym


def gen_lora(duration_s: float = 60.0, sf: int = 7, bw_khz: float = 125.0, cr: int = 1, payload_bytes: int = 51,
             duty_cycle: float = 0.01, preamble: int = 8, explicit_header: bool = True, crc: bool = True) -> GeneratedTrace:
    if not 0 < duty_cycle <= 1:
        raise ValueError("duty cycle must be in (0, 1]")
    if payload_bytes <= 0:
        raise ValueError("payload must be > 0 bytes")
    bw = bw_khz * 1000.0
    toa = lora_time_on_air_s(payload_bytes, sf, bw, cr, preamble, explicit_header, crc)
    cycle = toa / duty_cycle  # frame + mandatory off time
    # Frame k is delivered at the end of its cycle, (k + 1) * cycle: with the
    # last opportunity equal to K cycles, a looping trace keeps the duty-cycle
    # spacing across the wrap (Mahimahi's period is the last timestamp).
    k_total = max(1, math.floor(duration_s / cycle + 1e-9))
    times = [max(1, round((k + 1) * cycle * 1000)) for k in range(k_total)]
    return GeneratedTrace("lora", times, payload_bytes,
                          params={"sf": sf, "bw_khz": bw_khz, "cr": f"4/{4 + cr}", "payload_bytes": payload_bytes,
                                  "duty_cycle": duty_cycle, "preamble": preamble, "explicit_header": explicit_header,
                                  "crc": crc, "duration_s": duration_s},
                          facts={"bitrate_bps": lora_bitrate_bps(sf, bw, cr), "time_on_air_ms": toa * 1000,
                                 "frame_cycle_ms": cycle * 1000,
                                 "goodput_kbps": payload_bytes * 8 / cycle / 1000})


# --------------------------------------------------------------- LTE-M ---

def gen_ltem(duration_s: float = 60.0, seed: int = 0, median_kbps: float = 180.0, min_kbps: float = 50.0,
             max_kbps: float | None = None, sigma_db: float = 3.0, coherence_s: float = 2.0,
             gaps_per_s: float = 2.0, gap_ms: tuple[int, int] = (8, 40), duplex: str = "hd",
             opportunity_bytes: int = 125) -> GeneratedTrace:
    """Cat-M1 uplink; ``duplex`` 'hd' (375 kbit/s cap, 3 UL subframes per 8 ms) or 'fd' (1 Mbit/s, every ms)."""
    if duplex not in ("hd", "fd"):
        raise ValueError("duplex must be 'hd' or 'fd'")
    cap = max_kbps if max_kbps is not None else (375.0 if duplex == "hd" else 1000.0)
    if not 0 < min_kbps <= median_kbps <= cap:
        raise ValueError(f"need 0 < min_kbps <= median_kbps <= max_kbps ({cap:g})")
    rng = random.Random(seed)
    step_ms = 10  # shadowing update step
    a = math.exp(-step_ms / 1000.0 / coherence_s)
    x_db = rng.gauss(0.0, sigma_db)
    ul_per_cycle = 3 if duplex == "hd" else 8
    times: list[int] = []
    carry = 0.0
    gap_left = 0
    n_ms = int(round(duration_s * 1000))
    rate_sum = 0.0
    gap_total = 0
    p_gap = gaps_per_s / 1000.0
    for ms in range(n_ms):
        if ms % step_ms == 0 and ms:
            x_db = a * x_db + math.sqrt(1 - a * a) * rng.gauss(0.0, sigma_db)
        rate = min(cap, max(min_kbps, median_kbps * 10 ** (x_db / 10.0)))
        rate_sum += rate
        if gap_left > 0:
            gap_left -= 1
            gap_total += 1
            continue
        if rng.random() < p_gap:
            gap_left = rng.randint(*gap_ms) - 1
            gap_total += 1
            continue
        subframe = ms % 8
        if duplex == "hd" and subframe not in (5, 6, 7):
            continue
        carry += rate * 1000.0 / 8.0 * 0.008 / ul_per_cycle  # bytes this UL subframe carries
        k = int(carry // opportunity_bytes)
        if k:
            carry -= k * opportunity_bytes
            times.extend([ms + 1] * k)
    if not times:
        raise ValueError("the trace carried nothing (duration too short?)")
    if times[-1] != n_ms:
        times.append(n_ms)  # close the loop period at the duration
    return GeneratedTrace("ltem", times, opportunity_bytes,
                          params={"seed": seed, "median_kbps": median_kbps, "min_kbps": min_kbps, "max_kbps": cap,
                                  "sigma_db": sigma_db, "coherence_s": coherence_s, "gaps_per_s": gaps_per_s,
                                  "gap_ms": list(gap_ms), "duplex": duplex, "duration_s": duration_s},
                          facts={"mean_scheduled_rate_kbps": rate_sum / n_ms, "gap_fraction": gap_total / n_ms})


# ------------------------------------------------------- IEEE 802.15.4 ---

SYMBOL_S = 16e-6  # 2.4 GHz O-QPSK: 62.5 ksymbol/s, 4 bits per symbol -> 250 kbit/s
BYTE_S = 2 * SYMBOL_S
PHY_HEADER_BYTES = 6  # preamble 4 + SFD 1 + PHR 1
UNIT_BACKOFF_S = 20 * SYMBOL_S
CCA_S = 8 * SYMBOL_S
TURNAROUND_S = 12 * SYMBOL_S
ACK_MPDU_BYTES = 5
LIFS_S, SIFS_S = 40 * SYMBOL_S, 12 * SYMBOL_S
MAX_PSDU = 127


def gen_ieee802154(duration_s: float = 30.0, seed: int = 0, payload_bytes: int = 116, mac_overhead_bytes: int = 11,
                   ack: bool = True, csma: bool = True, min_be: int = 3) -> GeneratedTrace:
    """One ``payload_bytes`` opportunity per frame cycle (MHR 9 + FCS 2 = 11 bytes of MAC overhead by default)."""
    mpdu = payload_bytes + mac_overhead_bytes
    if mpdu > MAX_PSDU:
        raise ValueError(f"payload {payload_bytes} + MAC overhead {mac_overhead_bytes} exceeds the 127-byte PSDU")
    rng = random.Random(seed)
    frame_s = (PHY_HEADER_BYTES + mpdu) * BYTE_S
    ifs = LIFS_S if mpdu > 18 else SIFS_S
    t = 0.0
    times: list[int] = []
    while True:
        if csma:
            t += rng.randrange(2 ** min_be) * UNIT_BACKOFF_S + CCA_S + TURNAROUND_S
        t += frame_s
        if t > duration_s and times:
            break
        times.append(max(1, round(t * 1000)))
        if ack:
            t += TURNAROUND_S + (PHY_HEADER_BYTES + ACK_MPDU_BYTES) * BYTE_S
        t += ifs if (ack or csma) else 0.0
    mean_cycle = frame_s + ((2 ** min_be - 1) / 2 * UNIT_BACKOFF_S + CCA_S + TURNAROUND_S if csma else 0) + \
        ((TURNAROUND_S + (PHY_HEADER_BYTES + ACK_MPDU_BYTES) * BYTE_S) if ack else 0) + (ifs if (ack or csma) else 0)
    return GeneratedTrace("ieee802154", times, payload_bytes,
                          params={"seed": seed, "payload_bytes": payload_bytes, "mac_overhead_bytes": mac_overhead_bytes,
                                  "ack": ack, "csma": csma, "min_be": min_be, "duration_s": duration_s},
                          facts={"phy_kbps": 250.0, "frame_airtime_ms": frame_s * 1000,
                                 "mean_cycle_ms": mean_cycle * 1000,
                                 "expected_goodput_kbps": payload_bytes * 8 / mean_cycle / 1000})


def opportunities_to_rates(times_ms: list[int], opportunity_bytes: int, step_ms: int = 100) -> tuple[list[float], list[float]]:
    """A CSV rate schedule (t_ms, kbps) with the same bytes per ``step_ms`` bin as the opportunities."""
    period = times_ms[-1]
    nbins = max(1, math.ceil(period / step_ms))
    counts = [0] * nbins
    for t in times_ms:
        counts[min(nbins - 1, t // step_ms)] += 1
    ts, rs = [], []
    for i, c in enumerate(counts):
        span = min(step_ms, period - i * step_ms)
        ts.append(float(i * step_ms))
        rs.append(c * opportunity_bytes * 8 / span if span > 0 else 0.0)
    return ts, rs
