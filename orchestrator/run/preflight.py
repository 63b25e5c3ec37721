"""The check before every run: refuse to start while a node fails its checks (nothing runs yet)."""

from __future__ import annotations

from hilbed.nodes.events import RunEvent
from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.lab import health
from hilbed.orchestrator.lab.check import NodeCheck, check_testbed, render_checks
from hilbed.orchestrator.run.context import RunContext


def preflight(ctx: RunContext) -> list[NodeCheck]:
    """Check every node with the run's transports (kept open); the node facts go into the manifest."""
    health.refuse_bad(ctx.testbed)  # a node that failed its checks N times in a row stays out until one passes
    sc = ctx.scenario
    need_radio = any(c.link.kind == "radio" for c in sc.conditions)
    need_jammer = any(c.jamming != "none" for c in sc.conditions)
    checks = check_testbed(ctx.testbed, ctx.transports, clock=False, need_radio=need_radio,
                           need_jammer=need_jammer, log_dir=ctx.store.logs)
    health.record(checks, ctx.testbed, source=f"run {ctx.store.run_id}")
    ctx.manifest["node_checks"] = {nc.node: nc.to_dict() for nc in checks}
    ctx.write_manifest()
    bad = [nc for nc in checks if not nc.ok]
    ctx.event(RunEvent.PREFLIGHT, ok=not bad, failed=[nc.node for nc in bad])
    if bad:
        render_checks(checks, ctx.console, title="pre-run check")
        problems = "; ".join(p for nc in bad for p in nc.problems())
        raise RunError(f"the testbed is not ready, nothing was started: {problems}")
    return checks
