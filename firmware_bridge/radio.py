"""Host-side drivers for nRF52840 radios attached over serial.

Why: the rest of hilbed wants "send this 802.15.4 frame, tell me if it was
ACKed and how long it took" and "what arrived, with which RSSI" -- not
Spinel transactions or byte streams.  Two firmwares are supported:

* ``SpinelRadio`` -- stock OpenThread RCP firmware.  Frames go out through
  ``PROP_VALUE_SET STREAM_RAW``; CSMA-CA and ACK handling run on the chip.
  Frame *retries* are driven from the host (the RCP is asked for 0 MAC
  retries and the host resends on NO_ACK) so hilbed can count every retry
  exactly and stop retrying at a deadline; the cost is one serial round trip
  per retry only.
* ``WuartRadio`` -- Nordic's Wireless UART example: a transparent byte pipe.
  There is nothing to configure and no per-frame feedback, so
  ``configure``/``energy_scan`` raise ``NotSupported`` and ``send_frame``
  simply writes bytes.

Ports are opened with ``serial.serial_for_url`` so a device path
(``/dev/serial/by-id/...``, an emulator pty), ``socket://host:port`` or
``rfc2217://host:port`` all work.  Bytes that do not decode (line noise,
boot banners, a host attached mid-frame) are counted in ``stats`` and
skipped; they never raise.
"""

from __future__ import annotations

import logging
import queue
import select
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, cast

import serial

from . import hdlc, phy, spinel

log = logging.getLogger(__name__)

DEFAULT_SPINEL_BAUD = 1_000_000
DEFAULT_WUART_BAUD = 230_400
SERIAL_POLL_S = 0.05
RX_QUEUE_LIMIT = 4096
NOTIFY_QUEUE_LIMIT = 256  # unsolicited status/scan reports kept; a babbling device cannot grow memory


class RadioError(Exception):
    """The radio or its serial link misbehaved."""


class NotSupported(RadioError):
    """The firmware has no way to do this (e.g. energy scan on Wireless UART)."""


class RadioTimeout(RadioError):
    """No reply from the firmware in time."""


class SpinelStatusError(RadioError):
    def __init__(self, status: int, what: str = "") -> None:
        super().__init__(f"{what}: RCP returned {spinel.status_name(status)} ({status})")
        self.status = status


class TxResult(str, Enum):
    OK = "ok"
    NO_ACK = "no_ack"
    CHANNEL_ACCESS_FAILURE = "channel_access_failure"
    DEADLINE = "deadline"  # not attempted / retries stopped because the deadline passed
    ERROR = "error"


@dataclass(frozen=True)
class RxFrame:
    """A frame (Spinel) or a chunk of bytes (wuart) received from the radio."""

    psdu: bytes  # for Spinel: full PSDU incl. 2-byte FCS; for wuart: raw UART bytes
    rssi: int | None = None
    noise_floor: int | None = None
    lqi: int | None = None
    channel: int | None = None
    timestamp_us: int | None = None  # radio clock
    t_monotonic: float = 0.0  # host clock when the serial frame was decoded
    t_wall: float = 0.0
    flags: int = 0
    error: int = 0

    @property
    def mac_frame(self) -> bytes:
        """MHR + payload (PSDU without the FCS)."""
        return self.psdu[:-phy.FCS_LEN] if len(self.psdu) >= phy.FCS_LEN else b""


@dataclass(frozen=True)
class TxStatus:
    result: TxResult
    attempts: int = 0
    retries: int = 0
    cca_failures: int = 0
    elapsed_s: float = 0.0
    t_done_monotonic: float = 0.0
    t_done_wall: float = 0.0
    status_code: int | None = None  # last Spinel status
    ack: RxFrame | None = None

    @property
    def ok(self) -> bool:
        return self.result is TxResult.OK


