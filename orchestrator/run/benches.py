"""One run spread over several testbeds (benches): each condition measured on one bench, one run directory.

Why: a lab with two copies of its bench finishes a scenario in about half the time, and a bench that breaks
costs a retry on another bench instead of the run. The unit of work is a *part*: a condition, or the
conditions that share a ``bench_group`` (comparisons that need the same hardware). A part is an ordinary
:class:`~hilbed.orchestrator.run.runner.Runner` run restricted to its conditions, in
``<run>/parts/<bench>/<part-id>/`` with its own manifest, events, logs and ledger; trial ids do not depend on
which conditions a part holds, so the parent's records are the trials a one-bench run would have made.

The parent run directory holds ``manifest.json`` (the benches, the plan, and an assignment table
``{condition: {testbed, part_dir, state, ...}}``), ``events.jsonl`` (parts started, finished, retried),
``trials.jsonl`` (every finished part's records, each naming its testbed) and ``results.parquet``.

Placement: every bench can take one part at a time. Parts are placed in plan order on the first free bench
(a part that failed on a bench is placed on another one). ``local`` runs the placed parts one after another
in this process; ``ray`` runs each as a Ray task that needs 1 of the bench's custom resource
``hilbed-bench-<name>`` (capacity 1), so two parts never share a bench.

A part that fails is retried once on another bench; if none is left the run stops (state ``stopped``) and
``hilbed resume PARENT`` resumes every unfinished part on the bench it was assigned to.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hilbed.nodes.events import RunEvent
from hilbed.orchestrator.config import load_scenario, load_testbed, redact_config_text
from hilbed.orchestrator.errors import RunError, RunStopped
from hilbed.orchestrator.pairing import check_pair, with_clients
from hilbed.orchestrator.plan import make_plan
from hilbed.orchestrator.run.lock import RunLock
from hilbed.orchestrator.run.store import RunStore
from hilbed.orchestrator.ui import make_console

#: a bench's Ray custom resource is this prefix + the testbed's name (capacity 1: one part at a time)
RESOURCE_PREFIX = "hilbed-bench-"
#: the manifest key that marks a parent run (``hilbed resume`` looks for it)
BENCHES_KEY = "benches"
DONE_STATES = ("complete", "complete_unapplied")
#: how many times a failed part is placed on another bench
RETRIES = 1
EXECUTORS = ("local", "ray")

# the parent's events.jsonl kinds
PART_STARTED, PART_FINISHED, PART_RETRIED = (RunEvent.BENCH_PART_STARTED, RunEvent.BENCH_PART_FINISHED,
                                             RunEvent.BENCH_PART_RETRIED)


def bench_resource(name: str) -> str:
    return RESOURCE_PREFIX + name


def is_bench_run(run_dir: str | Path) -> bool:
    """True when ``run_dir`` is a parent run (its manifest lists benches); False for anything else."""
    try:
        m = json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and BENCHES_KEY in m


def _line(exc: BaseException) -> str:
    """An exception as one line (ConfigError's own one-line form when it has one)."""
    text = exc.one_line() if hasattr(exc, "one_line") else str(exc)
    first = (text.strip().splitlines() or [""])[0]
    return first if isinstance(exc, RunError) or hasattr(exc, "one_line") else f"{type(exc).__name__}: {first}"


def _children(d: Path) -> set[str]:
    try:
        return {p.name for p in d.iterdir() if p.is_dir()}
    except OSError:
        return set()


def _new_child(d: Path, before: set[str]) -> Path | None:
    """The run directory a part created under ``d`` since ``before`` (one part at a time per bench)."""
    new = sorted(_children(d) - before)
    return d / new[-1] if new else None


def _adopt(d: Path, conditions: list[str], exclude: list[str]) -> Path | None:
    """A part run of exactly these conditions already under ``d`` (the coordinator died before it learnt its
    directory): the newest one not excluded. Runs on the bench's host, so it works without a shared disk."""
    found = []
    for name in sorted(_children(d)):
        p = d / name
        if str(p) in exclude:
            continue
        try:
            m = json.loads((p / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("only_conditions") == list(conditions):
            found.append(p)
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------- a part ---

def run_part(spec: dict, console: Console | None = None) -> dict:
    """One part on one bench, in this process or a Ray worker: a Runner restricted to the part's conditions
    (or the resume of its directory). Never raises for a failed run: the state and a one-line error come back,
    with the part's records (jammer loads settled as in its own results) when it finished."""
    from hilbed.orchestrator.run.runner import Runner
    t0 = time.monotonic()
    root = Path(spec["results_dir"])
    before = _children(root)
    part_dir = spec.get("resume_dir")
    if part_dir is None and spec.get("adopt"):
        adopted = _adopt(root, spec["conditions"], spec.get("exclude") or [])
        part_dir = str(adopted) if adopted else None
    out: dict[str, Any] = {"part_dir": part_dir, "state": "failed", "records": [], "n_records": 0, "planned": None,
                           "applied": {}, "unapplied": [], "error": None, "host": os.uname().nodename}
    try:
        if part_dir is not None:
            runner = Runner(resume_dir=part_dir, quiet=True, make_report=False, console=console,
                            accept_changed_inputs=bool(spec.get("accept_changed_inputs")))
        else:
            runner = Runner(spec["testbed"], spec["scenario"], results_dir=root, conditions=list(spec["conditions"]),
                            make_report=False, quiet=True, console=console)
        res = runner.execute()
        out.update(part_dir=str(res.run_dir), state=res.state, planned=res.planned)
    except RunStopped as exc:
        out.update(state="stopped", error=_line(exc))
    except Exception as exc:  # noqa: BLE001 - a part's failure is data for the coordinator, never a crash of it
        out.update(state="failed", error=_line(exc))
    if out["part_dir"] is None:
        found = _new_child(root, before)
        out["part_dir"] = str(found) if found else None
    if out["part_dir"] is not None:
        try:
            if out["state"] in DONE_STATES:
                out.update(_harvest(Path(out["part_dir"]), spec["conditions"]))
            else:
                out["n_records"] = len(RunStore(Path(out["part_dir"])).done_keys())
        except Exception as exc:  # noqa: BLE001
            out.update(state="failed", records=[], error=f"cannot read the part's results: {_line(exc)}")
    out["wall_s"] = round(time.monotonic() - t0, 2)
    return out


def _harvest(part_dir: Path, conditions: list[str]) -> dict:
    """A finished part's records with the jammer loads settled from its own events (as its results.parquet)."""
    from hilbed.orchestrator.run.ledger import condition_starts, jammer_lapses, jammer_windows, settle_jammer_loads
    store = RunStore(part_dir)
    m = store.read_manifest()
    scenario = load_scenario(m["scenario"]["path"], m["scenario"]["text"])
    events = list(store.events())
    records, _ = settle_jammer_loads(store.merged_records(), scenario,
                                     jammer_windows(events, m.get("clock_offsets", {})),
                                     condition_starts(events), jammer_lapses(events))
    applied = m.get("applied") or {}
    return {"records": records, "n_records": len(records), "planned": (m.get("plan") or {}).get("images"),
            "applied": {c: applied.get(c) for c in conditions},
            "unapplied": [u for u in m.get("unapplied") or [] if isinstance(u, dict)]}


# ------------------------------------------------------------------------------------ executors ---

class _LocalPool:
    """Placed parts run one after another in this process (no Ray): the same placement as on Ray."""

    def __init__(self, part_fn: Callable, console: Console, on_start: Callable[[str], None]):
        self.part_fn, self.console, self.on_start = part_fn, console, on_start
        self.queue: list[tuple[str, dict]] = []
        self.current: str | None = None

    def in_flight(self) -> list[str]:
        return [k for k, _ in self.queue] + ([self.current] if self.current else [])

    def submit(self, key: str, bench: str, spec: dict) -> None:
        self.queue.append((key, spec))

    def wait_one(self, timeout: float) -> tuple[str, dict] | None:
        key, spec = self.queue.pop(0)
        self.current = key
        self.on_start(key)
        res = self.part_fn(spec, console=self.console) if self.part_fn is run_part else self.part_fn(spec)
        self.current = None
        return key, res

    def interrupt(self) -> list[tuple[str, dict | None]]:
        """What was in flight at Ctrl-C: the running part (interrupted) and the queued ones (never started)."""
        out: list[tuple[str, dict | None]] = [(self.current, {"state": "interrupted"})] if self.current else []
        out += [(k, None) for k, _ in self.queue]
        self.queue, self.current = [], None
        return out

    def close(self) -> None:
        pass


class _RayPool:
    """Each part a Ray task holding 1 of its bench's resource; a local Ray is started (and stopped) when no
    cluster address is given, with one resource per bench."""

    def __init__(self, part_fn: Callable, benches: list[str], address: str | None, num_cpus: int | None,
                 on_start: Callable[[str], None]):
        from hilbed.orchestrator.scale.executor import ExecutorError, start_ray
        ray = _require_ray()
        self.ray, self.on_start = ray, on_start
        self.refs: dict[Any, str] = {}
        need = {bench_resource(b): 1 for b in benches}
        try:
            self.started = start_ray(address, num_cpus or max(1, len(benches)), resources=need)
        except ExecutorError as exc:
            raise RunError(str(exc)) from None
        have = ray.cluster_resources()
        missing = [r for r in need if have.get(r, 0) < 1]
        if missing:
            self.close()
            raise RunError(f"the Ray cluster has no {', '.join(missing)}: start each bench's Ray node with "
                           f"`ray start --address ... --resources '{{\"{missing[0]}\": 1}}'` (docs/scale.md)")
        self.remote = ray.remote(part_fn)

    def in_flight(self) -> list[str]:
        return list(self.refs.values())

    def submit(self, key: str, bench: str, spec: dict) -> None:
        # the bench resource is what is scarce: the controller work of a part is I/O, its agents run on the bench
        ref = self.remote.options(num_cpus=0, resources={bench_resource(bench): 1}, max_retries=0).remote(spec)
        self.refs[ref] = key
        self.on_start(key)

    def _get(self, ref) -> dict:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.TaskCancelledError:
            return {"state": "interrupted", "error": "cancelled"}
        except self.ray.exceptions.RayError as exc:  # the worker died, the node left the cluster
            return {"state": "failed", "error": f"Ray task failed: {_line(exc)}"}

    def wait_one(self, timeout: float) -> tuple[str, dict] | None:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if not ready:
            return None
        key = self.refs.pop(ready[0])
        return key, self._get(ready[0])

    def interrupt(self) -> list[tuple[str, dict | None]]:
        """Cancel every part (each tears its bench down and ends ``interrupted``) and collect what they say."""
        for ref in self.refs:
            try:
                self.ray.cancel(ref)
            except Exception:  # noqa: BLE001
                pass
        out: list[tuple[str, dict | None]] = []
        deadline = time.monotonic() + 60  # each part tears its bench down first
        for ref, key in list(self.refs.items()):
            try:
                ready, _ = self.ray.wait([ref], timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001
                ready = []
            res = self._get(ref) if ready else {}
            out.append((key, {**res, "state": "interrupted"}))
        self.refs.clear()
        return out

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False


def _require_ray():
    """The ray module, or RunError with the install hint."""
    from hilbed.orchestrator.scale.executor import ExecutorError, require_ray
    try:
        return require_ray()
    except ExecutorError as exc:
        raise RunError(str(exc)) from None


# ----------------------------------------------------------------------------------- the coordinator ---

@dataclass
class _Bench:
    name: str
    path: str
    images: dict[str, int]  # condition -> images planned on this bench (its clients)
    text: str = ""


@dataclass
class _Part:
    """One unit of work and where it stands (the manifest's assignment rows of its conditions)."""

    key: str
    conditions: list[str]
    bench: str | None = None
    part_dir: str | None = None  # relative to the parent run directory
    state: str = "pending"
    records: int | None = None
    wall_s: float | None = None
    error: str | None = None
    attempts: list[dict] = field(default_factory=list)
    applied: dict = field(default_factory=dict)
    unapplied: list = field(default_factory=list)
    # this session only
    pin: str | None = None  # resume on this bench
    resume_dir: str | None = None
    adopt: bool = False
    snapshot: set = field(default_factory=set)

    @property
    def tried(self) -> set[str]:
        return {a["testbed"] for a in self.attempts if a.get("testbed")}

    @property
    def retries(self) -> int:
        return sum(1 for a in self.attempts if a.get("then") == "retried")

    def row(self) -> dict:
        return {"unit": self.key, "testbed": self.bench, "part_dir": self.part_dir, "state": self.state,
                "records": self.records, "wall_s": self.wall_s, "error": self.error, "attempts": self.attempts}


def plan_parts(scenario: Any) -> list[_Part]:
    """Conditions in scenario order; those sharing a ``bench_group`` form one part (at its first condition)."""
    parts: list[_Part] = []
    groups: dict[str, _Part] = {}
    for c in scenario.conditions:
        g = getattr(c, "bench_group", None)
        if g is None:
            parts.append(_Part(c.name, [c.name]))
        elif g in groups:
            groups[g].conditions.append(c.name)
        else:
            groups[g] = _Part(f"bench_group {g}", [c.name])
            parts.append(groups[g])
    return parts


class BenchRun:
    """The coordinator of a run over several testbeds (see the module docstring)."""

    def __init__(self, testbed_paths: list[str | Path] | None = None, scenario_path: str | Path | None = None, *,
                 results_dir: str | Path | None = None, resume_dir: str | Path | None = None,
                 executor: str | None = None, ray_address: str | None = None, ray_num_cpus: int | None = None,
                 console: Console | None = None, quiet: bool = False, make_report: bool = True,
                 accept_changed_inputs: bool = False, force_unlock: bool = False, part_fn: Callable = run_part):
        self.console = console or make_console()
        self.quiet, self.make_report, self.part_fn = quiet, make_report, part_fn
        self.accept_changed_inputs = accept_changed_inputs
        self.ray_address, self.ray_num_cpus = ray_address, ray_num_cpus
        self._lock = threading.Lock()
        self.message: str | None = None
        if resume_dir is not None:
            self._open(Path(resume_dir), executor, force_unlock)
        else:
            assert testbed_paths and scenario_path is not None
            self._create([Path(p) for p in testbed_paths], Path(scenario_path), results_dir, executor or "local",
                         force_unlock)

    # ------------------------------------------------------------------ setup ---
    def _load_benches(self, paths: list[Path], scenario: Any) -> list[_Bench]:
        """Every testbed checked against the whole scenario (a part's Runner checks it too): one line naming the
        testbed that cannot run a condition."""
        benches: list[_Bench] = []
        seen: dict[str, Path] = {}
        for p in paths:
            tb = with_clients(load_testbed(p), scenario, str(p))
            check_pair(tb, scenario, str(p))
            if tb.name in seen:
                raise RunError(f"testbeds {seen[tb.name]} and {p} are both named {tb.name}: each bench needs its "
                               "own name (it names the records, the part directories and the Ray resource)")
            seen[tb.name] = p
            images: dict[str, int] = {}
            for t in make_plan(scenario, tb).trials:
                images[t.condition.name] = images.get(t.condition.name, 0) + t.n_images
            benches.append(_Bench(tb.name, str(p.resolve()), images,
                                  redact_config_text(p.read_text(encoding="utf-8"), p)))
        return benches

    def _create(self, paths: list[Path], scenario_path: Path, results_dir: str | Path | None, executor: str,
                force_unlock: bool) -> None:
        from hilbed.orchestrator.run.runner import git_facts, host_facts, package_versions
        if executor not in EXECUTORS:
            raise RunError(f"unknown executor {executor!r} (allowed: {', '.join(EXECUTORS)})")
        if executor == "ray":
            _require_ray()  # before anything is created
        self.scenario = load_scenario(scenario_path)
        self.benches = self._load_benches(paths, self.scenario)
        self.parts = plan_parts(self.scenario)
        first = load_testbed(paths[0])
        rd = Path(results_dir) if results_dir else Path(first.results_dir)
        if not rd.is_absolute() and results_dir is None:
            rd = paths[0].resolve().parent / rd
        self.store = RunStore.create(rd, self.scenario.name)
        self.lock = RunLock(self.store.root, force=force_unlock, force_hint="rerun with --force-unlock")
        self.lock.acquire()
        trials = make_plan(self.scenario, with_clients(first, self.scenario, str(paths[0]))).trials
        self.executor = executor
        self.resuming = False
        self.manifest = {
            "run_id": self.store.run_id, "state": "created", "hilbed_version": package_versions().get("hilbed"),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "executor": executor,
            BENCHES_KEY: [{"name": b.name, "path": b.path, "resource": bench_resource(b.name), "text": b.text,
                           "images": b.images} for b in self.benches],
            "testbed": {"name": ", ".join(b.name for b in self.benches)},
            "scenario": {"name": self.scenario.name, "path": str(scenario_path.resolve()),
                         "text": scenario_path.read_text(encoding="utf-8"),
                         "parsed": self.scenario.model_dump(mode="json")},
            "git": git_facts(), "versions": package_versions(), "host": host_facts(), "command": sys.argv,
            "plan": {"trials": [t.id for t in trials], "images": 0},
            "units": [{"key": p.key, "conditions": p.conditions} for p in self.parts],
        }
        self._write_manifest()

    def _open(self, root: Path, executor: str | None, force_unlock: bool) -> None:
        """A parent run to resume: every unfinished part goes back to the bench it was assigned to."""
        self.store = RunStore(root)
        if not self.store.manifest_path.exists():
            raise RunError(f"{root}: not a run directory (no manifest.json)")
        self.store.check_writable()
        self.lock = RunLock(root, force=force_unlock, force_hint="rerun with --force-unlock")
        self.lock.acquire()
        try:
            m = self.manifest = self.store.read_manifest()
            if BENCHES_KEY not in m:
                raise RunError(f"{root} is a one-testbed run: `hilbed resume` resumes it as such")
            self.executor = executor or m.get("executor", "local")
            if self.executor not in EXECUTORS:
                raise RunError(f"unknown executor {self.executor!r} (allowed: {', '.join(EXECUTORS)})")
            if self.executor == "ray":
                _require_ray()
            self.scenario = load_scenario(m["scenario"]["path"], m["scenario"]["text"])
            self.benches = [_Bench(b["name"], b["path"], dict(b.get("images") or {}), b.get("text", ""))
                            for b in m[BENCHES_KEY]]
            self._check_bench_files()
            rows = m.get("assignment") or {}
            self.parts = []
            for u in m["units"]:
                p = _Part(u["key"], list(u["conditions"]))
                r = rows.get(p.conditions[0]) or {}
                p.bench, p.part_dir, p.state = r.get("testbed"), r.get("part_dir"), r.get("state", "pending")
                p.records, p.wall_s, p.error = r.get("records"), r.get("wall_s"), r.get("error")
                p.attempts = list(r.get("attempts") or [])
                p.applied = {c: (m.get("applied") or {}).get(c) for c in p.conditions}
                p.unapplied = list(r.get("unapplied") or [])
                if p.state not in DONE_STATES:
                    self._prepare_resume(p)
                self.parts.append(p)
        except BaseException:
            self.lock.release()
            raise
        self.resuming = True

    def _check_bench_files(self) -> None:
        """A part started now reads its testbed file: it must be the testbed the run started with."""
        for b in self.benches:
            try:
                now = redact_config_text(Path(b.path).read_text(encoding="utf-8"), b.path)
            except OSError as exc:
                raise RunError(f"testbed {b.name}: cannot read {b.path} ({exc.strerror or exc}): the run's "
                               "unfinished parts need it") from None
            if now != b.text and not self.accept_changed_inputs:
                raise RunError(f"testbed {b.name} ({b.path}) changed since the run started; resuming would mix "
                               "benches (--accept-changed-inputs resumes anyway)")

    def _prepare_resume(self, p: _Part) -> None:
        if p.bench is None or p.state == "retried":
            p.bench, p.state = None, "pending"  # never started (or waiting for another bench): placed afresh
            return
        p.pin = p.bench
        if p.part_dir and (self.store.root / p.part_dir / "manifest.json").exists():
            p.resume_dir = str(self.store.root / p.part_dir)
        else:  # placed, but the coordinator never learnt its directory: the bench's task looks for it
            p.adopt = True

    # ---------------------------------------------------------------- manifest ---
    def _bench(self, name: str) -> _Bench:
        return next(b for b in self.benches if b.name == name)

    def _planned(self) -> int:
        """Images planned: each condition on the bench it ran (or is to run) on; unplaced ones on the first."""
        n = 0
        for p in self.parts:
            b = self._bench(p.bench) if p.bench else self.benches[0]
            n += sum(b.images.get(c, 0) for c in p.conditions)
        return n

    def _write_manifest(self, **fields: Any) -> None:
        with self._lock:
            m = self.manifest
            m.update(fields)
            m["assignment"] = {c: {**p.row(), **({"unapplied": [u for u in p.unapplied if u.get("condition") == c]}
                                                  if p.unapplied else {})}
                               for p in self.parts for c in p.conditions}
            m["plan"]["images"] = self._planned()
            self.store.write_manifest(m)

    # ----------------------------------------------------------------- running ---
    def execute(self):
        """Place and run every unfinished part; the parent's lock is released on every path."""
        try:
            return self._execute()
        finally:
            self.lock.release()
            self.store.close()

    def _execute(self):
        from hilbed.orchestrator.run.runner import RunOutcome
        t0 = time.monotonic()
        self._display = _Display(self, self.console, self.quiet)
        state = "failed"
        self._write_manifest(state="running", started_at=self.manifest.get("started_at")
                             or time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        pool: Any = None
        try:
            if self.executor == "ray":
                try:
                    pool = _RayPool(self.part_fn, [b.name for b in self.benches], self.ray_address,
                                    self.ray_num_cpus, self._started)
                except RunError as exc:
                    self.manifest["error"] = str(exc)
                    raise
            else:
                pool = _LocalPool(self.part_fn, self.console, self._started)
            self._display.start()
            try:
                state = self._loop(pool)
            except KeyboardInterrupt:
                self._interrupted(pool)
                state = "interrupted"
                raise
        finally:
            self._display.stop()
            if pool is not None:
                pool.close()
            if state == "interrupted":
                self._write_manifest(state=state, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                self.console.print(f"[yellow]interrupted: `hilbed resume {self.store.root}` finishes every part on "
                                   "its bench[/]", soft_wrap=True)
            elif state == "failed":
                self._write_manifest(state=state, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        return self._finish(state, time.monotonic() - t0, RunOutcome)

    def _started(self, key: str) -> None:
        p = next(p for p in self.parts if p.key == key)
        p.state = "running"
        self.store.append_event(PART_STARTED, unit=key, conditions=p.conditions, testbed=p.bench,
                                resume=p.part_dir)
        self._write_manifest()
        self._display.started(p)

    def _place(self, p: _Part, busy: set[str]) -> str | None:
        if p.pin is not None:
            return p.pin if p.pin not in busy else None
        return next((b.name for b in self.benches if b.name not in busy and b.name not in p.tried), None)

    def _spec(self, p: _Part, bench: str) -> dict:
        b = self._bench(bench)
        return {"testbed": b.path, "scenario": self.manifest["scenario"]["path"], "conditions": p.conditions,
                "results_dir": str(self.store.root / "parts" / bench), "resume_dir": p.resume_dir,
                "adopt": p.adopt, "exclude": [str(self.store.root / a["part_dir"]) for a in p.attempts
                                              if a.get("part_dir")],
                "accept_changed_inputs": self.accept_changed_inputs}

    def _loop(self, pool: Any) -> str:
        queue = [p for p in self.parts if p.state not in DONE_STATES]
        busy: dict[str, _Part] = {}
        stopped: list[_Part] = []
        while True:
            if not stopped:
                for p in list(queue):
                    bench = self._place(p, set(busy))
                    if bench is None:
                        continue
                    queue.remove(p)
                    busy[bench] = p
                    p.bench, p.state, p.error = bench, "queued", None
                    p.snapshot = _children(self.store.root / "parts" / bench)
                    (self.store.root / "parts" / bench).mkdir(parents=True, exist_ok=True)
                    pool.submit(p.key, bench, self._spec(p, bench))
                    self._write_manifest()
            if not pool.in_flight():
                break
            got = pool.wait_one(timeout=0.5)
            if got is None:
                continue
            key, res = got
            p = next(p for p in self.parts if p.key == key)
            busy.pop(p.bench, None)
            if self._finished(p, res, queue):
                continue
            stopped.append(p)
        if stopped:
            return "stopped"
        return "complete"

    def _finished(self, p: _Part, res: dict, queue: list[_Part]) -> bool:
        """Merge a finished part, or place it on another bench; False when it failed for good."""
        pdir = res.get("part_dir") or (str(found) if (found := self._found_dir(p)) else None)
        p.part_dir = os.path.relpath(pdir, self.store.root) if pdir else p.part_dir
        p.state, p.wall_s, p.error = res.get("state", "failed"), res.get("wall_s"), res.get("error")
        p.pin = p.resume_dir = None
        p.adopt = False
        self.store.append_event(PART_FINISHED, unit=p.key, testbed=p.bench, part_dir=p.part_dir, state=p.state,
                                records=res.get("n_records"), error=p.error, host=res.get("host"))
        if p.state in DONE_STATES:
            name = self.store.run_id
            for r in res.get("records") or []:
                r = {**r, "run_id": name}  # one run: the part directory is in the assignment table
                r.setdefault("testbed", p.bench)
                self.store.append_record(r)
            p.records = int(res.get("n_records") or 0)
            p.applied = dict(res.get("applied") or {})
            p.unapplied = list(res.get("unapplied") or [])
            self._write_manifest(applied={**(self.manifest.get("applied") or {}), **p.applied})
            self._display.finished(p, res)
            return True
        p.records = res.get("n_records")
        others = [b.name for b in self.benches if b.name not in p.tried | {p.bench}]
        self._display.finished(p, res)
        if p.retries < RETRIES and others:
            p.attempts.append({"testbed": p.bench, "part_dir": p.part_dir, "state": p.state, "error": p.error,
                               "records": p.records, "wall_s": p.wall_s, "then": "retried"})
            self.store.append_event(PART_RETRIED, unit=p.key, failed_on=p.bench, error=p.error)
            self._display.say(f"[yellow]{', '.join(p.conditions)}: {p.state} on {p.bench} ({p.error}); "
                              f"retrying on another bench[/]", always=True)
            p.bench, p.part_dir, p.state, p.records, p.wall_s = None, None, "retried", None, None
            queue.insert(0, p)
            self._write_manifest()
            return True
        self._write_manifest()
        return False

    def _found_dir(self, p: _Part) -> Path | None:
        if p.resume_dir:
            return Path(p.resume_dir)
        return _new_child(self.store.root / "parts" / p.bench, p.snapshot) if p.bench else None

    def _interrupted(self, pool: Any) -> None:
        """Ctrl-C: every started part is interrupted (resumable on its bench), queued ones were never started."""
        for key, res in pool.interrupt():
            p = next(p for p in self.parts if p.key == key)
            if res is None:
                p.bench, p.state = None, "pending"
                continue
            pdir = res.get("part_dir") or (str(found) if (found := self._found_dir(p)) else None)
            if pdir:
                p.part_dir = os.path.relpath(pdir, self.store.root)
            p.state = "interrupted"
            self.store.append_event(PART_FINISHED, unit=p.key, testbed=p.bench, part_dir=p.part_dir,
                                    state="interrupted")

    # ------------------------------------------------------------------ finish ---
    def _finish(self, state: str, wall_s: float, outcome_cls: Any):
        from hilbed.analysis.metrics import summary
        records = self.store.merged_records()
        n = self.store.write_results(records)
        unapplied = [u for p in self.parts if p.state in DONE_STATES for u in p.unapplied]
        if unapplied:
            self.manifest["unapplied"] = unapplied
            if state == "complete":
                state = "complete_unapplied"
        if state == "stopped":
            bad = [p for p in self.parts if p.state in ("failed", "stopped")]
            what = "; ".join(f"{', '.join(p.conditions)} {p.state} on {p.bench} ({p.error})" for p in bad[:3])
            self.message = (f"run stopped: {what}; finished parts are kept: fix the bench, then "
                            f"`hilbed resume {self.store.root}`")
        self._write_manifest(state=state, records=n, wall_s=round(wall_s, 2),
                             finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if state != "interrupted":
            self._summary_table()
        if self.message:
            self.console.print(f"[bold red]{self.message}[/]", soft_wrap=True)
        report = summ = None
        if self.make_report and n and state != "interrupted":
            from hilbed.analysis.load import load_run
            from hilbed.analysis.report import build_report
            report = build_report([self.store.root])
            df = load_run(self.store.root)
            summ = summary(df) if len(df) else None
        return outcome_cls(self.store.root, report, state, n, self._planned(), wall_s, summ)

    def rows(self) -> list[dict]:
        """The summary table's rows: every attempt of every part, in plan order."""
        out = []
        for p in self.parts:
            for a in p.attempts:
                out.append({"bench": a.get("testbed"), "conditions": ", ".join(p.conditions),
                            "records": a.get("records"), "state": f"{a.get('state')}, retried",
                            "wall_s": a.get("wall_s")})
            out.append({"bench": p.bench, "conditions": ", ".join(p.conditions), "records": p.records,
                        "state": p.state, "wall_s": p.wall_s})
        return out

    def _summary_table(self) -> None:
        if self.quiet:
            return
        t = Table(title=f"benches: {self.store.run_id}")
        for col in ("bench", "conditions", "records", "state", "wall s"):
            t.add_column(col, justify="right" if col in ("records", "wall s") else "left")
        for r in self.rows():
            t.add_row(str(r["bench"] or "-"), r["conditions"], "-" if r["records"] is None else str(r["records"]),
                      r["state"], "-" if r["wall_s"] is None else f"{r['wall_s']:.1f}")
        self.console.print(t)


class _Display:
    """Progress of the parent run: images measured (polled from the running parts' trials.jsonl, when this
    machine sees their directories) and what each bench is doing."""

    def __init__(self, run: BenchRun, console: Console, quiet: bool):
        self.run, self.console, self.quiet = run, console, quiet
        self.progress: Progress | None = None
        self.task = None
        self._counts: dict[str, tuple[int, int]] = {}  # trials.jsonl path -> (bytes read, lines)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.quiet:
            return
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(self._describe({}), total=max(self.run._planned(), 1))
        self._thread = threading.Thread(target=self._poll, name="bench-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.progress is not None:
            self._update()
            self.progress.stop()
            self.progress = None

    def say(self, text: str, always: bool = False) -> None:
        if self.quiet and not always:
            return
        (self.progress.console if self.progress is not None else self.console).print(text, soft_wrap=True)

    def started(self, p: _Part) -> None:
        self.say(f"{p.bench}: {', '.join(p.conditions)}" + (" (resumed)" if p.resume_dir or p.adopt else ""))

    def finished(self, p: _Part, res: dict) -> None:
        self.say(f"{p.bench}: {', '.join(p.conditions)} {p.state}, {res.get('n_records') or 0} records in "
                 f"{res.get('wall_s') or 0:.1f} s")  # why it failed: in the retry or stop line

    def _lines(self, path: Path) -> int:
        done, n = self._counts.get(str(path), (0, 0))
        try:
            with open(path, "rb") as f:
                f.seek(done)
                chunk = f.read()
        except OSError:
            return n
        n += chunk.count(b"\n")
        self._counts[str(path)] = (done + len(chunk), n)
        return n

    def _update(self) -> None:
        if self.progress is None:
            return
        merged = sum(p.records or 0 for p in self.run.parts if p.state in DONE_STATES)
        live: dict[str, tuple[_Part, int]] = {}
        for p in list(self.run.parts):
            if p.state == "running" and p.bench:
                d = self.run._found_dir(p)
                live[p.bench] = (p, self._lines(d / "trials.jsonl") if d is not None else 0)
        planned = self.run._planned()
        self.progress.update(self.task, description=self._describe(live), total=max(planned, 1),
                             completed=min(merged + sum(n for _, n in live.values()), planned))

    def _describe(self, live: dict) -> str:
        """``parts 2/5 · bench-a: c3 (12) · bench-b: idle``."""
        done = sum(1 for p in self.run.parts if p.state in DONE_STATES)
        benches = [f"{b.name}: {', '.join(live[b.name][0].conditions)} ({live[b.name][1]})" if b.name in live
                   else f"{b.name}: idle" for b in self.run.benches]
        return " · ".join([f"parts {done}/{len(self.run.parts)}", *benches])

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._update()
            except Exception:  # noqa: BLE001 - the display never stops a run
                pass
