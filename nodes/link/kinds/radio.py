"""``radio``: image data over IEEE 802.15.4 radios (Spinel RCP or Wireless UART firmware) via firmware_bridge.

Controller side: :meth:`RadioKind.setup` starts the pty emulator for
``port: emulated`` radios (one shared medium per run, loaded by the jammer
through the medium file); a real lab names /dev/serial/by-id/... (or
socket:// / rfc2217://) ports and nothing is started. Each condition opens
the edge's radio receiver and the clients' radio links.

N clients share the medium: every client's radio sends from its own short
address (:func:`~hilbed.nodes.link.addressing.client_short_addr` of its index
in the testbed's client order, so a client keeps its address in every
condition), the edge's receiver keeps one assembly per (source, message) and
the emulator's CSMA/CA arbitrates between them; its per-frame log
(``logs/radio-frames.jsonl``) shows who met a busy channel, a collision or a
retry. Wireless UART firmware hands the host no source address, so a
``wuart`` radio link carries one client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hilbed.nodes.link.addressing import EDGE_SHORT_ADDR, client_short_addr
from hilbed.nodes.link.kind import LinkKind, LinkSetupError


class RadioBench:
    """Serial ports of every node's radio, emulated ones included."""

    def __init__(self, testbed: Any, medium_file: Path, seed: int = 0, frame_log: Path | None = None):
        self.testbed = testbed
        self.medium_file = medium_file
        self.seed = seed
        self.frame_log = frame_log
        self.emulator = None
        self.ports: dict[str, str] = {}

    def start(self) -> dict[str, str]:
        radios = {n: c.radio for n, c in self.testbed.nodes.items() if c.radio is not None}
        emulated = [n for n, r in radios.items() if r.port == "emulated"]
        for n, r in radios.items():
            if r.port != "emulated":
                self.ports[n] = r.port
        if emulated:
            protocols = {radios[n].protocol for n in emulated}
            if len(protocols) > 1:
                raise LinkSetupError(f"emulated radios must share one protocol (got {', '.join(sorted(protocols))})")
            from hilbed.firmware_bridge.emulator import EmulatorProcess
            bauds = {radios[n].baud for n in emulated if radios[n].baud}
            self.emulator = EmulatorProcess(protocols.pop(), len(emulated), baud=max(bauds) if bauds else None,
                                            medium_file=self.medium_file, seed=self.seed,
                                            frame_log=Path(self.frame_log).resolve() if self.frame_log else None)
            self.ports.update(dict(zip(emulated, self.emulator.start())))
        return self.ports

    def stop(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    def radio_spec(self, node: str) -> dict:
        r = self.testbed.nodes[node].radio
        if r is None:
            raise LinkSetupError(f"node {node} has no radio in the testbed (add radio: {{protocol, port}})")
        return {"protocol": r.protocol, "port": self.ports[node], "baud": r.baud, "rtscts": r.rtscts,
                "channel": r.channel, "tx_power_dbm": r.tx_power_dbm, "pan_id": r.pan_id}


class RadioKind(LinkKind):
    name = "radio"
    jammable = True

    def __init__(self) -> None:
        self._radio: Any = None       # edge side: the edge's radio and its message receiver
        self._receiver: Any = None
        self._stop: Any = None

    @staticmethod
    def bench(ctx: Any) -> RadioBench:
        return ctx.state["radio_bench"]

    def setup(self, ctx: Any) -> None:
        bench = RadioBench(ctx.testbed, ctx.medium_file, ctx.scenario.workload.seed,
                           frame_log=ctx.store.logs / "radio-frames.jsonl")
        ctx.state["radio_bench"] = bench
        ctx.manifest["radio_ports"] = bench.start()
        if bench.emulator is not None:
            ctx.manifest["radio_frame_log"] = str(bench.frame_log)

    def apply(self, ctx: Any, cond: Any) -> None:
        clients = ctx.clients_for(cond)
        wuart = [c for c in clients if ctx.testbed.nodes[c].radio is not None
                 and ctx.testbed.nodes[c].radio.protocol == "wuart"]
        if len(clients) > 1 and wuart:
            raise LinkSetupError(f"condition {cond.name}: {len(clients)} clients on wuart radios "
                                 f"({', '.join(wuart)}), whose firmware gives the edge no source address; "
                                 "use spinel radios or clients: 1")
        edge = ctx.testbed.edge
        # room for every client's message plus one being closed, whatever the clients
        spec = self.bench(ctx).radio_spec(edge) | {"max_assemblies": max(32, 2 * len(clients))}
        facts = ctx.agent(edge, "edge").call("open_receiver", timeout=60, kind=self.name, spec=spec)
        ctx.state["radio_edge_facts"] = facts
        self.open_client_links(ctx, cond)

    def verify(self, ctx: Any, cond: Any) -> dict:
        return {"edge_radio": ctx.state.get("radio_edge_facts"),
                "client_short_addrs": {c: client_short_addr(ctx.testbed.clients.index(c))
                                       for c in ctx.clients_for(cond)}}

    def client_spec(self, ctx: Any, cond: Any, client: str, index: int) -> dict:
        # index: the client's place in the testbed, so its address never changes between conditions
        return super().client_spec(ctx, cond, client, index) | {"radio": self.bench(ctx).radio_spec(client),
                                                                 "client_index": index}

    def clear(self, ctx: Any) -> None:
        try:
            self.close_client_links(ctx)
        finally:
            self.close_edge_receiver(ctx)

    def teardown(self, ctx: Any) -> None:
        bench = ctx.state.pop("radio_bench", None)
        if bench is not None:
            bench.stop()

    def open_link(self, spec: dict, host: str, port: int, edge_minus_client_ns: int = 0, seed: int = 0) -> Any:
        from hilbed.nodes.link.radio import open_radio_link
        return open_radio_link(spec, host, port, edge_minus_client_ns, seed=seed)

    # -- edge side ---------------------------------------------------------
    def open_receiver(self, edge: Any, spec: dict) -> dict:
        """Open the edge's radio and hand every received chunk to the message its BEGIN announced."""
        import threading

        from hilbed.firmware_bridge import MessageReceiver, open_radio
        from hilbed.firmware_bridge.message import ReceiverLimits
        radio = open_radio(spec["protocol"], spec["port"], baud=spec.get("baud"), rtscts=spec.get("rtscts"))
        facts = {"protocol": spec["protocol"], "port": spec["port"]}
        if spec["protocol"] == "spinel":
            radio.configure(channel=spec.get("channel", 15), tx_power_dbm=spec.get("tx_power_dbm", 0),
                            pan_id=spec.get("pan_id", 0xABCD), short_addr=EDGE_SHORT_ADDR)
            facts["ncp_version"] = radio.ncp_version()
        self._radio = radio
        limits = ReceiverLimits(max_assemblies=int(spec.get("max_assemblies", 32)))
        self._receiver = MessageReceiver(radio, limits=limits)
        self._stop = threading.Event()
        threading.Thread(target=self._receive, args=(edge,), daemon=True, name="edge-radio").start()
        return facts

    def _receive(self, edge: Any) -> None:
        import logging
        while not self._stop.is_set():
            try:
                ev = self._receiver.recv(0.2)
            except Exception as exc:  # port closed or device gone
                if not self._stop.is_set():
                    logging.getLogger("hilbed.edge").warning("radio receive stopped: %s", exc)
                return
            if ev is None or ev.kind not in ("chunk", "end", "abort"):
                continue
            inc = edge.side_message(self.name, [ev.src, ev.msg_id])
            if ev.kind != "chunk":
                if inc is not None:
                    edge.finish_message(inc, "end" if ev.kind == "end" else "aborted")
                continue
            t_ns = int(ev.t_wall * 1e9)
            if inc is None or t_ns > inc.deadline_ns:
                edge.count("late_packets")
                continue
            with inc.lock:
                inc.add(int(ev.chunk_index), 0, ev.data, t_ns)
                if ev.rssi is not None:
                    inc.rssi.append(ev.rssi)

    def receiver_stats(self) -> dict:
        return self._receiver.counters() if self._receiver is not None else {}

    def close_receiver(self, edge: Any) -> dict:
        stats = self.receiver_stats()
        if self._stop is not None:
            self._stop.set()
        try:
            if self._radio is not None:
                self._radio.close()
        except Exception:
            pass
        return stats