@dataclass
class RadioStats:
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0  # radio frames (or wuart byte chunks) delivered to the host
    frames_out: int = 0  # radio frames acknowledged / written
    serial_frames_in: int = 0  # Spinel frames decoded
    serial_frames_out: int = 0
    bad_frames: int = 0  # HDLC frames with bad FCS/too short/overrun, undecodable Spinel
    garbage_bytes: int = 0
    tx_attempts: int = 0
    tx_ok: int = 0
    tx_no_ack: int = 0
    tx_cca_failures: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0  # host receive queue overflow
    extra: dict[str, int] = field(default_factory=dict)


def _open_serial(port: str, baudrate: int, rtscts: bool) -> serial.Serial:
    ser = cast(serial.Serial, serial.serial_for_url(port, baudrate=baudrate, rtscts=rtscts, timeout=SERIAL_POLL_S))
    try:
        ser.reset_input_buffer()
    except (serial.SerialException, OSError, NotImplementedError):
        pass
    return ser


class SpinelRadio:
    """OpenThread RCP over HDLC-Lite/Spinel."""

    protocol = "spinel"

    def __init__(self, port: str | None = None, *, baudrate: int = DEFAULT_SPINEL_BAUD, rtscts: bool = False,
                 timeout: float = 2.0, reset: bool = True, host_retries: bool = True,
                 serial_instance: serial.Serial | None = None) -> None:
        if serial_instance is None and port is None:
            raise ValueError("need a port or a serial instance")
        self.port = port or getattr(serial_instance, "port", "?")
        self.timeout = timeout
        self.host_retries = host_retries
        self._ser = serial_instance or _open_serial(port, baudrate, rtscts)  # type: ignore[arg-type]
        self._decoder = hdlc.HdlcDecoder()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._responses: dict[int, tuple[spinel.SpinelFrame, float, float]] = {}
        # unsolicited (prop, status) of LAST_STATUS; only the newest are kept
        self._notifications: deque[tuple[int, int]] = deque(maxlen=NOTIFY_QUEUE_LIMIT)
        self._scan_events: queue.Queue[tuple[int, list[Any]]] = queue.Queue(maxsize=NOTIFY_QUEUE_LIMIT)
        self._rx: queue.Queue[RxFrame] = queue.Queue(maxsize=RX_QUEUE_LIMIT)
        self._tid = 0
        self._tid_lock = threading.Lock()
        self._tx_lock = threading.Lock()
        self._closed = False
        self._reader_error: BaseException | None = None
        self._bad_spinel = 0
        self.stats = RadioStats()
        self.channel = 11
        self.pan_id = 0xFFFF
        self.short_addr = 0xFFFE
        self.ext_addr: bytes | None = None
        self.tx_power_dbm: int | None = None
        self._seq = 0
        self._pump_lock = threading.Lock()
        self._waiters = 0
        try:
            self._fd: int | None = self._ser.fileno()
        except (AttributeError, OSError, ValueError, NotImplementedError, serial.SerialException):
            self._fd = None  # e.g. socket:// or rfc2217:// ports: reader thread only
        self._reader = threading.Thread(target=self._read_loop, name=f"spinel-reader:{self.port}", daemon=True)
        self._reader.start()
        if reset:
            try:
                self.reset()
            except BaseException:
                self.close()
                raise

    # --- plumbing -----------------------------------------------------------------
    def _read_loop(self) -> None:
        while not self._closed:
            try:
                if self._fd is not None:
                    with self._cond:
                        # A thread waiting for a reply reads the port itself (see _pump).
                        while self._waiters and not self._closed:
                            self._cond.wait(0.5)
                    self._pump(SERIAL_POLL_S, background=True)
                else:
                    waiting = self._ser.in_waiting
                    data = self._ser.read(waiting if waiting > 0 else 1)
                    if data:
                        with self._pump_lock:
                            self._ingest(data)
            except (serial.SerialException, OSError, TypeError, AttributeError, ValueError) as exc:
                if not self._closed:
                    self._reader_error = exc
                    log.error("%s: serial read failed: %s", self.port, exc)
                with self._cond:
                    self._cond.notify_all()
                return

    def _pump(self, timeout: float, background: bool = False) -> None:
        """Wait up to ``timeout`` for input, then read and dispatch what is there.

        While a thread waits for a reply it reads the port itself, so the
        reply is decoded in the waiting thread -- no hand-off between threads
        on the latency-critical transmit path.  The background reader backs
        off while someone waits; the lock keeps the byte order intact for
        the stateful decoder.
        """
        assert self._fd is not None
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return
        if background and self._waiters:
            return
        with self._pump_lock:
            waiting = self._ser.in_waiting
            if waiting <= 0:
                return
            self._ingest(self._ser.read(waiting))

    def ingest(self, data: bytes) -> None:
        """Decode ``data`` as if it had been read from the port (replaying captures, fuzzing)."""
        with self._pump_lock:
            self._ingest(data)

    def _ingest(self, data: bytes) -> None:
        t_mono, t_wall = time.monotonic(), time.time()
        self.stats.bytes_in += len(data)
        for payload in self._decoder.feed(data):
            try:
                self._dispatch(payload, t_mono, t_wall)
            except Exception:  # a decoding bug must not end the reader thread: count it, keep reading
                self._bad_spinel += 1
                self.stats.extra["dispatch_errors"] = self.stats.extra.get("dispatch_errors", 0) + 1
                log.exception("%s: cannot handle Spinel frame %s", self.port, payload.hex())
        d = self._decoder
        self.stats.bad_frames = d.bad_frames + self._bad_spinel
        self.stats.garbage_bytes = d.garbage_bytes

    def _dispatch(self, payload: bytes, t_mono: float, t_wall: float) -> None:
        try:
            frame = spinel.SpinelFrame.decode(payload)
        except spinel.SpinelError as exc:
            self._bad_spinel += 1
            log.debug("%s: undecodable Spinel frame %s: %s", self.port, payload.hex(), exc)
            return
        self.stats.serial_frames_in += 1
        if frame.tid:
            with self._cond:
                self._responses[frame.tid] = (frame, t_mono, t_wall)
                self._cond.notify_all()
            return
        if frame.command not in (spinel.CMD_PROP_VALUE_IS, spinel.CMD_PROP_VALUE_INSERTED):
            return
        try:
            prop, value = frame.prop()
            if prop == spinel.PROP_STREAM_RAW:
                info, _ = spinel.unpack_raw_frame(value)
                rx = RxFrame(info.psdu, info.rssi, info.noise_floor, info.lqi, info.channel, info.timestamp_us,
                             t_mono, t_wall, info.flags, info.error)
                try:
                    self._rx.put_nowait(rx)
                    self.stats.frames_in += 1
                except queue.Full:
                    self.stats.rx_dropped += 1
            elif prop in (spinel.PROP_MAC_ENERGY_SCAN_RESULT, spinel.PROP_MAC_SCAN_STATE):
                fmt = spinel.PROP_FORMATS[prop]
                try:
                    self._scan_events.put_nowait((prop, spinel.unpack(fmt, value)))
                except queue.Full:  # nobody is scanning: unsolicited scan reports
                    self.stats.extra["scan_events_dropped"] = self.stats.extra.get("scan_events_dropped", 0) + 1
            elif prop == spinel.PROP_LAST_STATUS:
                (status,) = spinel.unpack("i", value, partial=True) or [spinel.STATUS_FAILURE]
                with self._cond:
                    self._notifications.append((prop, status))
                    self._cond.notify_all()
            else:
                log.debug("%s: unsolicited %s", self.port, frame.describe())
        except spinel.SpinelError as exc:
            self._bad_spinel += 1
            log.debug("%s: bad value in %s: %s", self.port, frame.describe(), exc)

    def _write(self, spinel_frame: bytes) -> None:
        data = hdlc.encode(spinel_frame)
        with self._write_lock:
            try:
                self._ser.write(data)
            except (serial.SerialException, OSError) as exc:
                raise RadioError(f"{self.port}: serial write failed: {exc}") from exc
        self.stats.bytes_out += len(data)
        self.stats.serial_frames_out += 1

    def _next_tid(self) -> int:
        with self._tid_lock:
            self._tid = self._tid % 15 + 1
            return self._tid

    def _transact(self, build: Any, timeout: float | None = None) -> tuple[spinel.SpinelFrame, float, float]:
        """Send ``build(tid)`` and wait for the frame with the same TID."""
        tid = self._next_tid()
        with self._cond:
            self._responses.pop(tid, None)
            self._waiters += 1
        try:
            self._write(build(tid))
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            while True:
                with self._cond:
                    if tid in self._responses:
                        return self._responses.pop(tid)
                    if self._reader_error is not None:
                        raise RadioError(f"{self.port}: reader stopped: {self._reader_error}")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise RadioTimeout(f"{self.port}: no reply for TID {tid}")
                    if self._fd is None:
                        self._cond.wait(remaining)
                        continue
                try:
                    # Short slices: another waiter may have consumed our reply.
                    self._pump(min(remaining, 0.01))
                except (serial.SerialException, OSError, TypeError, ValueError) as exc:
                    raise RadioError(f"{self.port}: serial read failed: {exc}") from exc
        finally:
            with self._cond:
                self._waiters -= 1
                self._cond.notify_all()

    # --- Spinel property access -------------------------------------------------------
    def get_prop(self, prop: int, fmt: str | None = None) -> list[Any]:
        frame, _, _ = self._transact(lambda tid: spinel.cmd_prop_get(prop, tid))
        return self._prop_reply(frame, prop, fmt, "get " + spinel.PROP_NAMES.get(prop, hex(prop)))

    def set_prop(self, prop: int, fmt: str, *values: Any) -> list[Any]:
        value = spinel.pack(fmt, *values)
        frame, _, _ = self._transact(lambda tid: spinel.cmd_prop_set(prop, value, tid))
        return self._prop_reply(frame, prop, fmt, "set " + spinel.PROP_NAMES.get(prop, hex(prop)))

    @staticmethod
    def _prop_reply(frame: spinel.SpinelFrame, prop: int, fmt: str | None, what: str) -> list[Any]:
        if frame.command != spinel.CMD_PROP_VALUE_IS:
            raise RadioError(f"{what}: unexpected reply {frame.describe()}")
        got, value = frame.prop()
        if got == spinel.PROP_LAST_STATUS and prop != spinel.PROP_LAST_STATUS:
            (status,) = spinel.unpack("i", value)
            raise SpinelStatusError(status, what)
        if got != prop:
            raise RadioError(f"{what}: reply is for property {got}")
        return spinel.unpack(fmt or spinel.PROP_FORMATS.get(prop, "D"), value)

    def reset(self, timeout: float | None = None) -> int:
        """Software reset; returns the reset status the RCP reports (e.g. 112 RESET_POWER_ON)."""
        with self._cond:
            self._notifications.clear()
        self._write(spinel.cmd_reset(0))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                for _, status in self._notifications:
                    if spinel.STATUS_RESET_BEGIN <= status < spinel.STATUS_RESET_END:
                        self._notifications.clear()
                        return status
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RadioTimeout(f"{self.port}: no reset notification")
                self._cond.wait(remaining)

    def protocol_version(self) -> tuple[int, int]:
        major, minor = self.get_prop(spinel.PROP_PROTOCOL_VERSION)
        return major, minor

    def ncp_version(self) -> str:
        return self.get_prop(spinel.PROP_NCP_VERSION)[0]

    def caps(self) -> list[int]:
        return self.get_prop(spinel.PROP_CAPS)[0]

    def rssi(self) -> int:
        return self.get_prop(spinel.PROP_PHY_RSSI)[0]

    # --- radio API ----------------------------------------------------------------
    def configure(self, channel: int | None = None, tx_power_dbm: int | None = None, pan_id: int | None = None,
                  short_addr: int | None = None, ext_addr: bytes | int | None = None, *,
                  promiscuous: bool | None = None) -> None:
        """Enable the radio in raw-stream mode and apply the given settings."""
        p = spinel
        if channel is not None:
            if not 11 <= channel <= 26:
                raise ValueError(f"channel {channel} outside 11..26")
            self.set_prop(p.PROP_PHY_CHAN, "C", channel)
            self.channel = channel
        if tx_power_dbm is not None:
            self.tx_power_dbm = self.set_prop(p.PROP_PHY_TX_POWER, "c", tx_power_dbm)[0]
        if pan_id is not None:
            self.set_prop(p.PROP_MAC_15_4_PANID, "S", pan_id)
            self.pan_id = pan_id
        if short_addr is not None:
            self.set_prop(p.PROP_MAC_15_4_SADDR, "S", short_addr)
            self.short_addr = short_addr
        if ext_addr is not None:
            raw = ext_addr.to_bytes(8, "big") if isinstance(ext_addr, int) else bytes(ext_addr)
            self.set_prop(p.PROP_MAC_15_4_LADDR, "E", raw)
            self.ext_addr = raw
        if promiscuous is not None:
            self.set_prop(p.PROP_MAC_PROMISCUOUS_MODE, "C", 2 if promiscuous else 0)
        self.set_prop(p.PROP_PHY_ENABLED, "b", True)
        self.set_prop(p.PROP_MAC_RAW_STREAM_ENABLED, "b", True)

    def next_seq(self) -> int:
        """Next MAC data sequence number (DSN) for frames built by the caller."""
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def send_frame(self, psdu: bytes, *, csma: bool = True, max_retries: int = phy.MAC_MAX_FRAME_RETRIES,
                   max_csma_backoffs: int = phy.MAC_MAX_CSMA_BACKOFFS, channel: int | None = None,
                   deadline: float | None = None, timeout: float | None = None) -> TxStatus:
        """Transmit one PSDU (incl. 2 FCS bytes, which the radio fills in) and wait for the outcome.

        Retries (up to ``max_retries``) happen on NO_ACK only, never after
        ``deadline`` (a ``time.monotonic()`` value).  A channel access failure
        ends the transaction, as in the 802.15.4 MAC.
        """
        if not 5 <= len(psdu) <= phy.MAX_PSDU:
            raise ValueError(f"PSDU length {len(psdu)} outside 5..{phy.MAX_PSDU}")
        ch = self.channel if channel is None else channel
        rcp_retries = 0 if self.host_retries else max_retries
        t0 = time.monotonic()
        attempts = cca = 0
        status_code: int | None = None
        ack: RxFrame | None = None
        result = TxResult.ERROR
        with self._tx_lock:
            while True:
                if deadline is not None and time.monotonic() >= deadline:
                    result = TxResult.DEADLINE
                    break
                attempts += 1
                self.stats.tx_attempts += 1
                value = spinel.stream_raw_tx_value(psdu, ch, max_csma_backoffs=max_csma_backoffs,
                                                   max_frame_retries=rcp_retries, csma_ca=csma)
                frame, t_mono, t_wall = self._transact(
                    lambda tid, v=value: spinel.cmd_prop_set(spinel.PROP_STREAM_RAW, v, tid), timeout)
                status_code, ack = self._parse_tx_done(frame, t_mono, t_wall)
                if status_code == spinel.STATUS_OK:
                    result = TxResult.OK
                    self.stats.tx_ok += 1
                    self.stats.frames_out += 1
                    break
                if status_code == spinel.STATUS_NO_ACK:
                    self.stats.tx_no_ack += 1
                    if self.host_retries and attempts <= max_retries:
                        continue
                    result = TxResult.NO_ACK
                    break
                if status_code == spinel.STATUS_CCA_FAILURE:
                    cca += 1
                    self.stats.tx_cca_failures += 1
                    result = TxResult.CHANNEL_ACCESS_FAILURE
                    break
                self.stats.tx_errors += 1
                result = TxResult.ERROR
                break
        t1, w1 = time.monotonic(), time.time()
        return TxStatus(result, attempts, max(0, attempts - 1), cca, t1 - t0, t1, w1, status_code, ack)

    def _parse_tx_done(self, frame: spinel.SpinelFrame, t_mono: float, t_wall: float) -> tuple[int, RxFrame | None]:
        if frame.command != spinel.CMD_PROP_VALUE_IS:
            raise RadioError(f"{self.port}: unexpected transmit reply {frame.describe()}")
        prop, value = frame.prop()
        if prop != spinel.PROP_LAST_STATUS:
            raise RadioError(f"{self.port}: transmit answered with property {prop}")
        fields = spinel.unpack(spinel.TX_DONE_FORMAT, value, partial=True)
        status = fields[0]
        ack = None
        if status == spinel.STATUS_OK and len(value) > 3:
            try:
                info, _ = spinel.unpack_raw_frame(value[3:])
                if info.psdu:
                    ack = RxFrame(info.psdu, info.rssi, info.noise_floor, info.lqi, info.channel,
                                  info.timestamp_us, t_mono, t_wall, info.flags, info.error)
            except spinel.SpinelError:
                pass
        return status, ack

    def recv_frame(self, timeout: float | None = None) -> RxFrame | None:
        try:
            return self._rx.get(timeout=timeout) if timeout != 0 else self._rx.get_nowait()
        except queue.Empty:
            return None

    def energy_scan(self, channels: Iterable[int], duration_ms: int = 100) -> dict[int, int]:
        """Energy-detect scan; returns {channel: max RSSI in dBm} measured over ``duration_ms`` each."""
        results: dict[int, int] = {}
        for ch in channels:
            while True:
                try:
                    self._scan_events.get_nowait()
                except queue.Empty:
                    break
            self.set_prop(spinel.PROP_MAC_SCAN_MASK, "A(C)", [ch])
            self.set_prop(spinel.PROP_MAC_SCAN_PERIOD, "S", duration_ms)
            self.set_prop(spinel.PROP_MAC_SCAN_STATE, "C", spinel.SCAN_STATE_ENERGY)
            deadline = time.monotonic() + duration_ms / 1000.0 + self.timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RadioTimeout(f"{self.port}: no energy scan result for channel {ch}")
                try:
                    prop, vals = self._scan_events.get(timeout=remaining)
                except queue.Empty:
                    continue
                if prop == spinel.PROP_MAC_ENERGY_SCAN_RESULT and vals[0] == ch:
                    results[ch] = vals[1]
                elif prop == spinel.PROP_MAC_SCAN_STATE and vals[0] == spinel.SCAN_STATE_IDLE and ch in results:
                    break
        return results

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.join(timeout=1.0)
        try:
            self._ser.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self) -> SpinelRadio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WuartRadio:
    """Nordic Wireless UART 15.4 example: a paced, flow-controlled byte pipe."""

    protocol = "wuart"

    def __init__(self, port: str | None = None, *, baudrate: int = DEFAULT_WUART_BAUD, rtscts: bool = True,
                 pace: bool = True, serial_instance: serial.Serial | None = None) -> None:
        if serial_instance is None and port is None:
            raise ValueError("need a port or a serial instance")
        self.port = port or getattr(serial_instance, "port", "?")
        self.baudrate = baudrate
        self.pace = pace
        self._ser = serial_instance or _open_serial(port, baudrate, rtscts)  # type: ignore[arg-type]
        self._byte_time = 10.0 / baudrate
        self._line_free = 0.0
        self._write_lock = threading.Lock()
        self._closed = False
        self.stats = RadioStats()

    def write(self, data: bytes, *, deadline: float | None = None) -> int:
        """Write ``data``, paced at the UART rate; returns bytes written before ``deadline``.

        With RTS/CTS the firmware stops the host when its buffer is full, so a
        write can block; ``deadline`` bounds that wait.
        """
        written = 0
        piece_len = 64
        with self._write_lock:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return 0
                self._ser.write_timeout = remaining
            try:
                for i in range(0, len(data), piece_len):
                    piece = data[i:i + piece_len]
                    now = time.monotonic()
                    if self.pace:
                        ahead = self._line_free - now - len(piece) * self._byte_time
                        if ahead > 0:
                            time.sleep(ahead)
                            now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        break
                    try:
                        n = self._ser.write(piece) or 0
                    except serial.SerialTimeoutException:
                        break
                    except (serial.SerialException, OSError) as exc:
                        raise RadioError(f"{self.port}: serial write failed: {exc}") from exc
                    written += n
                    self._line_free = max(now, self._line_free) + n * self._byte_time
                    if n < len(piece):
                        break
            finally:
                if deadline is not None:
                    self._ser.write_timeout = None
        self.stats.bytes_out += written
        return written

    def drain_time(self) -> float:
        """Monotonic time at which the paced UART line finishes sending what was written."""
        return self._line_free

    def read(self, timeout: float | None = None, max_bytes: int = 65536) -> bytes:
        """Return the bytes available now, waiting up to ``timeout`` for the first one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            try:
                waiting = self._ser.in_waiting
                data = self._ser.read(min(max_bytes, waiting) if waiting > 0 else 1)
                if data and self._ser.in_waiting:
                    data += self._ser.read(min(max_bytes - len(data), self._ser.in_waiting))
            except (serial.SerialException, OSError, TypeError) as exc:
                raise RadioError(f"{self.port}: serial read failed: {exc}") from exc
            if data:
                self.stats.bytes_in += len(data)
                return data
            if deadline is not None and time.monotonic() >= deadline:
                return b""
        return b""

    def send_frame(self, psdu: bytes, *, deadline: float | None = None, **_ignored: Any) -> TxStatus:
        t0 = time.monotonic()
        n = self.write(psdu, deadline=deadline)
        t1, w1 = time.monotonic(), time.time()
        ok = n == len(psdu)
        if ok:
            self.stats.frames_out += 1
        return TxStatus(TxResult.OK if ok else TxResult.DEADLINE, 1, 0, 0, t1 - t0, t1, w1)

    def recv_frame(self, timeout: float | None = None) -> RxFrame | None:
        data = self.read(timeout)
        if not data:
            return None
        self.stats.frames_in += 1
        return RxFrame(data, t_monotonic=time.monotonic(), t_wall=time.time())

    def configure(self, *args: Any, **kwargs: Any) -> None:
        raise NotSupported("the Wireless UART example firmware has fixed channel/addresses (compile time)")

    def energy_scan(self, channels: Iterable[int], duration_ms: int = 100) -> dict[int, int]:
        raise NotSupported("the Wireless UART example firmware has no energy-scan command")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._ser.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self) -> WuartRadio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Radio = SpinelRadio | WuartRadio


def open_radio(protocol: Literal["spinel", "wuart"], port: str, *, baud: int | None = None,
               rtscts: bool | None = None, **kwargs: Any) -> Radio:
    """Open a radio: ``protocol`` is "spinel" (OpenThread RCP) or "wuart" (Nordic Wireless UART).

    Defaults: Spinel 1 000 000 baud without flow control (USB CDC ignores the
    rate anyway), wuart 230 400 baud with RTS/CTS.
    """
    if protocol == "spinel":
        return SpinelRadio(port, baudrate=baud or DEFAULT_SPINEL_BAUD, rtscts=bool(rtscts), **kwargs)
    if protocol == "wuart":
        return WuartRadio(port, baudrate=baud or DEFAULT_WUART_BAUD, rtscts=True if rtscts is None else rtscts,
                          **kwargs)
    raise ValueError(f"unknown radio protocol {protocol!r}")
