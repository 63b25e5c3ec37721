"""A tiny single-threaded event loop with microsecond-resolution timers.

Why not asyncio: the radio model schedules many events a few hundred
microseconds apart (CCA windows, turnaround, ACK), and epoll-based loops
round timeouts up to whole milliseconds.  ``select()`` takes a ``timeval``,
so a ``SelectSelector`` wakes within ~100 us of the requested time.  All
radio state lives in the loop thread; other threads talk to it only through
``call_soon_threadsafe``.

Times are ``time.monotonic()`` seconds.  Timers carry a *model* time: a
callback that runs late still sees the time it was scheduled for, so the
emulated radio timeline does not drift with scheduling jitter.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Timer:
    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self) -> None:
        self._selector = selectors.SelectSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._pending: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._pending_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, (self._drain_wake, None))
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._stopping = False
        self.thread_id: int | None = None

    @staticmethod
    def time() -> float:
        return time.monotonic()

    # --- timers -------------------------------------------------------------------
    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(when, callback, args)
        heapq.heappush(self._timers, (when, next(self._counter), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return self.call_at(self.time() + delay, callback, *args)

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        with self._pending_lock:
            self._pending.append((callback, args))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    # --- file descriptors ---------------------------------------------------------
    def _update(self, fd: int) -> None:
        events = 0
        if fd in self._readers:
            events |= selectors.EVENT_READ
        if fd in self._writers:
            events |= selectors.EVENT_WRITE
        try:
            self._selector.get_key(fd)
            registered = True
        except KeyError:
            registered = False
        if events and registered:
            self._selector.modify(fd, events)
        elif events:
            self._selector.register(fd, events)
        elif registered:
            self._selector.unregister(fd)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    # --- running ------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to return from ``run``; safe from any thread or a signal handler."""
        self._stopping = True
        self._wake()

    def run(self) -> None:
        self.thread_id = threading.get_ident()
        # _stopping is not reset here: a stop() (e.g. SIGTERM) that arrives
        # before run() starts must still be honoured.
        while not self._stopping:
            self._run_once()

    def _run_once(self) -> None:
        with self._pending_lock:
            pending = list(self._pending)
            self._pending.clear()
        for cb, args in pending:
            self._invoke(cb, args)
        timeout: float | None = None
        if pending or self._pending:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - self.time())
        else:
            timeout = 1.0
        for key, mask in self._selector.select(timeout):
            fd = key.fd
            if fd == self._wake_r:
                self._drain_wake()
                continue
            if mask & selectors.EVENT_READ and fd in self._readers:
                self._invoke(self._readers[fd], ())
            if mask & selectors.EVENT_WRITE and fd in self._writers:
                self._invoke(self._writers[fd], ())
        now = self.time()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._invoke(timer.callback, timer.args)

    @staticmethod
    def _invoke(cb: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            cb(*args)
        except Exception:  # a model bug must not kill every emulated radio
            log.exception("emulator callback %r failed", cb)

    def close(self) -> None:
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
