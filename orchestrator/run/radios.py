"""Radios of a testbed: start the pty emulator for ``port: emulated`` radios,
then point the client link and the edge receiver at the right serial ports.

On the embedded testbed the emulator runs beside the controller and every
emulated radio shares one medium, which the jammer loads through the medium
file (``<run>/medium.json``). A real lab names /dev/serial/by-id/... paths
(or socket:// / rfc2217:// ports exported by the node) and nothing is started.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.lab.transport import AgentFailed

if TYPE_CHECKING:  # pragma: no cover
    from hilbed.orchestrator.run.runner import Runner

EDGE_SHORT_ADDR = 0x0100


class RadioSetupError(RunError):
    pass


class RadioBench:
    """Serial ports of every node's radio, emulated ones included."""

    def __init__(self, testbed, medium_file: Path, seed: int = 0):
        self.testbed = testbed
        self.medium_file = medium_file
        self.seed = seed
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
                raise RadioSetupError(f"emulated radios must share one protocol (got {', '.join(sorted(protocols))})")
            from hilbed.firmware_bridge.emulator import EmulatorProcess
            bauds = {radios[n].baud for n in emulated if radios[n].baud}
            self.emulator = EmulatorProcess(protocols.pop(), len(emulated), baud=max(bauds) if bauds else None,
                                            medium_file=self.medium_file, seed=self.seed)
            ports = self.emulator.start()
            self.ports.update(dict(zip(emulated, ports)))
        return self.ports

    def stop(self) -> None:
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    def radio_spec(self, node: str) -> dict:
        r = self.testbed.nodes[node].radio
        if r is None:
            raise RadioSetupError(f"node {node} has no radio in the testbed (add radio: {{protocol, port}})")
        return {"protocol": r.protocol, "port": self.ports[node], "baud": r.baud, "rtscts": r.rtscts,
                "channel": r.channel, "tx_power_dbm": r.tx_power_dbm, "pan_id": r.pan_id}


def open_radio_links(run: "Runner", cond, edge_addr: str, port: int) -> None:
    bench: RadioBench = run.radio_bench
    if len(run.testbed.clients) > 1:
        raise RadioSetupError("radio links carry one client per edge radio for now; use one client node")
    edge = run.testbed.edge
    run.agent(edge, "edge").call("open_radio", timeout=60, short_addr=EDGE_SHORT_ADDR, **bench.radio_spec(edge))
    e_off = run._offset(edge)["offset_ns"]
    for k, c in enumerate(run.testbed.clients):
        spec = cond.link.model_dump(mode="json") | {"radio": bench.radio_spec(c), "client_index": k}
        run.agent(c, "client").call("open_link", timeout=60, spec=spec, host=edge_addr, port=port,
                                    edge_minus_client_ns=e_off - run._offset(c)["offset_ns"],
                                    seed=run.scenario.workload.seed + k)


def close_radio_links(run: "Runner") -> None:
    h = run.handles.get((run.testbed.edge, "edge"))
    if h is not None and not h.dead.is_set():
        try:
            h.call("close_radio", timeout=30)
        except AgentFailed:
            pass
