"""Node roles: one table from which config validation, provisioning, checks, runs and recovery read.

A role names the agent a node runs (``python -m <agent_module>``), the
optional-dependency group provisioning installs for it, what ``hilbed check``
verifies on a node that has it, whether its clock stamps records (so the run
measures its offset), and the step that brings a freshly started agent to
the state a run needs (also after a reconnect). Adding a role is one
:func:`register_role` call; nothing else enumerates roles.

The steps get the run context duck-typed (``agent(node, role)``,
``scenario``, ``testbed``, ``edge_port``...), so this module imports nothing
from the run layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from hilbed.nodes.workload.model_specs import check_class_count
from hilbed.orchestrator.errors import SetupError

#: what ``hilbed check`` can verify on a node because of its role
CHECK_GPU = "gpu"          # torch/CUDA where the node's device asks for it
CHECK_IPERF3 = "iperf3"    # the iperf3 program
CHECKS = (CHECK_GPU, CHECK_IPERF3)


@dataclass(frozen=True)
class Role:
    name: str
    agent_module: str
    #: optional-dependency group of pyproject.toml provisioning installs on the node
    extra: str
    checks: tuple[str, ...] = ()
    #: its agent stamps record timestamps, so the run measures the node's clock offset
    stamps_records: bool = False
    #: started only when the scenario needs it (``needed(scenario, testbed)``); None: always
    needed: Callable[[Any, Any], bool] | None = None
    #: brings a freshly started agent to the run's state: ``prepare(ctx, node)``
    prepare: Callable[[Any, str], None] | None = None
    description: str = ""

    def is_needed(self, scenario: Any, testbed: Any) -> bool:
        return True if self.needed is None else bool(self.needed(scenario, testbed))


ROLES: dict[str, Role] = {}


def register_role(role: Role) -> Role:
    """Add a role (a plug-in's or a test's); the name must be new."""
    if role.name in ROLES:
        raise ValueError(f"role {role.name!r} is registered already")
    bad = [c for c in role.checks if c not in CHECKS]
    if bad:
        raise ValueError(f"role {role.name!r}: unknown checks {bad} (allowed: {', '.join(CHECKS)})")
    ROLES[role.name] = role
    return role


def unregister_role(name: str) -> None:
    ROLES.pop(name, None)


def role(name: str) -> Role:
    try:
        return ROLES[name]
    except KeyError:
        raise KeyError(f"unknown role {name!r} (allowed: {', '.join(ROLES)})") from None


def role_names() -> tuple[str, ...]:
    return tuple(ROLES)


# ------------------------------------------------------------ built-in roles ---

def _prepare_edge(ctx: Any, node: str) -> None:
    """Load the model and listen (on the port it had, after a reconnect)."""
    edge = ctx.agent(node, "edge")
    cfg = ctx.testbed.nodes[node]
    wl = ctx.scenario.workload
    spec = _edge_model_spec(ctx, node)
    ctx.manifest["model"] = edge.call("load", timeout=900, model=spec, device=cfg.device, size=wl.image_size)
    if spec != wl.model and isinstance(ctx.manifest["model"], dict):  # the scenario's model, read from a pushed copy
        ctx.manifest["model"].update(model=wl.model, loaded_from=spec)
    # inference across clients: one image at a time (max_batch 1) or dynamic batches (the scenario's edge: block);
    # what the edge applied (AMP ignored on CPU, with its note) is kept in the manifest
    b = ctx.scenario.edge
    applied = ctx.manifest["edge_batching"] = edge.call("batching", timeout=30, max_batch=b.max_batch,
                                                        max_wait_ms=b.max_wait_ms, amp=b.amp)
    if b.amp and isinstance(applied, dict) and applied.get("amp_applied") is False and hasattr(ctx, "console"):
        ctx.console.print(f"[yellow]AMP not applied at the edge ({applied.get('amp_note') or 'no CUDA'}): "
                          "inference runs in float32 (the report says so too)[/]")
    if ctx.all_local:  # codecs that fit on first use (GRACE, AutoJPEG, AdaCompress) fit now, not inside a trial
        from hilbed.nodes.codecs import codec_class
        for cc in ctx.scenario.codecs:
            codec_class(cc.codec).prepare(cc.params)
    # bind where the clients reach the edge (loopback on the embedded testbed); only this run's clients are
    # served (a per-run secret), and no message may make the edge hold more than an image of this scenario can be
    host = "127.0.0.1" if ctx.all_local else cfg.address
    ctx.edge_port = edge.call("listen", host=host, port=ctx.edge_port or cfg.edge_port, secret=ctx.secret,
                              limits=_edge_limits(ctx.scenario))["port"]


def _edge_model_spec(ctx: Any, node: str) -> str:
    """The scenario's model as the edge should load it: on an SSH edge from the weights provisioning pushed
    (so it never trains the default model itself), else as written."""
    if not hasattr(ctx, "files") or not hasattr(ctx, "store"):
        return ctx.scenario.workload.model
    return ctx.files.model_spec(node)


def _edge_limits(scenario: Any) -> dict:
    """Bounds for the edge's receiver: an image may be at most a few raw frames of the scenario's size."""
    raw = 3 * scenario.workload.image_size ** 2
    return {"max_message_bytes": max(4 << 20, 4 * raw), "max_buffered_bytes": max(16 << 20, 16 * raw)}


def _prepare_client(ctx: Any, node: str) -> None:
    """Open the dataset; its classes must be the ones the edge's model labels (checked before any trial)."""
    wl = ctx.scenario.workload
    got = ctx.agent(node, "client").call("configure", node=node, dataset=wl.dataset, size=wl.image_size, seed=wl.seed)
    if got and "compute_threads" in got:  # what the client's encoders may use (HILBED_CLIENT_THREADS, default 1)
        ctx.manifest.setdefault("client_compute_threads", {})[node] = got["compute_threads"]
    power = ctx.testbed.nodes[node].power
    if power is not None and power.meter != "none":
        settings = power.model_dump(exclude={"meter", "radio"}, exclude_none=True)
        ctx.manifest.setdefault("power_meters", {})[node] = ctx.agent(node, "client").call(
            "power_meter", timeout=30, kind=power.meter, radio=power.radio, **settings)
    model_classes = (ctx.manifest.get("model") or {}).get("classes")
    if model_classes is not None and got and got.get("classes") is not None:
        try:
            check_class_count(wl.model, len(model_classes), wl.dataset, len(got["classes"]))
        except ValueError as exc:
            raise SetupError(str(exc)) from None


def _jams(scenario: Any, testbed: Any) -> bool:
    return any(c.jamming != "none" or c.jamming_schedule for c in scenario.conditions)


register_role(Role("client", "hilbed.nodes.client", "client", stamps_records=True, prepare=_prepare_client,
                   description="plays the image stream: encode, send over the link, await the reply"))
register_role(Role("edge", "hilbed.nodes.edge", "edge", checks=(CHECK_GPU,), stamps_records=True,
                   prepare=_prepare_edge, description="receives, decodes and infers (CUDA when present)"))
register_role(Role("jammer", "hilbed.nodes.jammer", "jammer", checks=(CHECK_IPERF3,), needed=_jams,
                   description="loads the medium with iperf3 traffic at the scenario's jamming levels"))
