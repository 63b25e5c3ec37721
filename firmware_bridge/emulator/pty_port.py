"""Device side of an emulated serial port: a pseudo-terminal paced at a baud rate.

Why: hilbed talks to real radios through pyserial.  Giving it a pty means
the exact same code path (open by path, termios, read/write with timeouts)
is exercised against the emulator.  A pty itself is infinitely fast, so the
baud rate is modelled here: every byte costs 10 bit times (8N1) in each
direction, bytes from the host reach the firmware model at line rate, and
bytes to the host are released when the line would have finished sending
them.

Flow control: the firmware model calls ``pause_reading()`` when its buffer is
full -- the pty then fills and the host's ``write`` blocks, which is how
RTS/CTS back-pressure looks from the host side.
"""

from __future__ import annotations

import errno
import logging
import os
import tty
from collections import deque
from collections.abc import Callable

from .loop import EventLoop

log = logging.getLogger(__name__)

BITS_PER_BYTE = 10  # start + 8 data + stop
SLICE_S = 0.001  # granularity at which incoming bytes are handed to the firmware
MAX_OUT_BUFFER = 4 * 1024 * 1024


class PtyPort:
    def __init__(self, loop: EventLoop, baud: int, on_bytes: Callable[[bytes, float], None],
                 name: str = "pty") -> None:
        if baud <= 0:
            raise ValueError("baud must be positive")
        self.loop = loop
        self.baud = baud
        self.name = name
        self.on_bytes = on_bytes
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.byte_time = BITS_PER_BYTE / baud
        self._slice = max(1, int(SLICE_S / self.byte_time))
        self._rx_line_free = 0.0  # model time the host->device line becomes idle
        self._tx_line_free = 0.0  # model time the device->host line becomes idle
        self._in_flight_in = 0  # bytes read from the pty but not yet delivered
        self._out = bytearray()
        self._writing = False
        self._paused = False
        self._closed = False
        self.bytes_from_host = 0
        self.bytes_to_host = 0
        self.dropped_to_host = 0
        loop.add_reader(self.master, self._readable)

    # --- host -> device ---------------------------------------------------------
    def pause_reading(self) -> None:
        if not self._paused and not self._closed:
            self._paused = True
            self.loop.remove_reader(self.master)

    def resume_reading(self) -> None:
        if self._paused and not self._closed:
            self._paused = False
            self.loop.add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # no slave open; cannot happen while we hold one
                return
            raise
        if not data:
            return
        now = self.loop.time()
        self.bytes_from_host += len(data)
        t = max(now, self._rx_line_free)
        for i in range(0, len(data), self._slice):
            piece = data[i:i + self._slice]
            t += len(piece) * self.byte_time
            self._in_flight_in += len(piece)
            self.loop.call_at(t, self._deliver, piece, t)
        self._rx_line_free = t

    def _deliver(self, piece: bytes, t: float) -> None:
        self._in_flight_in -= len(piece)
        self.on_bytes(piece, t)

    @property
    def in_flight(self) -> int:
        return self._in_flight_in

    # --- device -> host ---------------------------------------------------------
    def write(self, data: bytes, not_before: float | None = None) -> float:
        """Queue ``data`` for the host; returns the model time it will be complete."""
        # With ``not_before`` (the model time the firmware produced the data)
        # the line timeline stays in model time, so a late wake-up of the loop
        # is not added on top of the serial transfer time.
        start = max(self.loop.time() if not_before is None else not_before, self._tx_line_free)
        done = start + len(data) * self.byte_time
        self._tx_line_free = done
        self.loop.call_at(done, self._emit, data)
        return done

    def inject(self, data: bytes) -> None:
        """Write raw bytes to the host immediately (fault injection in tests)."""
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        if self._closed:
            return
        if len(self._out) + len(data) > MAX_OUT_BUFFER:
            self.dropped_to_host += len(data)
            log.warning("%s: host is not reading; dropping %d bytes", self.name, len(data))
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                n = os.write(self.master, self._out)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                log.warning("%s: write failed: %s", self.name, exc)
                self._out.clear()
                n = 0
            if n <= 0:
                break
            self.bytes_to_host += n
            del self._out[:n]
        if self._out and not self._writing:
            self._writing = True
            self.loop.add_writer(self.master, self._flush)
        elif not self._out and self._writing:
            self._writing = False
            self.loop.remove_writer(self.master)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.master)
        self.loop.remove_writer(self.master)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class ByteQueue:
    """FIFO of bytes with cheap length accounting (used by the firmware models)."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._len += len(data)

    def pop(self, n: int) -> bytes:
        out = bytearray()
        while self._chunks and len(out) < n:
            chunk = self._chunks.popleft()
            need = n - len(out)
            if len(chunk) > need:
                out += chunk[:need]
                self._chunks.appendleft(chunk[need:])
            else:
                out += chunk
        self._len -= len(out)
        return bytes(out)
