"""The client-side link interface: :class:`Link` and the :class:`SendReport` it returns.

Every link kind (direct TCP, the user-space trace shaper, kernel-shaped TCP,
802.15.4 radios) keeps the same control channel to the edge: a TCP
connection that carries BEGIN/END frames and the edge's replies. Data may go
the same way (``direct``, ``trace``) or another (``radio``). Kinds differ in
:meth:`Link.send_message` only, so the seam lives here, apart from any
shaping code.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from hilbed.nodes import wire


def wall_ns() -> int:
    return time.time_ns()


@dataclass
class SendReport:
    """What happened to one message on the link, on the client's wall clock."""

    msg_id: int
    t_tx_start_ns: int
    t_tx_end_ns: int | None = None
    chunk_times_ns: list[int] = field(default_factory=list)  # delivery time of each delivered chunk
    chunks_delivered: int = 0
    bytes_delivered: int = 0
    wire_bytes_sent: int = 0
    packets_sent: int = 0
    packets_lost: int = 0
    aborted: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Link:
    """A client's link to the edge (the seam between client and transport).

    Subclasses implement :meth:`send_message`; :meth:`result`, :meth:`stats`
    and :meth:`close` work for all of them.
    """

    kind = "abstract"

    def __init__(self, host: str, port: int, edge_minus_client_ns: int = 0):
        self.edge_minus_client_ns = int(edge_minus_client_ns)
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send_lock = threading.Lock()
        self._results: dict[int, Future] = {}
        self._results_lock = threading.Lock()
        self._closed = threading.Event()
        self.epoch_mono = time.monotonic()
        self._rx = threading.Thread(target=self._rx_loop, name=f"{self.kind}-rx", daemon=True)
        self._rx.start()

    # -- helpers ----------------------------------------------------------
    def _write(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _future(self, msg_id: int) -> Future:
        with self._results_lock:
            return self._results.setdefault(msg_id, Future())

    def _rx_loop(self) -> None:
        reader = wire.FrameReader(self.sock)
        try:
            while not self._closed.is_set():
                f = reader.read(0.5)
                if f is None or f.type != wire.RESULT:
                    continue
                t_arr = time.monotonic()
                res = f.json()
                self._deliver_result(res, t_arr)
        except (EOFError, OSError, wire.WireError) as exc:
            with self._results_lock:
                for fut in self._results.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError(f"edge connection lost: {exc}"))

    def _deliver_result(self, res: dict, t_arr_mono: float) -> None:
        res["t_result_ns"] = wall_ns()
        self._future(int(res["msg_id"])).set_result(res)

    def _begin(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> None:
        self._future(msg_id)
        self._write(wire.begin_frame({**meta, "msg_id": msg_id, "chunk_sizes": [len(c) for c in chunks],
                                      "deadline_edge_ns": deadline_ns + self.edge_minus_client_ns}))

    # -- API --------------------------------------------------------------
    def send_message(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> SendReport:
        """Send ``chunks`` as message ``msg_id``, giving up at ``deadline_ns`` (client wall clock)."""
        raise NotImplementedError

    def result(self, msg_id: int, timeout: float) -> dict:
        """The edge's reply for ``msg_id`` (raises TimeoutError / ConnectionError)."""
        fut = self._future(msg_id)
        try:
            return fut.result(timeout)
        finally:
            with self._results_lock:
                self._results.pop(msg_id, None)

    def stats(self) -> dict:
        return {"kind": self.kind}

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
