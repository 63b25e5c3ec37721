"""The ``radio`` link kind: image data over IEEE 802.15.4 through firmware_bridge.

The image's chunks travel over the client's radio (Spinel RCP or Wireless
UART firmware, real board or pty emulator) to the edge's radio with the
message transport's fragmentation, ACKs, retries and deadline abort. The
small control frames (the binary BEGIN with the codec id and the deadline,
END, and the reply) use the TCP connection to the edge, as a lab's wired
management network would: by design they cost no airtime here (the radio's
own message transport sends its BEGIN/END frames over the air). The data
path is the radio alone, so ``wire_bytes_sent`` of a radio record does not
count the TCP control frames.
"""

from __future__ import annotations

import time

from hilbed.firmware_bridge import MessageSender, open_radio
from hilbed.nodes import wire
from hilbed.nodes.link.addressing import EDGE_SHORT_ADDR, client_short_addr
from hilbed.nodes.link.base import Link, SendReport, wall_ns


class RadioLink(Link):
    kind = "radio"

    def __init__(self, host: str, port: int, edge_minus_client_ns: int, radio: dict, client_index: int = 0):
        self.radio_cfg = radio
        self.radio = open_radio(radio["protocol"], radio["port"], baud=radio.get("baud"), rtscts=radio.get("rtscts"))
        if radio["protocol"] == "spinel":
            self.radio.configure(channel=radio.get("channel", 15), tx_power_dbm=radio.get("tx_power_dbm", 0),
                                 pan_id=radio.get("pan_id", 0xABCD), short_addr=client_short_addr(client_index))
        self.sender = MessageSender(self.radio, dst=EDGE_SHORT_ADDR)
        # how the edge's receiver tells this client's messages apart: the MAC source on Spinel; the Wireless UART
        # firmware hands over no source address (one client per edge radio there)
        self.src = client_short_addr(client_index) if radio["protocol"] == "spinel" else None
        self.totals = {"frames": 0, "retries": 0, "cca_failures": 0, "aborted": 0}
        super().__init__(host, port, edge_minus_client_ns)

    def send_message(self, msg_id: int, meta: dict, chunks: list[bytes], deadline_ns: int) -> SendReport:
        radio_msg = msg_id & 0xFF
        self._begin(msg_id, {**meta, "via": "radio", "via_key": [self.src, radio_msg]}, chunks, deadline_ns)
        rep = SendReport(msg_id, wall_ns())
        deadline_mono = time.monotonic() + (deadline_ns - wall_ns()) / 1e9
        r = self.sender.send(radio_msg, chunks, deadline_mono)
        rep.t_tx_end_ns = wall_ns()
        rep.chunk_times_ns = [int(c.t_wall * 1e9) for c in r.chunk_times]
        rep.chunks_delivered = r.chunks_delivered
        rep.bytes_delivered = r.bytes_delivered
        rep.packets_sent = r.frames
        rep.aborted = r.aborted
        rep.retries = r.retries  # type: ignore[attr-defined]
        rep.cca_failures = r.cca_failures  # type: ignore[attr-defined]
        self.totals["frames"] += r.frames
        self.totals["retries"] += r.retries
        self.totals["cca_failures"] += r.cca_failures
        self.totals["aborted"] += int(r.aborted)
        self._write(wire.end_frame(msg_id, r.aborted))
        return rep

    def stats(self) -> dict:
        rs = getattr(self.radio, "stats", None)
        return {"kind": self.kind, **self.totals, **self._wire_stats(),
                "radio": rs.__dict__ if hasattr(rs, "__dict__") else None}

    def close(self) -> None:
        super().close()
        try:
            self.radio.close()
        except Exception:
            pass


def open_radio_link(spec: dict, host: str, port: int, edge_minus_client_ns: int = 0, seed: int = 0) -> RadioLink:
    radio = spec.get("radio")
    if not radio:
        raise ValueError("a radio link needs the client's radio (protocol, port) from testbed.yaml")
    return RadioLink(host, port, edge_minus_client_ns, radio, spec.get("client_index", 0))
