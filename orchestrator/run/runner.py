"""Replays a plan on a testbed: provision agents, run trials, store records.

The run loop is deliberately plain: conditions in plan order, trials within a
condition, all clients of a trial in parallel. Every record is completed
(clock-mapped, labelled, scored) and fsynced the moment its event arrives.
Teardown runs on every path: links closed, jammer stopped, agents' stdin
closed (they tear down themselves) and any straggler killed.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console  # noqa: F401 (type of the console argument)
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hilbed.nodes.events import AgentEvent, RunEvent
from hilbed.nodes.record import make_record
from hilbed.orchestrator.config import (
    load_scenario,
    load_testbed,
    recover_config_text,
    redact,
    redact_config_text,
    secret_values,
)
from hilbed.orchestrator.errors import RunError, RunStopped
from hilbed.orchestrator.lab.lease import LeaseSet, default_owner
from hilbed.orchestrator.lab.transport import REPO_ROOT, AgentFailed
from hilbed.orchestrator.pairing import check_pair, with_clients
from hilbed.orchestrator.plan import Plan, Trial, make_plan
from hilbed.orchestrator.roles import ROLES
from hilbed.orchestrator.run.conditions import Conditions
from hilbed.orchestrator.run.context import RunContext
from hilbed.orchestrator.run.inputs import collect_inputs, fill_missing_hashes, unhashed_inputs, verify_inputs
from hilbed.orchestrator.run.ledger import (
    WINDOW_SLACK_NS,
    applied_ledger,
    condition_starts,
    jammer_lapses,
    jammer_windows,
    settle_jammer_loads,
)
from hilbed.orchestrator.run.lock import RunLock
from hilbed.orchestrator.run.preflight import preflight
from hilbed.orchestrator.run.recovery import Recovery, resume_done_keys
from hilbed.orchestrator.run.store import RunStore
from hilbed.orchestrator.ui import make_console

#: lead time between asking clients to start a trial and the first image's arrival
START_MARGIN_NS = 30_000_000
#: seconds of idle power measured per condition on metered clients
POWER_BASELINE_S = 1.0
#: seconds to wait for the clients stopped after another client failed (plus the trial's deadline)
STOP_WAIT_S = 15.0


def git_facts() -> dict:
    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
            return p.stdout.strip() if p.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    status = git("status", "--porcelain")
    return {"sha": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None,
            "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def package_versions() -> dict:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for pkg in ("hilbed", "numpy", "pillow", "torch", "pyserial", "paramiko", "fabric", "pandas", "pyarrow",
                "matplotlib", "pydantic", "pyyaml", "rich"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def host_facts() -> dict:
    return {"hostname": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": sys.executable}


@dataclass
class RunOutcome:
    run_dir: Path
    report: Path | None
    state: str
    records: int
    planned: int
    wall_s: float
    summary: Any = None


@dataclass
class _TrialState:
    trial: Trial
    condition_fields: dict
    jammer: dict = field(default_factory=dict)


class Runner:
    """The trial loop. What the run shares lives in :attr:`ctx` (a :class:`RunContext`)."""

    def __init__(self, testbed_path: str | Path | None = None, scenario_path: str | Path | None = None, *,
                 results_dir: str | Path | None = None, resume_dir: str | Path | None = None,
                 console: Console | None = None, make_report: bool = True, quiet: bool = False,
                 accept_changed_inputs: bool = False, force_unlock: bool = False,
                 conditions: list[str] | None = None):
        self.console = console or make_console()
        self.quiet = quiet
        self.make_report = make_report
        self._lock = threading.Lock()
        self._trials: dict[str, _TrialState] = {}
        self._progress: Progress | None = None
        self._task = None
        self._records_written = 0
        self._jam_series: list[tuple[int, int, float, float]] = []  # (t_start, t_end, load, mbps), controller ns
        self._stale_lock: dict | None = None
        if resume_dir is not None:
            store = RunStore(Path(resume_dir))
            if not store.manifest_path.exists():
                raise RunError(f"{resume_dir}: not a run directory (no manifest.json)")
            store.check_writable()  # a read-only run directory: one line, before the lock is even tried
            self.lock = self._take_lock(store.root, force_unlock)
            try:
                manifest = store.read_manifest()
                testbed = load_testbed(manifest["testbed"]["path"], self._testbed_text(manifest))
                scenario = load_scenario(manifest["scenario"]["path"], manifest["scenario"]["text"])
                testbed = with_clients(testbed, scenario, manifest["testbed"]["path"])
                self._verify_inputs(store, manifest, testbed, scenario, accept_changed_inputs)
            except BaseException:
                self.lock.release()  # a refused resume leaves the directory as it found it
                raise
            self.resuming = True
        else:
            assert testbed_path is not None and scenario_path is not None
            testbed = load_testbed(testbed_path)
            scenario = load_scenario(scenario_path)
            testbed = with_clients(testbed, scenario, str(testbed_path))
            check_pair(testbed, scenario, str(testbed_path))  # before anything is created: nothing to clean up
            make_plan(scenario, testbed)
            rd = Path(results_dir) if results_dir else Path(testbed.results_dir)
            if not rd.is_absolute() and results_dir is None:
                rd = Path(testbed_path).resolve().parent / rd
            store = RunStore.create(rd, scenario.name)
            self.lock = self._take_lock(store.root, force_unlock)
            manifest = {
                "run_id": store.run_id, "state": "created", "hilbed_version": package_versions().get("hilbed"),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                # secrets (SSH env values) never reach the run directory: resume reads them from the file again
                "testbed": {"name": testbed.name, "path": str(Path(testbed_path).resolve()),
                            "text": redact_config_text(Path(testbed_path).read_text(encoding="utf-8"), testbed_path),
                            "parsed": redact(testbed, secret_values(testbed))},
                "scenario": {"name": scenario.name, "path": str(Path(scenario_path).resolve()),
                             "text": Path(scenario_path).read_text(encoding="utf-8"),
                             "parsed": scenario.model_dump(mode="json")},
                "git": git_facts(), "versions": package_versions(), "host": host_facts(),
                "command": sys.argv,
                "inputs": collect_inputs(scenario, testbed, scenario_path),
            }
            self.resuming = False
        self.ctx = RunContext(testbed, scenario, store, manifest, self.console, self._on_event,
                              secrets=secret_values(testbed))
        self.testbed, self.scenario, self.store, self.manifest = testbed, scenario, store, manifest
        self.conditions = Conditions(self.ctx)
        self.recovery: Recovery | None = None
        self.leases: LeaseSet | None = None
        try:
            self.plan: Plan = make_plan(self.scenario, self.testbed)
            # a part of the scenario (one bench's share of a several-testbed run): its trials keep their ids
            only = manifest.get("only_conditions") if self.resuming else conditions
            if only is not None:
                unknown = sorted(set(only) - {c.name for c in self.scenario.conditions})
                if unknown:
                    raise RunError(f"no condition {', '.join(unknown)} in scenario {self.scenario.name}")
                self.plan.trials = [t for t in self.plan.trials if t.condition.name in only]
                manifest["only_conditions"] = list(only)
        except BaseException:
            self.lock.release()
            raise
        self.manifest["plan"] = {"trials": [t.id for t in self.plan.trials], "images": self.plan.n_images}
        self.store.write_manifest(self.manifest)

    @staticmethod
    def _testbed_text(manifest: dict) -> str:
        """The testbed as the run started, secrets included: the stored text has them redacted, so they come
        from the testbed file, which must still redact to exactly the stored text."""
        stored = manifest["testbed"]["text"]
        if "'***'" not in stored:
            return stored
        real = recover_config_text(manifest["testbed"]["path"], stored)
        if real is None:
            raise RunError(f"resume needs the testbed's secrets (SSH env values), which the run directory does not "
                           f"keep: {manifest['testbed']['path']} is gone or changed since the run started")
        return real

    def _take_lock(self, run_dir: Path, force: bool) -> RunLock:
        """The run directory's live lock: a second run/resume on it refuses, naming the owner."""
        lock = RunLock(run_dir, force=force, force_hint="rerun with --force-unlock")
        replaced = lock.acquire()
        if replaced:
            self._stale_lock = replaced  # recorded once the store takes events
        return lock

    def _verify_inputs(self, store: RunStore, manifest: dict, testbed: Any, scenario: Any, accept: bool) -> None:
        """Resume only onto the inputs the run started with (traces, dataset, weights, artifacts)."""
        recorded = manifest.get("inputs")
        if not recorded:
            store.append_event(RunEvent.INPUTS_UNVERIFIED, reason="the run recorded no input hashes (older hilbed)")
            return
        current = collect_inputs(scenario, testbed, manifest["scenario"]["path"])
        unhashed = unhashed_inputs(recorded)
        if unhashed:  # nothing to compare them with: say so instead of passing them as unchanged
            store.append_event(RunEvent.INPUTS_UNVERIFIED, inputs=unhashed,
                               reason="the run could not hash these when it started")
            self.console.print(f"[yellow]resume cannot verify {', '.join(unhashed)}: not hashed when the run "
                               "started[/]")
        problems = verify_inputs(recorded, current)
        if not problems:
            return
        if not accept:
            self.lock.release()
            raise RunError("inputs changed since the run started, resuming would mix conditions: "
                           + "; ".join(problems) + " (--accept-changed-inputs resumes anyway and records it)")
        manifest.setdefault("inputs_overrides", []).append(
            {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "problems": problems, "inputs": current})
        store.append_event(RunEvent.INPUTS_CHANGED, problems=problems, accepted=True)
        self.console.print("[red]resuming with changed inputs (recorded in the manifest): " + "; ".join(problems) + "[/]")

    # ------------------------------------------------------------ agents ---
    def _on_event(self, node: str, role: str, msg: dict) -> None:
        kind = msg.get("event")
        if kind == AgentEvent.RECORD:
            self._store_record(node, msg["record"])
        elif kind == AgentEvent.PROGRESS:
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, description=f"{node}: {msg.get('what')}: {msg.get('message')}")
        elif kind == AgentEvent.JAMMER_LOAD:
            self.ctx.event(RunEvent.AGENT_EVENT, node=node, role=role, event=msg)
            off = self.ctx.offsets.get(node, {}).get("before", {}).get("offset_ns", 0)
            with self._lock:
                self._jam_series.append((int(msg["t_start"] * 1e9) - off, int(msg["t_end"] * 1e9) - off,
                                         float(msg["load"]), float(msg["mbps"])))
        elif kind != AgentEvent.READY:
            self.ctx.event(RunEvent.AGENT_EVENT, node=node, role=role, event=msg)

    def _start_agents(self) -> None:
        """Every node's agents for the roles the scenario needs, then each role's prepare step (edge first)."""
        started = []
        for node, cfg in self.testbed.nodes.items():
            for role in cfg.roles:
                if ROLES[role].is_needed(self.scenario, self.testbed):
                    started.append((node, role, self.ctx.start_agent(node, role)))
        self.ctx.wait_ready([h for _, _, h in started])
        for node, role, _ in sorted(started, key=lambda s: s[1] != "edge"):
            if role == "edge" and self._progress is not None and self._task is not None:
                self._progress.update(self._task, description="loading model on the edge")
            self.ctx.prepare(node, role)

    # ----------------------------------------------------------- records ---
    def _store_record(self, node: str, raw: dict) -> None:
        st = self._trials.get(raw.get("trial_id"))
        if st is None:
            self.ctx.event(RunEvent.STRAY_RECORD, node=node, record=raw)
            return
        t = st.trial
        client = raw.get("client", node)
        c_off = self.ctx.offset(client)
        t_arrival = raw.get("t_arrival_ns")
        rec = make_record(raw, run_id=self.store.run_id, scenario=self.scenario.name, trial_id=t.id,
                          codec=t.codec.codec, codec_label=t.codec.display, codec_params=t.codec.params,
                          repetition=t.repetition, condition_fields=st.condition_fields, client=client,
                          client_offset=c_off, edge_offset=self.ctx.offset(self.testbed.edge),
                          jammer=self._jammer_at(None if t_arrival is None else int(t_arrival) - c_off["offset_ns"], st))
        with self._lock:
            self.store.append_record(rec)
            self._records_written += 1
            if self._progress is not None and self._task is not None:
                self._progress.advance(self._task)

    def _jammer_at(self, t_ns: int | None, st: _TrialState) -> dict:
        """The jammer load for an image as far as measured now: the window covering its arrival. A window is
        reported up to a second after the images it covers, so a missing one is "pending" here and settled
        from events.jsonl when the results are written (:mod:`hilbed.orchestrator.run.ledger`)."""
        if not st.jammer:
            return {}
        if st.jammer.get("level") == "none":
            return {"jammer_load": st.jammer.get("load"), "jammer_mbps": st.jammer.get("mbps")}
        if t_ns is not None:
            with self._lock:
                for t0, t1, load, mbps in reversed(self._jam_series):
                    if t0 <= t_ns <= t1 + WINDOW_SLACK_NS:
                        return {"jammer_load": load, "jammer_mbps": mbps}
                    if t1 < t_ns - 2_000_000_000:
                        break
        return {"jammer_load": None, "jammer_mbps": None, "jammer_note": "pending: no window yet"}

    # --------------------------------------------------------------- run ---
    def _condition_fields(self, trial: Trial) -> dict:
        link = trial.condition.link
        return {"condition": trial.condition.name, "jamming_level": trial.condition.jamming, "link_kind": link.kind,
                "link_rate_kbps": link.rate_kbps, "trace_name": Path(link.trace).name if link.trace else None,
                "link_delay_ms": link.delay_ms, "deadline_ms": trial.deadline_ms,
                "period_ms": self.scenario.stream.period_ms, "n_clients": len(trial.image_indices),
                "testbed": self.testbed.name}

    def execute(self) -> RunOutcome:
        """Run what is left of the plan; the run directory's lock is released on every path."""
        try:
            return self._execute()
        finally:
            self.lock.release()

    def _execute(self) -> RunOutcome:
        t0 = time.monotonic()
        if self._stale_lock:
            self.ctx.event(RunEvent.STALE_LOCK_REPLACED, **self._stale_lock)
        if self.resuming:
            damage = self.store.scan()
            if damage.damaged:  # say what was skipped; resume goes on from what is intact
                self.ctx.event(RunEvent.TRIALS_DAMAGED, **damage.as_dict())
                self.console.print(f"[yellow]{damage.summary()}[/]")
        done = resume_done_keys(self.store) if self.resuming else set()
        if self.resuming:
            dropped = self.store.repair_tail()
            self.ctx.event(RunEvent.RESUMED, done_images=len(done), torn_bytes_dropped=dropped)
        self.manifest.update(state="running", started_at=self.manifest.get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.store.write_manifest(self.manifest)
        old_term = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        state = "failed"
        try:
            self._run_all(done)
            state = "complete"
        except KeyboardInterrupt:
            state = "interrupted"
            self.console.print("[yellow]interrupted: tearing down; `hilbed resume "
                               f"{self.store.root}` finishes the run[/]")
            raise
        except RunStopped:
            state = "stopped"
            raise
        except AgentFailed as exc:
            state = "failed"
            self.ctx.event(RunEvent.FAILED, error=str(exc))
            raise RunError(f"{exc}; agent logs are in {self.store.logs}") from None
        finally:
            self._teardown()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, old_term)
            self.manifest.update(state=state, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            self.store.write_manifest(self.manifest)
            self.store.close()
        return self._finish(state, time.monotonic() - t0)

    def _run_all(self, done: set) -> None:
        todo = [(t, {c: [i for i in idx if (t.id, c, i) not in done] for c, idx in t.image_indices.items()})
                for t in self.plan.trials]
        todo = [(t, rem) for t, rem in todo if any(rem.values())]
        n_todo = sum(len(v) for _, rem in todo for v in rem.values())
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=self.console, disable=self.quiet, transient=False) as prog:
            self._progress = prog
            self._task = prog.add_task("starting agents", total=max(n_todo, 1))
            if not todo:
                prog.update(self._task, completed=1, description="nothing left to do")
                return
            prog.update(self._task, description="leasing nodes")
            self._take_leases()  # before anything touches a node: LeaseHeld names the holder and expiry
            prog.update(self._task, description="checking nodes")
            preflight(self.ctx)  # refuses to start (RunError) while a node fails its checks: nothing runs yet
            prog.update(self._task, description="setting up links")
            self.conditions.setup()  # e.g. radio emulators, before the agents that open their ports
            prog.update(self._task, description="starting agents")
            self._start_agents()
            if not self.resuming:  # inputs made on first use (the default model, fitted artifacts) exist now
                self.manifest["inputs"] = fill_missing_hashes(self.manifest["inputs"], collect_inputs(
                    self.scenario, self.testbed, self.manifest["scenario"]["path"]))
            self.ctx.probe_clocks("before")
            self.ctx.record_host_load("before")
            self.ctx.record_provenance()
            self.recovery = Recovery(self.ctx, self._reapply)
            for t, _ in todo:
                self._trials[t.id] = _TrialState(t, self._condition_fields(t))
            by_cond: dict[str, list] = {}
            for t, rem in todo:
                by_cond.setdefault(t.condition.name, []).append((t, rem))
            for cond_name, items in by_cond.items():
                cond = items[0][0].condition
                try:
                    jam = self.conditions.apply(cond)
                    self._power_baselines(cond)
                    for t, rem in items:
                        self._trials[t.id].jammer = jam
                        prog.update(self._task, description=f"{cond_name} · {t.codec.display} · rep {t.repetition}")
                        # reconnects and re-runs on a node drop
                        self.recovery.run_trial(lambda t=t, rem=rem: self._run_trial(t, rem), t, cond)
                finally:
                    self.conditions.clear()
            self.ctx.probe_clocks("after")
            self.ctx.record_host_load("after")

    def _take_leases(self) -> None:
        """A lease on every lab node the run uses, renewed while it runs, released in teardown."""
        self.leases = LeaseSet(self.testbed, self.ctx.transport, default_owner(self.store.run_id),
                               on_lost=lambda n, why: self.ctx.event(RunEvent.LEASE_LOST, node=n, reason=why))
        self.manifest["leases"] = self.ctx.state["lease"] = self.leases.acquire()
        self.ctx.write_manifest()
        self.leases.start_renewing()

    def _power_baselines(self, cond: Any) -> None:
        """Idle power of every metered client with the condition applied and nothing in flight."""
        for c in self.testbed.clients:
            power = self.testbed.nodes[c].power
            if power is None or power.meter == "none":
                continue
            res = self.ctx.agent(c, "client").call("power_baseline", timeout=30, duration_s=POWER_BASELINE_S)
            self.ctx.event(RunEvent.POWER_BASELINE, node=c, condition=cond.name, result=res)

    def _reapply(self, cond: Any, trial: Any, restarted: list[tuple[str, str]]) -> None:
        """After a reconnect: reopen the condition's links; set jamming again when its agents restarted."""
        self.conditions.close_link()
        self.conditions.open_link(cond)
        if any(role in ("jammer", "edge") for _, role in restarted):
            jam = self.conditions.jamming.set(cond)
            if trial is not None and trial.id in self._trials:
                self._trials[trial.id].jammer = jam

    def _run_trial(self, t: Trial, remaining: dict[str, list[int]]) -> None:
        period = self.scenario.stream.period_ms
        # the edge builds the codec before the stream, as each client does before its first image
        warm = self.ctx.agent(self.testbed.edge, "edge").call("warm_codec", timeout=600, codec=t.codec.codec,
                                                              params=t.codec.params)
        self.ctx.event(RunEvent.CODEC_WARMED, trial_id=t.id, result=warm)
        t_call = time.time_ns()
        start_ns = t_call + START_MARGIN_NS  # common start so clients' streams are aligned
        futs = {}
        for c, idx in remaining.items():
            if not idx:
                continue
            c_off = self.ctx.offset(c)["offset_ns"]
            futs[c] = (self.ctx.agent(c, "client").call_async(
                "run_trial", trial_id=t.id, codec=t.codec.codec, params=t.codec.params, indices=idx,
                period_ms=period, deadline_ms=t.deadline_ms, start_ns=start_ns + c_off))
        budget = 60 + max(len(v) for v in remaining.values()) * (period + t.deadline_ms) / 1000 * 2
        # the first client that fails (its channel died, its agent raised) interrupts the trial at once: recovery
        # reconnects and re-runs what has no record yet; the others' records of this trial are kept, by their keys
        finished, pending = wait_futures(futs.values(), timeout=budget, return_when=FIRST_EXCEPTION)
        failed = [f for f in finished if f.exception() is not None]
        if failed:
            self._stop_clients([c for c, f in futs.items() if f in pending], pending, t)
            raise failed[0].exception()
        if pending:
            raise AgentFailed(f"trial {t.id} did not finish within {budget:.0f} s")
        self.ctx.event(RunEvent.TRIAL_DONE, trial_id=t.id, t_call_ns=t_call, start_ns=start_ns,
                                t_done_ns=time.time_ns(), images=sum(len(v) for v in remaining.values()))

    def _stop_clients(self, clients: list[str], pending: set, t: Trial) -> None:
        """Stop the trial on clients still streaming after another failed, and wait for their last replies:
        the re-run must not overlap them. What they stored stays (the re-run supersedes it key by key)."""
        for c in clients:
            h = self.ctx.live_agent(c, "client")
            if h is not None:
                try:
                    h.call("abort", timeout=5)
                except Exception:  # a second casualty: recovery handles it with the first
                    pass
        wait_futures(pending, timeout=STOP_WAIT_S + t.deadline_ms / 1000)
        self.ctx.event(RunEvent.TRIAL_CLIENTS_STOPPED, trial_id=t.id, stopped=clients)

    def _teardown(self) -> None:
        self.conditions.teardown()  # links closed, jammer stopped, kernel shaping removed, emulators stopped
        if self.leases is not None:
            self.leases.release()
        self.ctx.close()

    def _finish(self, state: str, wall_s: float) -> RunOutcome:
        from hilbed.analysis.metrics import summary
        records = self.store.merged_records()
        events = list(self.store.events())  # read once; damaged lines are skipped and counted by the store
        windows = jammer_windows(events, self.manifest.get("clock_offsets", {}))
        records, unapplied = settle_jammer_loads(records, self.scenario, windows, condition_starts(events),
                                                 jammer_lapses(events))
        self.manifest["applied"] = applied_ledger(events, self.store.logs, self.scenario, windows, records)
        n_records = self.store.write_results(records)
        if unapplied:
            self.manifest["unapplied"] = unapplied
            if state == "complete":
                state = "complete_unapplied"
                self.manifest["state"] = state
            for u in unapplied:
                self.console.print(f"[bold red]condition {u['condition']}: {u['what']} not applied as asked for "
                                   f"{u['records']} image(s): {u['reason']}[/]")
        self.manifest.update(records=n_records, wall_s=round(wall_s, 2))
        self.store.write_manifest(self.manifest)  # before the report, which reads it
        report = None
        summ = None
        if self.make_report:
            from hilbed.analysis.load import load_run
            from hilbed.analysis.report import build_report
            report = build_report([self.store.root])
            df = load_run(self.store.root)
            summ = summary(df) if len(df) else None
        return RunOutcome(self.store.root, report, state, n_records, self.plan.n_images, wall_s, summ)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
