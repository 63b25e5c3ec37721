"""The check before every run: refuse to start while a node fails its checks (nothing runs yet).

SSH nodes must also hold every file the scenario makes them read (traces, codec artifacts; the model's
weights are wanted but optional), pushed by ``hilbed provision --scenario`` and hashed on the node here."""

from __future__ import annotations

from hilbed.nodes.events import RunEvent
from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.lab import health
from hilbed.orchestrator.lab.check import NodeCheck, check_testbed, render_checks
from hilbed.orchestrator.lab.transport import local_shell_path
from hilbed.orchestrator.run.assets import node_files
from hilbed.orchestrator.run.context import RunContext


def provision_command(ctx: RunContext) -> str:
    """The command that pushes what this run's nodes need."""
    tb = (ctx.manifest.get("testbed") or {}).get("path") or "TESTBED"
    sc = (ctx.manifest.get("scenario") or {}).get("path") or "SCENARIO"
    return f"hilbed provision --testbed {local_shell_path(tb)} --scenario {local_shell_path(sc)}"


def preflight(ctx: RunContext) -> list[NodeCheck]:
    """Check every node with the run's transports (kept open); the node facts go into the manifest."""
    health.refuse_bad(ctx.testbed)  # a node that failed its checks N times in a row stays out until one passes
    sc = ctx.scenario
    need_radio = any(c.link.kind == "radio" for c in sc.conditions)
    need_jammer = any(c.jamming != "none" for c in sc.conditions)
    files = node_files(ctx)
    assets = {n: files.needed(n) for n in ctx.testbed.nodes if files.is_remote(n)}
    fix = provision_command(ctx)
    checks = check_testbed(ctx.testbed, ctx.transports, clock=False, need_radio=need_radio,
                           need_jammer=need_jammer, log_dir=ctx.store.logs, assets=assets, provision_fix=fix)
    ctx.state["assets_checked"] = {nc.node: set(nc.facts.get("assets", [])) for nc in checks if assets.get(nc.node)}
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
