"""A minimal edge for link tests: accepts one connection and notes when each frame arrived."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from hilbed.nodes import wire


class EdgeSink:
    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(1)
        self.port = self.srv.getsockname()[1]
        self.frames: list[tuple[float, int]] = []  # (monotonic arrival, frame type)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        conn, _ = self.srv.accept()
        r = wire.FrameReader(conn)
        try:
            while True:
                f = r.read(5)
                if f is not None:
                    self.frames.append((time.monotonic(), f.type))
        except (EOFError, OSError):
            pass

    def data_times(self) -> list[float]:
        return [t for t, ty in self.frames if ty == wire.DATA]

    def close(self):
        self.srv.close()


@pytest.fixture
def edge_sink():
    sinks: list[EdgeSink] = []

    def make() -> EdgeSink:
        sinks.append(EdgeSink())
        return sinks[-1]

    yield make
    for s in sinks:
        s.close()
