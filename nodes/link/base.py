"""The client-side link interface: :class:`Link` and the :class:`SendReport` it returns.

Every link kind (direct TCP, the user-space trace shaper, kernel-shaped TCP,
802.15.4 radios) keeps the same control channel to the edge: a TCP
connection that carries the per-connection set-up (the edge's CHALLENGE,
the run secret's AUTH, the CODEC specs) and the edge's replies. BEGIN/DATA/END
of each image go the same way (``direct``, ``trace``; shaped on ``trace``) or,
for the data, another (``radio``). Kinds differ in :meth:`Link.send_message`
only, so the seam lives here, apart from any shaping code.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from hilbed.nodes import wire

log = logging.getLogger("hilbed.link")

#: how long :meth:`Link.authenticate` waits for the edge's CHALLENGE and WELCOME
AUTH_WAIT_S = 10.0


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
    wire_bytes_sent: int = 0  # every frame of the message: BEGIN + DATA (+ END)
    packets_sent: int = 0
    packets_lost: int = 0
    aborted: bool = False
    #: the header never reached the edge ("refused": not before the deadline, "lost": the link dropped it)
    header: str = "sent"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Link:
    """A client's link to the edge (the seam between client and transport).

    Subclasses implement :meth:`send_message`; :meth:`result`, :meth:`stats`
    and :meth:`close` work for all of them. :meth:`authenticate` proves the
    run's secret to the edge before the first message (the edge closes a
    connection that does not when it was given one).
    """

    kind = "abstract"
    #: byte accounting of this link's shaper; None: hilbed does not shape this link itself
    accounting: str | None = None

    def __init__(self, host: str, port: int, edge_minus_client_ns: int = 0):
        self.edge_minus_client_ns = int(edge_minus_client_ns)
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send_lock = threading.Lock()
        self._results: dict[int, Future] = {}
        self._results_lock = threading.Lock()
        self._closed = threading.Event()
        self._challenge: tuple[int, bool, bytes] | None = None
        self._challenged = threading.Event()
        self._welcome = threading.Event()
        self._lost: str | None = None
        self._codec_ids: dict[str, int] = {}
        self._next_codec_id = 0
        self.authenticated = False
        self.setup_bytes = 0  # control-plane bytes (AUTH, CODEC, VOID): not part of any image, not shaped
        self.edge_errors: list[str] = []
        self.epoch_mono = time.monotonic()
        self._rx = threading.Thread(target=self._rx_loop, name=f"{self.kind}-rx", daemon=True)
        self._rx.start()

    # -- helpers ----------------------------------------------------------
    def _write(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _write_setup(self, data: bytes) -> None:
        self._write(data)
        self.setup_bytes += len(data)

    def _future(self, msg_id: int) -> Future:
        with self._results_lock:
            return self._results.setdefault(msg_id, Future())

    def _rx_loop(self) -> None:
        reader = wire.FrameReader(self.sock)
        why = "closed"
        try:
            while not self._closed.is_set():
                f = reader.read(0.5)
                if f is None:
                    continue
                try:
                    self._on_frame(f)
                except Exception as exc:  # one bad reply must not end the link
                    self.edge_errors.append(f"bad {wire.FRAME_NAMES.get(f.type, f.type)} frame: {exc}")
        except (EOFError, OSError, wire.WireError) as exc:
            why = str(exc)
        self._lost = why
        self._challenged.set()
        self._welcome.set()
        with self._results_lock:
            for fut in self._results.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"edge connection lost: {why}"))

    def _on_frame(self, f: wire.Frame) -> None:
        if f.type == wire.RESULT:
            t_arr = time.monotonic()
            res = f.json()
            if not isinstance(res, dict) or not isinstance(res.get("msg_id"), int):
                raise ValueError("RESULT without a message id")
            self._deliver_result(res, t_arr)
        elif f.type == wire.CHALLENGE:
            self._challenge = wire.parse_challenge(f.payload)
            self._challenged.set()
        elif f.type == wire.WELCOME:
            self._welcome.set()
        elif f.type == wire.ERROR:
            err = f.json()
            text = str(err.get("error"))
            mid = err.get("msg_id")
            self.edge_errors.append(text)
            del self.edge_errors[:-20]
            if isinstance(mid, int):
                self._resolve(mid, {"msg_id": mid, "error": f"edge: {text}"})
            else:
                log.warning("edge reports: %s", text)

    def _resolve(self, msg_id: int, res: dict) -> None:
        res["t_result_ns"] = wall_ns()
        fut = self._future(msg_id)
        if not fut.done():  # a second reply for one message (a reused id) is ignored
            fut.set_result(res)

    def _deliver_result(self, res: dict, t_arr_mono: float) -> None:
        self._resolve(int(res["msg_id"]), res)

    def _codec_id(self, codec: str, params: dict | None) -> int:
        """The connection's one-byte id of a codec spec; sends its CODEC frame (control plane) the first time."""
        key = wire.codec_frame(0, codec, params)[wire.HDR.size + 1:].decode()
        cid = self._codec_ids.get(key)
        if cid is None:
            cid = self._next_codec_id
            self._next_codec_id = (cid + 1) % 256
            for k, v in list(self._codec_ids.items()):  # an id reused after 256 specs names the new one
                if v == cid:
                    del self._codec_ids[k]
            self._write_setup(wire.codec_frame(cid, codec, params))
            self._codec_ids[key] = cid
        return cid

    def announce_codec(self, codec: str, params: dict | None) -> None:
        """Send a codec's spec now (a trial's set-up), not inside the first image's airtime."""
        self._codec_id(codec, params)

    def _begin_frame(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> bytes:
        """The message's BEGIN (binary header) and its pending reply."""
        self._future(msg_id)
        return wire.begin_frame(wire.Begin(
            msg_id, self._codec_id(meta["codec"], meta.get("params")),
            max(0, deadline_ns + self.edge_minus_client_ns), [len(c) for c in chunks],
            meta.get("via"), list(meta.get("via_key") or [])))

    def _begin(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> int:
        """Write BEGIN unshaped (direct, radio); its size on the wire."""
        frame = self._begin_frame(msg_id, meta, chunks, deadline_ns)
        self._write(frame)
        return len(frame)

    def _void_at(self, msg_id: int, reason: int, n_chunks: int, at_ns: int) -> None:
        """At the deadline, tell the edge that this message's header never arrived, so it still answers.

        Sent on the control connection after the deadline, so it carries nothing the edge could use in time.
        """
        def send() -> None:
            try:
                self._write_setup(wire.void_frame(msg_id, reason, n_chunks))
            except OSError:
                pass
        delay = (at_ns - wall_ns()) / 1e9
        if delay <= 0:
            send()
            return
        t = threading.Timer(delay, send)
        t.daemon = True
        t.start()

    # -- API --------------------------------------------------------------
    def authenticate(self, secret: str | None, timeout: float = AUTH_WAIT_S) -> dict:
        """Answer the edge's CHALLENGE with the run secret; raises ConnectionError when refused.

        Without a secret this only checks that the edge does not require one.
        """
        if not self._challenged.wait(timeout) or self._challenge is None:
            raise ConnectionError(f"edge sent no challenge ({self._lost or 'timeout'}): is it a hilbed edge "
                                  f"of wire version {wire.VERSION}?")
        version, required, nonce = self._challenge
        if version != wire.VERSION:
            raise ConnectionError(f"edge speaks wire version {version}, this client {wire.VERSION}")
        if not required:
            return {"authenticated": False}
        if not secret:
            raise ConnectionError("the edge requires the run secret and none was given")
        self._write_setup(wire.auth_frame(secret, nonce))
        if not self._welcome.wait(timeout) or self._lost is not None:
            errs = "; ".join(self.edge_errors[-1:]) or self._lost or "timeout"
            raise ConnectionError(f"edge refused the connection: {errs}")
        self.authenticated = True
        return {"authenticated": True}

    def set_accounting(self, accounting: str | None) -> None:
        """Byte accounting of the link's shaper; links hilbed does not shape ignore it (stats say None)."""

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
        return {"kind": self.kind, **self._wire_stats()}

    def _wire_stats(self) -> dict:
        return {"wire_version": wire.VERSION, "authenticated": self.authenticated, "accounting": self.accounting,
                "setup_bytes": self.setup_bytes, "edge_errors": list(self.edge_errors[-5:])}

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
