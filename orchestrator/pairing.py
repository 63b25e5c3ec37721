"""A scenario checked against the testbed it will run on: every condition must be applicable there.

Each file validates on its own (:mod:`hilbed.orchestrator.config`); this
module catches what only the pair shows, before anything starts, as a
``file:line`` error on the scenario with the fix: a jamming level on a
testbed without a jammer, a radio link where a node has no radio, kernel
shaping without an interface, and jamming of a link whose capacity would
not follow the jammer's measured load (the run would label images as jammed
that were sent at full capacity). Trace links follow it on any machine: the
controller relays the jammer's measured load to remote clients
(:class:`hilbed.orchestrator.run.conditions.MediumRelay`).
"""

from __future__ import annotations

from typing import Any

from hilbed.nodes.link.registry import link_kind_class
from hilbed.orchestrator.config import MAX_NODES
from hilbed.orchestrator.yamlsrc import ConfigError, dotted


def _error(scenario: Any, loc: tuple, problem: str, fix: str) -> ConfigError:
    src = scenario._source
    path = src.path if src is not None else scenario.name
    line = src.line_of(loc) if src is not None else None
    return ConfigError(path, line, dotted(loc), f"{problem}; fix: {fix}")


def _local(testbed: Any, node: str) -> bool:
    return testbed.nodes[node].transport.kind == "local"


def with_clients(testbed: Any, scenario: Any, testbed_path: str = "the testbed") -> Any:
    """The testbed with as many client nodes as the scenario streams from at once.

    A lab testbed lists each client; on this machine (every client a local
    process) the missing ones are copies of the last client, named
    ``client-2``, ``client-3``, ... so ``clients: 8`` works on the embedded
    testbed. A copy of a client with a real radio port or power meter would
    share that device, so such a testbed is refused instead.
    """
    want = scenario.max_clients
    have = testbed.clients
    if want is None or want <= len(have):
        return testbed
    loc = ("clients",) if scenario.clients == want else next(
        ("conditions", i, "clients") for i, c in enumerate(scenario.conditions) if c.clients == want)
    template = testbed.nodes[have[-1]]
    remote = [n for n in have if not _local(testbed, n)]
    shared = [what for what, busy in (("radio port", template.radio is not None and template.radio.port != "emulated"),
                                      ("power meter", template.power is not None
                                       and template.power.meter not in ("none", "emulated"))) if busy]
    if remote or shared:
        why = (f"{', '.join(remote)} run elsewhere" if remote
               else f"{have[-1]} has a real {' and '.join(shared)} a copy would share")
        raise _error(scenario, loc, f"the scenario streams from {want} clients but {testbed_path} lists "
                     f"{len(have)} and cannot make more ({why})", f"list {want} client nodes in {testbed_path}")
    nodes = dict(testbed.nodes)
    k = 1
    while len([n for n in nodes if "client" in nodes[n].roles]) < want:
        k += 1
        name = f"client-{k}"
        if name not in nodes:
            nodes[name] = template.model_copy(deep=True)
    if len(nodes) > MAX_NODES:
        raise _error(scenario, loc, f"{want} clients make {len(nodes)} nodes", f"at most {MAX_NODES} nodes")
    return testbed.model_copy(update={"nodes": nodes})


def check_pair(testbed: Any, scenario: Any, testbed_path: str = "the testbed") -> None:
    """Raise ConfigError (pointing into the scenario) for the first condition the testbed cannot apply."""
    jammers = testbed.jammers
    edge = testbed.edge
    for i, cond in enumerate(scenario.conditions):
        jams = cond.jamming != "none" or bool(cond.jamming_schedule)
        jloc = ("conditions", i, "jamming_schedule" if cond.jamming_schedule else "jamming")
        kind = cond.link.kind
        if jams and not jammers:
            raise _error(scenario, jloc, f"condition {cond.name} jams but {testbed_path} has no node with role "
                         "'jammer'", f"add a jammer node to {testbed_path}, or use jamming: none")
        if kind == "radio":
            missing = [n for n in [*testbed.clients, edge] if testbed.nodes[n].radio is None]
            if missing:
                raise _error(scenario, ("conditions", i, "link", "kind"), f"a radio link needs a radio on "
                             f"{', '.join(missing)}", f"add radio: {{protocol, port}} to those nodes in {testbed_path}")
            # emulated radios are pseudo-terminals of the emulator on this machine (a remote jammer's load reaches
            # it through the medium relay); a node elsewhere cannot open them
            far = [n for n in [*testbed.clients, edge]
                   if testbed.nodes[n].radio.port == "emulated" and not _local(testbed, n)]
            if far:
                raise _error(scenario, ("conditions", i, "link", "kind"), f"emulated radios run on this machine, "
                             f"but {', '.join(far)} run elsewhere",
                             f"give those nodes real radio ports in {testbed_path}, or run them locally")
        if kind == "tc":
            need = list(testbed.clients) + ([edge] if cond.link.downlink_rate_kbps or cond.link.downlink_trace else [])
            missing = [n for n in need if not testbed.nodes[n].interface]
            if missing:
                raise _error(scenario, ("conditions", i, "link", "kind"), f"link kind 'tc' needs the network "
                             f"interface to shape on {', '.join(missing)}",
                             f"add interface: <name> to those nodes in {testbed_path}")
        if not jams:
            continue
        remote_jammers = [n for n in jammers if not _local(testbed, n)]
        if not link_kind_class(kind).jammable:
            # an unshaped or kernel-shaped link feels jamming only through the real network: the clients and the
            # jammer must be lab nodes sharing it; on this machine the traffic would cross loopback untouched
            here = [n for n in [*testbed.clients, *jammers] if _local(testbed, n)]
            if here:
                raise _error(scenario, jloc, f"condition {cond.name} jams a '{kind}' link, but {', '.join(here)} "
                             "run on this machine, where the jammer's traffic does not reach it: its images would "
                             "be labelled jammed while sent at full capacity",
                             "use a trace or radio link for jamming on the embedded testbed, or jamming: none")
