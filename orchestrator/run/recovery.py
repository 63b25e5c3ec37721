"""Keeping a run going when a node flaps: reconnect, restart its agents, re-run the trial.

A trial is interrupted when any agent's channel dies during it (the node
rebooted, Wi-Fi dropped, sshd was killed; the SSH watchdog turns a silent
link into a closed channel). Then:

1. the incident is recorded (``events.jsonl``: ``incident`` and
   ``trial_interrupted``),
2. each dead node is reconnected with exponential backoff (tenacity), its
   agents are restarted and brought back to the state the condition needs
   (edge: model loaded and listening; clients: configured, links open;
   jammer: level set), and its clock offset is measured again,
3. the whole trial is re-run. Records are keyed by (trial_id, client,
   image_index) and the store's merge keeps the last one, so the re-run
   supersedes whatever the interrupted attempt wrote: none lost, none
   duplicated in results.parquet, and trials.jsonl still holds everything
   that was measured.

After ``max_incidents`` interruptions, or when a node stays unreachable
through every reconnect attempt, the run stops cleanly (:class:`RunStopped`)
and ``hilbed resume`` continues it later; :func:`resume_done_keys` makes
resume redo trials whose interruption was never recovered.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from hilbed.nodes.events import RunEvent
from hilbed.orchestrator.errors import RunStopped
from hilbed.orchestrator.lab.transport import AgentFailed
from hilbed.orchestrator.run.context import RunContext

log = logging.getLogger("hilbed.reconnect")

try:  # the SSH transport is optional (needs fabric/paramiko)
    from hilbed.orchestrator.lab.ssh import SSHError
except ImportError:  # pragma: no cover
    class SSHError(RuntimeError):  # type: ignore[no-redef]
        pass

RETRYABLE = (SSHError, AgentFailed, OSError, TimeoutError, EOFError)
#: defaults for every run: interruptions tolerated per run, reconnect attempts per incident, backoff (first, max) s
MAX_INCIDENTS = 3
RECONNECT_ATTEMPTS = 6
BACKOFF_S = (0.5, 8.0)


class Recovery:
    """Runs trials with incident handling.

    ``reapply(cond, trial, restarted)`` is the run's way back to a condition's
    state after the agents ``restarted`` [(node, role)] came back (links
    reopened, jamming set again); the roles' prepare steps bring the restarted
    agents themselves back first (model loaded, dataset configured).
    """

    def __init__(self, ctx: RunContext, reapply: Callable[[Any, Any, list], None], *, max_incidents: int | None = None,
                 reconnect_attempts: int | None = None, backoff_s: tuple[float, float] | None = None):
        self.ctx = ctx
        self.reapply = reapply
        self.max_incidents = MAX_INCIDENTS if max_incidents is None else max_incidents
        self.reconnect_attempts = RECONNECT_ATTEMPTS if reconnect_attempts is None else reconnect_attempts
        self.backoff_s = BACKOFF_S if backoff_s is None else backoff_s
        self.incidents = 0

    # -- the wrapped trial ------------------------------------------------
    def run_trial(self, attempt_trial: Callable[[], None], t: Any, cond: Any) -> None:
        """Run ``attempt_trial()``; on a node drop reconnect, restore and run it again."""
        ctx = self.ctx
        attempt = 0
        while True:
            err: Exception | None = None
            try:
                attempt_trial()
            except AgentFailed as exc:
                err = exc
            dead = self.dead_nodes()
            if not dead:
                if err is not None:
                    raise err
                if attempt:
                    ctx.event(RunEvent.TRIAL_RECOVERED, trial_id=t.id, attempts=attempt + 1)
                return
            attempt += 1
            self.incidents += 1
            reasons = {n: self._reason(n) for n in dead}
            ctx.event(RunEvent.INCIDENT, trial_id=t.id, nodes=dead, reasons=reasons, attempt=attempt,
                      error=str(err) if err else "agent channel closed during the trial")
            ctx.event(RunEvent.TRIAL_INTERRUPTED, trial_id=t.id, attempt=attempt)
            ctx.console.print(f"[yellow]incident {self.incidents}/{self.max_incidents}: "
                              f"{', '.join(f'{n} ({r})' for n, r in reasons.items())}: reconnecting[/]")
            if self.incidents > self.max_incidents:
                raise RunStopped(
                    f"stopped after {self.incidents} incidents (limit {self.max_incidents}); the run is saved: "
                    f"`hilbed resume {ctx.store.root}` continues it")
            self.recover(dead, cond, t)

    def dead_nodes(self) -> list[str]:
        return sorted({node for (node, _), h in self.ctx.handles.items() if h.dead.is_set()})

    def _reason(self, node: str) -> str:
        t = self.ctx.transports.get(node)
        why = t.last_error if t is not None else None
        hs = [h for (n, _), h in self.ctx.handles.items() if n == node and h.dead.is_set()]
        return why or (hs[0].death_reason if hs else "") or "channel closed"

    # -- recovery ---------------------------------------------------------
    def recover(self, nodes: list[str], cond: Any, trial: Any = None) -> None:
        """Reconnect ``nodes`` and restore the condition's state; RunStopped when a node stays away."""
        ctx = self.ctx
        t0 = time.monotonic()
        retrying = Retrying(stop=stop_after_attempt(self.reconnect_attempts),
                            wait=wait_exponential(multiplier=self.backoff_s[0], max=self.backoff_s[1]),
                            retry=retry_if_exception_type(RETRYABLE), reraise=True,
                            before_sleep=lambda rs: ctx.event(
                                "reconnect_retry", nodes=nodes, attempt=rs.attempt_number,
                                error=str(rs.outcome.exception()) if rs.outcome else None))
        try:
            for attempt in retrying:
                with attempt:
                    self._restore(nodes, cond, trial)
        except RETRYABLE as exc:
            ctx.event(RunEvent.RECONNECT_FAILED, nodes=nodes, error=str(exc))
            raise RunStopped(
                f"{', '.join(nodes)} still unreachable after {self.reconnect_attempts} attempts ({exc}); the run "
                f"stopped cleanly: `hilbed resume {ctx.store.root}` continues it when the node is back") from None
        ctx.event(RunEvent.RECOVERED, nodes=nodes, seconds=round(time.monotonic() - t0, 3))

    def _restore(self, nodes: list[str], cond: Any, trial: Any) -> None:
        ctx = self.ctx
        restarted: list[tuple[str, str]] = []
        for node in nodes:
            ctx.transport(node).reconnect()
            roles = [role for (n, role) in list(ctx.handles) if n == node]
            handles = [ctx.start_agent(node, role) for role in roles]
            restarted += [(node, role) for role in roles]
            ctx.wait_ready(handles)
        # the edge first: clients' links need its port
        for node, role in sorted(restarted, key=lambda nr: nr[1] != "edge"):
            ctx.prepare(node, role)
        for node in nodes:
            ctx.remeasure_clock(node)
        self.reapply(cond, trial, restarted)


def open_interruptions(store: Any) -> set[str]:
    """Trials whose last interruption was never followed by a recovered attempt (damaged lines are skipped)."""
    state: dict[str, bool] = {}
    for ev in store.events():
        k, tid = ev.get("kind"), ev.get("trial_id")
        if not isinstance(tid, str):
            continue
        if k == "trial_interrupted":
            state[tid] = True
        elif k == "trial_recovered":
            state[tid] = False
    return {tid for tid, open_ in state.items() if open_}


def resume_done_keys(store: Any) -> set[tuple[str, str, int]]:
    """Keys ``hilbed resume`` may skip: finished, and not from a trial left interrupted."""
    bad = open_interruptions(store)
    return {k for k in store.done_keys() if k[0] not in bad}
