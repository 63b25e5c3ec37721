"""Replays a plan on a testbed: provision agents, run trials, store records.

The run loop is deliberately plain: conditions in plan order, trials within a
condition, all clients of a trial in parallel. Every record is completed
(clock-mapped, labelled, scored) and fsynced the moment its event arrives.
Teardown runs on every path: links closed, jammer stopped, agents' stdin
closed (they tear down themselves) and any straggler killed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console  # noqa: F401 (type of the console argument)
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.config import load_scenario, load_testbed
from hilbed.orchestrator.plan import Plan, Trial, make_plan
from hilbed.orchestrator.run.store import RunStore
from hilbed.orchestrator.ui import make_console
from hilbed.orchestrator.lab.transport import REPO_ROOT, AgentFailed, AgentHandle, LocalTransport, Transport, clock_probe

#: lead time between asking clients to start a trial and the first image's arrival
START_MARGIN_NS = 30_000_000
AGENT_MODULES = {"client": "hilbed.nodes.client", "edge": "hilbed.nodes.edge", "jammer": "hilbed.nodes.jammer"}



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


def make_transport(node: str, cfg: Any) -> Transport:
    t = cfg.transport
    if t.kind == "local":
        return LocalTransport(node, t.python)
    if t.kind == "ssh":
        from hilbed.orchestrator.lab.ssh import SSHTransport  # needs fabric/paramiko
        return SSHTransport(node, t)
    raise RunError(f"node {node}: unknown transport {t.kind!r}")


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
class _Ctx:
    trial: Trial
    condition_fields: dict
    jammer: dict = field(default_factory=dict)


class Runner:
    def __init__(self, testbed_path: str | Path | None = None, scenario_path: str | Path | None = None, *,
                 results_dir: str | Path | None = None, resume_dir: str | Path | None = None,
                 console: Console | None = None, make_report: bool = True, quiet: bool = False):
        self.console = console or make_console()
        self.quiet = quiet
        self.make_report = make_report
        self.handles: dict[tuple[str, str], AgentHandle] = {}
        self.transports: dict[str, Transport] = {}
        self._lock = threading.Lock()
        self._ctx: dict[str, _Ctx] = {}
        self._labels: list[str] = []
        self._progress: Progress | None = None
        self._task = None
        self._records_written = 0
        self.offsets: dict[str, dict] = {}
        self.radio_bench = None
        self._jam_series: list[tuple[int, int, float, float]] = []  # (t_start, t_end, load, mbps), controller ns
        if resume_dir is not None:
            self.store = RunStore(Path(resume_dir))
            if not self.store.manifest_path.exists():
                raise RunError(f"{resume_dir}: not a run directory (no manifest.json)")
            m = self.store.read_manifest()
            self.testbed = load_testbed(m["testbed"]["path"], m["testbed"]["text"])
            self.scenario = load_scenario(m["scenario"]["path"], m["scenario"]["text"])
            self.manifest = m
            self.resuming = True
        else:
            assert testbed_path is not None and scenario_path is not None
            self.testbed = load_testbed(testbed_path)
            self.scenario = load_scenario(scenario_path)
            rd = Path(results_dir) if results_dir else Path(self.testbed.results_dir)
            if not rd.is_absolute() and results_dir is None:
                rd = Path(testbed_path).resolve().parent / rd
            self.store = RunStore.create(rd, self.scenario.name)
            self.manifest = {
                "run_id": self.store.run_id, "state": "created", "hilbed_version": package_versions().get("hilbed"),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "testbed": {"name": self.testbed.name, "path": str(Path(testbed_path).resolve()),
                            "text": Path(testbed_path).read_text(encoding="utf-8"),
                            "parsed": self.testbed.model_dump(mode="json")},
                "scenario": {"name": self.scenario.name, "path": str(Path(scenario_path).resolve()),
                             "text": Path(scenario_path).read_text(encoding="utf-8"),
                             "parsed": self.scenario.model_dump(mode="json")},
                "git": git_facts(), "versions": package_versions(), "host": host_facts(),
                "command": sys.argv,
            }
            self.resuming = False
        self.plan: Plan = make_plan(self.scenario, self.testbed)
        self.manifest["plan"] = {"trials": [t.id for t in self.plan.trials], "images": self.plan.n_images}
        self.store.write_manifest(self.manifest)

    # ------------------------------------------------------------ agents ---
    def _on_event(self, node: str, role: str, msg: dict) -> None:
        kind = msg.get("event")
        if kind == "record":
            self._store_record(node, msg["record"])
        elif kind == "progress":
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, description=f"{node}: {msg.get('what')}: {msg.get('message')}")
        elif kind == "jammer_load":
            self.store.append_event("agent_event", node=node, role=role, event=msg)
            off = self.offsets.get(node, {}).get("before", {}).get("offset_ns", 0)
            with self._lock:
                self._jam_series.append((int(msg["t_start"] * 1e9) - off, int(msg["t_end"] * 1e9) - off,
                                         float(msg["load"]), float(msg["mbps"])))
        elif kind in ("ready",):
            pass
        else:
            self.store.append_event("agent_event", node=node, role=role, event=msg)

    def _start_agents(self) -> None:
        roles_needed = {"client", "edge"}
        if any(c.jamming != "none" or c.jamming_schedule for c in self.scenario.conditions) and self.testbed.jammers:
            if importlib.util.find_spec(AGENT_MODULES["jammer"]) is None:
                raise RunError("the scenario jams but this hilbed has no jammer agent (hilbed.nodes.jammer)")
            roles_needed.add("jammer")
        for node, cfg in self.testbed.nodes.items():
            if node not in self.transports:
                self.transports[node] = make_transport(node, cfg)
            for role in cfg.roles:
                if role not in roles_needed:
                    continue
                proc = self.transports[node].start_agent(AGENT_MODULES[role], [], self.store.logs / f"{node}-{role}.log",
                                                         env=self.agent_env())
                self.handles[(node, role)] = AgentHandle(node, role, proc, self._on_event)
        for h in self.handles.values():
            h.wait_ready(60)

    def agent_env(self) -> dict[str, str]:
        """Environment every agent gets: where the shared (emulated) medium is published."""
        return {"HILBED_MEDIUM_FILE": str(self.medium_file), "HILBED_RUN_ID": self.store.run_id}

    @property
    def medium_file(self) -> Path:
        return self.store.root / "medium.json"

    def agent(self, node: str, role: str) -> AgentHandle:
        return self.handles[(node, role)]

    def _probe_clocks(self, tag: str) -> None:
        for (node, role), h in self.handles.items():
            if role not in ("client", "edge"):
                continue
            r = clock_probe(h)
            self.offsets.setdefault(node, {})[tag] = r
        self.manifest["clock_offsets"] = self.offsets
        self.store.write_manifest(self.manifest)

    def _offset(self, node: str) -> dict:
        o = self.offsets.get(node, {})  # "current": re-measured after a reconnect
        return o.get("current") or o.get("before") or {"offset_ns": 0, "uncertainty_ns": 0}

    # ----------------------------------------------------------- records ---
    def _store_record(self, node: str, raw: dict) -> None:
        ctx = self._ctx.get(raw.get("trial_id"))
        if ctx is None:
            self.store.append_event("stray_record", node=node, record=raw)
            return
        t = ctx.trial
        c_off = self._offset(raw.get("client", node))
        e_off = self._offset(self.testbed.edge)

        def cmap(k: str) -> int | None:
            v = raw.get(k)
            return None if v is None else int(v) - c_off["offset_ns"]

        def emap(k: str) -> int | None:
            v = raw.get(k)
            return None if v is None else int(v) - e_off["offset_ns"]

        label = int(raw["label"])
        top5 = [int(x) for x in raw.get("top5") or []]
        decoded = bool(raw.get("decoded"))
        bytes_total = int(raw["bytes_total"])
        bytes_delivered = int(raw.get("bytes_received", 0) or 0)
        chunks_delivered = int(raw.get("chunks_received", 0) or 0)
        rec = {
            "run_id": self.store.run_id, "trial_id": t.id, "scenario": self.scenario.name,
            "codec": t.codec.codec, "codec_label": t.codec.display,
            "codec_params": json.dumps(t.codec.params, sort_keys=True), **ctx.condition_fields,
            "repetition": t.repetition, "client": raw.get("client", node), "image_index": int(raw["image_index"]),
            "label": label, "bytes_total": bytes_total, "header_bytes": raw.get("header_bytes"),
            "bytes_delivered": bytes_delivered, "wire_bytes_sent": raw.get("wire_bytes_sent"),
            "chunks_total": int(raw["chunks_total"]), "chunks_delivered": chunks_delivered,
            "packets_sent": raw.get("packets_sent"), "packets_lost": raw.get("packets_lost"),
            "retries": raw.get("retries", 0), "rssi_dbm": raw.get("rssi_dbm"),
            "t_arrival_ns": cmap("t_arrival_ns"), "t_encode_start_ns": cmap("t_encode_start_ns"),
            "t_encode_end_ns": cmap("t_encode_end_ns"), "t_tx_start_ns": cmap("t_tx_start_ns"),
            "t_tx_end_ns": cmap("t_tx_end_ns"), "t_rx_end_ns": emap("edge_t_rx_end_ns"),
            "t_edge_close_ns": emap("edge_t_close_ns"), "t_decode_end_ns": emap("edge_t_decode_end_ns"),
            "t_infer_end_ns": emap("edge_t_infer_end_ns"), "t_result_ns": cmap("t_result_ns"),
            "deadline_met": (raw.get("error") is None and bytes_delivered == bytes_total
                             and chunks_delivered == int(raw["chunks_total"])),
            "decoded": decoded, "top1": top5[0] if top5 else None, "top5": top5,
            "top1_prob": (raw.get("top5_prob") or [None])[0],
            "correct1": bool(decoded and top5 and top5[0] == label),
            "correct5": bool(decoded and label in top5),
            **self._jammer_at(cmap("t_arrival_ns"), ctx),
            "client_clock_offset_ns": c_off["offset_ns"], "edge_clock_offset_ns": e_off["offset_ns"],
            "clock_uncertainty_ns": c_off["uncertainty_ns"] + e_off["uncertainty_ns"],
            "close_reason": raw.get("close"), "error": raw.get("error"),
        }
        with self._lock:
            self.store.append_record(rec)
            self._records_written += 1
            if self._progress is not None and self._task is not None:
                self._progress.advance(self._task)

    def _jammer_at(self, t_ns: int | None, ctx: _Ctx) -> dict:
        """Jammer load for an image: the measured 1 s window around its arrival when the
        jammer has reported one (schedules change level mid-condition), else the level's
        measurement taken when the condition started."""
        fallback = {"jammer_load": ctx.jammer.get("load"), "jammer_mbps": ctx.jammer.get("mbps")}
        if t_ns is None or not ctx.jammer:
            return fallback
        with self._lock:
            best = None
            for t0, t1, load, mbps in reversed(self._jam_series):
                if t0 <= t_ns <= t1 + 200_000_000:
                    best = (load, mbps)
                    break
                if t1 < t_ns - 2_000_000_000:
                    break
        return {"jammer_load": best[0], "jammer_mbps": best[1]} if best else fallback

    # --------------------------------------------------------------- run ---
    def _condition_fields(self, trial: Trial) -> dict:
        link = trial.condition.link
        return {"condition": trial.condition.name, "jamming_level": trial.condition.jamming, "link_kind": link.kind,
                "link_rate_kbps": link.rate_kbps, "trace_name": Path(link.trace).name if link.trace else None,
                "link_delay_ms": link.delay_ms, "deadline_ms": trial.deadline_ms,
                "period_ms": self.scenario.stream.period_ms}

    def execute(self) -> RunOutcome:
        from hilbed.orchestrator.run.recovery import RunStopped, resume_done_keys
        t0 = time.monotonic()
        done = resume_done_keys(self.store) if self.resuming else set()
        if self.resuming:
            dropped = self.store.repair_tail()
            self.store.append_event("resumed", done_images=len(done), torn_bytes_dropped=dropped)
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
            self.store.append_event("failed", error=str(exc))
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
            from hilbed.orchestrator.lab.check import preflight
            from hilbed.orchestrator.run.recovery import Recovery
            prog.update(self._task, description="checking nodes")
            preflight(self)  # refuses to start (RunError) while a node fails its checks: nothing runs yet
            if any(c.link.kind == "radio" for c in self.scenario.conditions):
                from hilbed.orchestrator.run.radios import RadioBench
                prog.update(self._task, description="starting radios")
                self.radio_bench = RadioBench(self.testbed, self.medium_file, self.scenario.workload.seed)
                self.manifest["radio_ports"] = self.radio_bench.start()
            self._start_agents()
            edge_cfg = self.testbed.nodes[self.testbed.edge]
            prog.update(self._task, description="loading model on the edge")
            port = self._prepare_edge()
            for c in self.testbed.clients:
                self._prepare_client(c)
            self._probe_clocks("before")
            self.recovery = Recovery(self, port)
            for t, _ in todo:
                self._ctx[t.id] = _Ctx(t, self._condition_fields(t))
            by_cond: dict[str, list] = {}
            for t, rem in todo:
                by_cond.setdefault(t.condition.name, []).append((t, rem))
            for cond_name, items in by_cond.items():
                cond = items[0][0].condition
                try:
                    self._open_links(cond, edge_cfg.address, self.recovery.port)
                    jam = self._set_jamming(cond)
                    for t, rem in items:
                        self._ctx[t.id].jammer = jam
                        prog.update(self._task, description=f"{cond_name} · {t.codec.display} · rep {t.repetition}")
                        self.recovery.run_trial(t, rem, cond)  # reconnects and re-runs on a node drop
                finally:
                    self._stop_jamming()
                    self._close_links()
            self._probe_clocks("after")

    def _prepare_edge(self, port: int | None = None) -> int:
        """Load the model and listen (also after the edge reconnects); returns the port."""
        edge = self.agent(self.testbed.edge, "edge")
        edge_cfg = self.testbed.nodes[self.testbed.edge]
        self.manifest["model"] = edge.call("load", timeout=900, model=self.scenario.workload.model,
                                           device=edge_cfg.device, size=self.scenario.workload.image_size)
        local = all(c.transport.kind == "local" for c in self.testbed.nodes.values())
        if local:  # codecs that fit on first use (GRACE, AutoJPEG, AdaCompress) fit now, not inside a trial
            from hilbed.nodes.codecs import codec_class
            for cc in self.scenario.codecs:
                prep = getattr(codec_class(cc.codec), "prepare", None)
                if callable(prep):
                    prep(cc.params)
        return edge.call("listen", host="127.0.0.1" if local else "0.0.0.0", port=port or edge_cfg.edge_port)["port"]

    def _prepare_client(self, c: str) -> None:
        self.agent(c, "client").call("configure", node=c, dataset=self.scenario.workload.dataset,
                                     size=self.scenario.workload.image_size, seed=self.scenario.workload.seed)

    def _open_links(self, cond, edge_addr: str, port: int) -> None:
        self._link_kind = cond.link.kind
        if cond.link.kind == "radio":
            from hilbed.orchestrator.run.radios import open_radio_links
            open_radio_links(self, cond, edge_addr, port)
            return
        from hilbed.orchestrator.run.conditions import open_links
        open_links(self, cond, edge_addr, port)

    def _close_links(self) -> None:
        from hilbed.orchestrator.run.conditions import close_links
        close_links(self)
        if getattr(self, "_link_kind", None) == "radio":
            from hilbed.orchestrator.run.radios import close_radio_links
            close_radio_links(self)

    def _set_jamming(self, cond) -> dict:
        from hilbed.orchestrator.run.conditions import set_jamming
        return set_jamming(self, cond)

    def _stop_jamming(self) -> None:
        from hilbed.orchestrator.run.conditions import stop_jamming
        stop_jamming(self)

    def _run_trial(self, t: Trial, remaining: dict[str, list[int]]) -> None:
        period = self.scenario.stream.period_ms
        t_call = time.time_ns()
        start_ns = t_call + START_MARGIN_NS  # common start so clients' streams are aligned
        futs = []
        for c, idx in remaining.items():
            if not idx:
                continue
            c_off = self._offset(c)["offset_ns"]
            futs.append(self.agent(c, "client").call_async(
                "run_trial", trial_id=t.id, codec=t.codec.codec, params=t.codec.params, indices=idx,
                period_ms=period, deadline_ms=t.deadline_ms, start_ns=start_ns + c_off))
        budget = 60 + max(len(v) for v in remaining.values()) * (period + t.deadline_ms) / 1000 * 2
        finished, pending = wait_futures(futs, timeout=budget)
        if pending:
            raise AgentFailed(f"trial {t.id} did not finish within {budget:.0f} s")
        for f in finished:
            f.result()  # raise agent errors
        self.store.append_event("trial_done", trial_id=t.id, t_call_ns=t_call, start_ns=start_ns,
                                t_done_ns=time.time_ns(), images=sum(len(v) for v in remaining.values()))

    def _teardown(self) -> None:
        self._stop_jamming()
        try:
            self._close_links()  # removes kernel shaping (tc) on every path
        except Exception:
            pass
        for h in self.handles.values():
            try:
                h.close(timeout=5)
            except Exception:
                pass
        if self.radio_bench is not None:
            self.radio_bench.stop()
        for tr in self.transports.values():
            try:
                tr.close()
            except Exception:
                pass
        self.handles.clear()

    def _finish(self, state: str, wall_s: float) -> RunOutcome:
        from hilbed.analysis.load import dedup, read_jsonl, write_parquet
        from hilbed.analysis.metrics import summary
        records = dedup(read_jsonl(self.store.trials_path))
        write_parquet(records, self.store.root / "results.parquet")
        report = None
        summ = None
        if self.make_report:
            from hilbed.analysis.load import load_run
            from hilbed.analysis.report import build_report
            report = build_report([self.store.root])
            df = load_run(self.store.root)
            summ = summary(df) if len(df) else None
        self.manifest.update(records=len(records), wall_s=round(wall_s, 2))
        self.store.write_manifest(self.manifest)
        return RunOutcome(self.store.root, report, state, len(records), self.plan.n_images, wall_s, summ)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
