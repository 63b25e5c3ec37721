"""IEEE 802.15.4 (2.4 GHz O-QPSK, 250 kbit/s) timing math and minimal MAC framing.

Why this module exists: the emulator, the message transport and the goodput
benchmark must all agree on *one* set of PHY/MAC constants, otherwise the
"analytic maximum" the benchmark compares against and the timing the emulator
produces drift apart.  Everything here is derived from the 802.15.4-2006 PHY
and MAC constants:

* one symbol is 16 us, one octet is two symbols -> 32 us per byte;
* the synchronisation header (4-byte preamble + 1-byte SFD) plus the 1-byte
  PHR (frame length) add 6 bytes of air time to every PSDU;
* unslotted CSMA-CA: aUnitBackoffPeriod = 20 symbols = 320 us,
  macMinBE = 3, macMaxBE = 5, macMaxCSMABackoffs = 4, CCA lasts 8 symbols
  (128 us), RX<->TX turnaround (aTurnaroundTime) is 12 symbols = 192 us;
* an immediate ACK is a 5-byte PSDU (11 bytes on air) sent aTurnaroundTime
  after the data frame; the sender waits macAckWaitDuration = 54 symbols;
* after a frame longer than aMaxSIFSFrameSize (18 bytes) the next frame may
  start only after LIFS = 40 symbols (640 us), otherwise SIFS = 12 symbols.

The PSDU limit is aMaxPHYPacketSize = 127 bytes *including* the 2-byte FCS.
Following OpenThread's ``otRadioFrame`` convention, a "psdu" in this package
always includes the two FCS bytes (the radio computes/overwrites them).

The MAC helpers only cover what hilbed needs: data frames with 16-bit short
addresses, optional PAN ID compression, and immediate ACK frames.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass

# --- PHY constants (2.4 GHz O-QPSK) -------------------------------------------------
SYMBOL_US = 16
BYTE_US = 32  # 2 symbols per octet at 62.5 ksymbol/s -> 250 kbit/s
PHY_OVERHEAD_BYTES = 6  # 4 preamble + 1 SFD + 1 PHR (length)
MAX_PSDU = 127  # aMaxPHYPacketSize, includes FCS
FCS_LEN = 2
CCA_US = 8 * SYMBOL_US  # 128 us
TURNAROUND_US = 12 * SYMBOL_US  # aTurnaroundTime, 192 us

# --- MAC constants ------------------------------------------------------------------
UNIT_BACKOFF_US = 20 * SYMBOL_US  # aUnitBackoffPeriod, 320 us
MAC_MIN_BE = 3
MAC_MAX_BE = 5
MAC_MAX_CSMA_BACKOFFS = 4
MAC_MAX_FRAME_RETRIES = 3
ACK_PSDU_LEN = 5  # frame control (2) + seq (1) + FCS (2)
ACK_AIR_BYTES = PHY_OVERHEAD_BYTES + ACK_PSDU_LEN  # 11
ACK_WAIT_US = 54 * SYMBOL_US  # macAckWaitDuration, 864 us
MAX_SIFS_FRAME_SIZE = 18  # aMaxSIFSFrameSize
SIFS_US = 12 * SYMBOL_US  # 192 us
LIFS_US = 40 * SYMBOL_US  # 640 us
BROADCAST_ADDR = 0xFFFF
BROADCAST_PAN = 0xFFFF

# Frame types (frame control bits 0-2)
FRAME_TYPE_BEACON = 0
FRAME_TYPE_DATA = 1
FRAME_TYPE_ACK = 2
FRAME_TYPE_COMMAND = 3

# Addressing modes (frame control bits 10-11 / 14-15)
ADDR_MODE_NONE = 0
ADDR_MODE_SHORT = 2
ADDR_MODE_EXT = 3

#: MAC header length of a data frame with PAN ID compression and short addresses:
#: frame control (2) + sequence number (1) + dst PAN (2) + dst short (2) + src short (2).
SHORT_DATA_HEADER_LEN = 9
#: Largest MAC payload in such a frame: 127 - 9 - 2 = 116 bytes.
MAX_SHORT_DATA_PAYLOAD = MAX_PSDU - SHORT_DATA_HEADER_LEN - FCS_LEN


def airtime_us(psdu_len: int) -> int:
    """Air time of one PPDU carrying a PSDU of ``psdu_len`` bytes (incl. FCS)."""
    if not 0 <= psdu_len <= MAX_PSDU:
        raise ValueError(f"PSDU length {psdu_len} outside 0..{MAX_PSDU}")
    return (PHY_OVERHEAD_BYTES + psdu_len) * BYTE_US


def ack_airtime_us() -> int:
    """Air time of an immediate ACK (11 bytes incl. PHY header) = 352 us."""
    return ACK_AIR_BYTES * BYTE_US


def ifs_us(psdu_len: int) -> int:
    """Inter-frame spacing required after a frame of ``psdu_len`` bytes."""
    return LIFS_US if psdu_len > MAX_SIFS_FRAME_SIZE else SIFS_US


def mean_initial_backoff_us(min_be: int = MAC_MIN_BE) -> float:
    """Mean of the first random backoff: uniform over 0..2^BE-1 unit periods."""
    return (2**min_be - 1) / 2.0 * UNIT_BACKOFF_US


def frame_exchange_time_us(psdu_len: int = MAX_PSDU, *, ack: bool = True, ifs: bool = True,
                           csma: bool = True) -> float:
    """Mean time for one successful, uncontended frame exchange.

    = mean initial backoff + CCA + turnaround + PPDU air time
      [+ turnaround + ACK air time] [+ IFS]

    For a 127-byte PSDU with ACK and LIFS: 1120 + 128 + 192 + 4256 + 192 + 352 + 640
    = 6880 us.
    """
    t = 0.0
    if csma:
        t += mean_initial_backoff_us() + CCA_US
    t += TURNAROUND_US + airtime_us(psdu_len)
    if ack:
        t += TURNAROUND_US + ack_airtime_us()
    if ifs:
        t += ifs_us(psdu_len)
    return t


def analytic_goodput_kbps(payload_bytes: int, psdu_len: int = MAX_PSDU, *, ack: bool = True,
                          ifs: bool = True) -> float:
    """Upper bound on payload throughput (kbit/s) for back-to-back frames.

    ``payload_bytes`` application bytes ride in every ``psdu_len``-byte PSDU.
    116 payload bytes in a 127-byte PSDU with ACK and LIFS -> ~134.9 kbit/s.
    """
    return payload_bytes * 8 / frame_exchange_time_us(psdu_len, ack=ack, ifs=ifs) * 1000.0


# --- 802.15.4 FCS (ITU-T CRC-16, reflected poly 0x8408, init 0, no final XOR) --------

_REFLECT8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def fcs16(data: bytes) -> int:
    """802.15.4 FCS over the MHR+payload (CRC-16/KERMIT; check("123456789") = 0x2189).

    Computed as the bit-reflection of CRC-CCITT over bit-reflected bytes so the
    per-byte work happens in C (``binascii.crc_hqx``).
    """
    crc = binascii.crc_hqx(bytes(data).translate(_REFLECT8), 0)
    return (_REFLECT8[crc & 0xFF] << 8) | _REFLECT8[crc >> 8]


def append_fcs(mpdu_without_fcs: bytes) -> bytes:
    """Return the PSDU: MHR+payload followed by the little-endian FCS."""
    return bytes(mpdu_without_fcs) + struct.pack("<H", fcs16(mpdu_without_fcs))


def with_valid_fcs(psdu: bytes) -> bytes:
    """Overwrite the last two bytes of ``psdu`` with the correct FCS (what a radio does)."""
    if len(psdu) < FCS_LEN:
        raise ValueError("PSDU shorter than its FCS")
    return append_fcs(psdu[:-FCS_LEN])


def fcs_ok(psdu: bytes) -> bool:
    return len(psdu) >= FCS_LEN and struct.unpack_from("<H", psdu, len(psdu) - 2)[0] == fcs16(psdu[:-2])


# --- MAC header -----------------------------------------------------------------------

@dataclass(frozen=True)
class MacHeader:
    frame_type: int
    security: bool
    frame_pending: bool
    ack_request: bool
    pan_id_compression: bool
    frame_version: int
    seq: int
    dst_pan: int | None
    dst_addr: int | bytes | None  # int for short, 8 bytes (over-the-air order) for extended
    src_pan: int | None
    src_addr: int | bytes | None
    length: int  # MHR length in bytes

    def is_broadcast(self) -> bool:
        return self.dst_addr == BROADCAST_ADDR


class MacParseError(ValueError):
    """The bytes are not a well-formed 802.15.4 MAC frame."""


def frame_control(frame_type: int, *, ack_request: bool, pan_id_compression: bool,
                  dst_mode: int, src_mode: int, frame_version: int = 0,
                  frame_pending: bool = False) -> int:
    return (frame_type & 0x7) | (frame_pending << 4) | (ack_request << 5) | (pan_id_compression << 6) \
        | ((dst_mode & 3) << 10) | ((frame_version & 3) << 12) | ((src_mode & 3) << 14)


def build_data_frame(seq: int, pan_id: int, dst: int, src: int, payload: bytes, *,
                     ack_request: bool | None = None) -> bytes:
    """Data frame with PAN ID compression and 16-bit addresses; returns the PSDU incl. FCS.

    ACK is requested for unicast destinations unless ``ack_request`` says otherwise.
    """
    if ack_request is None:
        ack_request = dst != BROADCAST_ADDR
    fc = frame_control(FRAME_TYPE_DATA, ack_request=ack_request, pan_id_compression=True,
                       dst_mode=ADDR_MODE_SHORT, src_mode=ADDR_MODE_SHORT)
    mhr = struct.pack("<HBHHH", fc, seq & 0xFF, pan_id & 0xFFFF, dst & 0xFFFF, src & 0xFFFF)
    if len(mhr) + len(payload) + FCS_LEN > MAX_PSDU:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a {MAX_PSDU}-byte PSDU")
    return append_fcs(mhr + bytes(payload))


def build_ack(seq: int, frame_pending: bool = False) -> bytes:
    fc = frame_control(FRAME_TYPE_ACK, ack_request=False, pan_id_compression=False,
                       dst_mode=ADDR_MODE_NONE, src_mode=ADDR_MODE_NONE, frame_pending=frame_pending)
    return append_fcs(struct.pack("<HB", fc, seq & 0xFF))


def parse_mac_header(psdu: bytes) -> MacHeader:
    """Parse the MHR of ``psdu`` (which includes the FCS).  Raises MacParseError."""
    if len(psdu) < 3 + FCS_LEN:
        raise MacParseError("frame too short")
    fc, seq = struct.unpack_from("<HB", psdu, 0)
    frame_type = fc & 0x7
    security = bool(fc & (1 << 3))
    pending = bool(fc & (1 << 4))
    ack_req = bool(fc & (1 << 5))
    compress = bool(fc & (1 << 6))
    dst_mode = (fc >> 10) & 3
    version = (fc >> 12) & 3
    src_mode = (fc >> 14) & 3
    if dst_mode == 1 or src_mode == 1:
        raise MacParseError("reserved addressing mode")
    pos = 3
    end = len(psdu) - FCS_LEN

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > end:
            raise MacParseError("MHR runs past the end of the frame")
        chunk = psdu[pos:pos + n]
        pos += n
        return chunk

    dst_pan = dst_addr = src_pan = src_addr = None
    if dst_mode:
        dst_pan = struct.unpack("<H", take(2))[0]
        dst_addr = struct.unpack("<H", take(2))[0] if dst_mode == ADDR_MODE_SHORT else bytes(take(8))
    if src_mode:
        if compress and dst_mode:
            src_pan = dst_pan
        else:
            src_pan = struct.unpack("<H", take(2))[0]
        src_addr = struct.unpack("<H", take(2))[0] if src_mode == ADDR_MODE_SHORT else bytes(take(8))
    return MacHeader(frame_type, security, pending, ack_req, compress, version, seq,
                     dst_pan, dst_addr, src_pan, src_addr, pos)


def mac_payload(psdu: bytes, header: MacHeader | None = None) -> bytes:
    header = header or parse_mac_header(psdu)
    return bytes(psdu[header.length:len(psdu) - FCS_LEN])
