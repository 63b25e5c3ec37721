"""Scheduled regression runs: a systemd user timer or a crontab entry.

``hilbed schedule install NAME --scenario S --baseline RUN`` pins a copy of the
baseline run, writes the schedule to ``<state>/<NAME>/schedule.json`` and
installs a timer that calls ``hilbed schedule run NAME``. Each run replays the
scenario into ``<state>/<NAME>/runs/``, compares it with the pinned baseline
(:func:`hilbed.analysis.compare.compare_runs`), appends one line to
``history.jsonl`` and points the ``latest`` symlink at the newest report
(``latest-run`` at the newest run directory).

A scheduled run first waits for a free lab: while another controller holds a
lease on one of the testbed's nodes (``hilbed.orchestrator.lab.lease``) it polls
until the leases are gone, at most the schedule's ``lab_wait_s`` (default one
hour), and records in ``history.jsonl`` how long it waited and for whom
(``lab_wait``); a lab still busy then is the verdict ``lab-busy``.

The state directory is ``$HILBED_SCHEDULE_DIR``, else the user data directory
(``~/.local/share/hilbed/schedules``). systemd units go to
``$HILBED_SYSTEMD_USER_DIR``, else ``~/.config/systemd/user``; the crontab
program is ``$HILBED_CRONTAB``, else ``crontab`` on PATH. Tests point all
three at temporary places.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from hilbed.orchestrator.run.store import atomic_write_text

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CRON_TAG = "# hilbed-schedule:"
EVERY = ("hourly", "daily", "weekly")
#: how long a scheduled run waits for a leased lab, and how often it looks (``$HILBED_LAB_POLL_S``)
DEFAULT_LAB_WAIT_S = 3600.0
LAB_POLL_S = 15.0


class ScheduleError(RuntimeError):
    """A schedule cannot be installed, found or run; the message says why."""


# ------------------------------------------------------------- locations ---

def state_root(override: str | Path | None = None) -> Path:
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get("HILBED_SCHEDULE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    try:
        from platformdirs import user_data_dir
        return Path(user_data_dir("hilbed")) / "schedules"
    except ImportError:  # pragma: no cover
        return Path.home() / ".local" / "share" / "hilbed" / "schedules"


def systemd_user_dir() -> Path:
    env = os.environ.get("HILBED_SYSTEMD_USER_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def crontab_program() -> str | None:
    return os.environ.get("HILBED_CRONTAB") or shutil.which("crontab")


def unit_name(name: str) -> str:
    return f"hilbed-{name}"


# -------------------------------------------------------------- timing ---

def calendar_specs(every: str | None, at: str | None, on_calendar: str | None, cron: str | None) -> tuple[str, str]:
    """(systemd OnCalendar, cron expression) from --every/--at or the raw forms."""
    if every is not None and every not in EVERY:
        raise ScheduleError(f"--every {every!r} (allowed: {', '.join(EVERY)})")
    at = at or "03:00"
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", at)
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ScheduleError(f"--at {at!r}: expected HH:MM (00:00..23:59)")
    hh, mm = int(m.group(1)), int(m.group(2))
    every = every or "daily"
    oc = {"hourly": f"*-*-* *:{mm:02d}:00", "daily": f"*-*-* {hh:02d}:{mm:02d}:00",
          "weekly": f"Mon *-*-* {hh:02d}:{mm:02d}:00"}[every]
    cr = {"hourly": f"{mm} * * * *", "daily": f"{mm} {hh} * * *", "weekly": f"{mm} {hh} * * 1"}[every]
    if cron is not None:
        fields = cron.split()
        if len(fields) != 5 or not all(re.fullmatch(r"[0-9A-Za-z*/,-]+", f) for f in fields):
            raise ScheduleError(f"--cron {cron!r}: expected five fields 'minute hour day-of-month month day-of-week'")
        cr = " ".join(fields)
    if on_calendar is not None:
        if not on_calendar.strip() or "\n" in on_calendar:
            raise ScheduleError("--on-calendar: expected one systemd calendar expression, e.g. '*-*-* 03:00:00'")
        oc = on_calendar.strip()
        check_on_calendar(oc)
    return oc, cr


def check_on_calendar(expr: str) -> None:
    """Let systemd parse the expression when it is around (a pure parse; touches no manager)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        return
    p = subprocess.run([exe, "calendar", expr], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise ScheduleError(f"--on-calendar {expr!r}: {(p.stderr or p.stdout).strip() or 'invalid'}")


# ------------------------------------------------------------ schedule ---

@dataclass
class Schedule:
    name: str
    scenario: str
    testbed: str
    baseline: str            # pinned copy inside the state dir
    baseline_source: str     # the run directory it was copied from
    backend: str             # systemd | cron
    on_calendar: str
    cron: str
    python: str
    workdir: str
    state_dir: str
    created_at: str
    lab_wait_s: float = DEFAULT_LAB_WAIT_S  # schedules written before leases load with the default

    @property
    def dir(self) -> Path:
        return Path(self.state_dir) / self.name

    def command(self) -> list[str]:
        return [self.python, "-m", "hilbed.orchestrator.cli", "schedule", "run", self.name, "--state-dir", self.state_dir]


def load_schedule(name: str, state_dir: str | Path | None = None) -> Schedule:
    p = state_root(state_dir) / name / "schedule.json"
    if not p.exists():
        raise ScheduleError(f"no schedule named {name!r} in {state_root(state_dir)} (see `hilbed schedule list`)")
    return Schedule(**json.loads(p.read_text(encoding="utf-8")))


def save_schedule(s: Schedule) -> None:
    s.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(s.dir / "schedule.json", json.dumps(asdict(s), indent=2) + "\n")


def pin_baseline(src: str | Path, dest_dir: Path) -> Path:
    """Copy a run's data (manifest, records) so the baseline cannot move or vanish under the schedule."""
    src = Path(src).resolve()
    if not (src / "manifest.json").exists() and not (src / "trials.jsonl").exists():
        raise ScheduleError(f"{src}: not a run directory (no manifest.json or trials.jsonl)")
    tmp = dest_dir.with_name(dest_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("manifest.json", "trials.jsonl", "results.parquet", "events.jsonl"):
        if (src / f).exists():
            shutil.copy2(src / f, tmp / f)
    shutil.rmtree(dest_dir, ignore_errors=True)
    tmp.rename(dest_dir)
    return dest_dir


# ------------------------------------------------------------- systemd ---

def _systemd_quote(arg: str) -> str:
    return arg if re.fullmatch(r"[A-Za-z0-9_./:=@%+-]+", arg) else '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_units(s: Schedule) -> dict[str, str]:
    """File name -> text of the service and timer units."""
    u = unit_name(s.name)
    service = "\n".join([
        "[Unit]", f"Description=hilbed scheduled regression run '{s.name}' ({Path(s.scenario).name})", "",
        "[Service]", "Type=oneshot", f"WorkingDirectory={_systemd_quote(s.workdir)}",
        f"Environment=HILBED_SCHEDULE_DIR={_systemd_quote(s.state_dir)}",
        "ExecStart=" + " ".join(_systemd_quote(a) for a in s.command()), ""])
    timer = "\n".join([
        "[Unit]", f"Description=hilbed regression timer '{s.name}'", "",
        "[Timer]", f"OnCalendar={s.on_calendar}", "Persistent=true", f"Unit={u}.service", "",
        "[Install]", "WantedBy=timers.target", ""])
    return {f"{u}.service": service, f"{u}.timer": timer}


def _systemctl(*args: str) -> tuple[int, str]:
    exe = shutil.which("systemctl")
    if exe is None:
        return 127, "systemctl not found"
    p = subprocess.run([exe, "--user", *args], capture_output=True, text=True, timeout=60)
    return p.returncode, (p.stdout + p.stderr).strip()


# ---------------------------------------------------------------- cron ---

def cron_line(s: Schedule) -> str:
    log = s.dir / "cron.log"
    cmd = " ".join(shlex.quote(a) for a in s.command())
    return (f"{s.cron} cd {shlex.quote(s.workdir)} && HILBED_SCHEDULE_DIR={shlex.quote(s.state_dir)} {cmd} "
            f">> {shlex.quote(str(log))} 2>&1 {CRON_TAG}{s.name}")


def read_crontab() -> str:
    exe = crontab_program()
    if exe is None:
        raise ScheduleError("crontab not found (install cron, or use --backend systemd)")
    p = subprocess.run([exe, "-l"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        if "no crontab" in (p.stderr + p.stdout).lower():
            return ""
        raise ScheduleError(f"crontab -l failed: {p.stderr.strip() or p.returncode}")
    return p.stdout


def write_crontab(text: str) -> None:
    exe = crontab_program()
    if exe is None:
        raise ScheduleError("crontab not found")
    p = subprocess.run([exe, "-"], input=text, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise ScheduleError(f"crontab - failed: {p.stderr.strip() or p.returncode}")


def _without(text: str, name: str) -> list[str]:
    return [ln for ln in text.splitlines() if not ln.rstrip().endswith(f"{CRON_TAG}{name}")]


def cron_installed(name: str) -> bool:
    try:
        return any(ln.rstrip().endswith(f"{CRON_TAG}{name}") for ln in read_crontab().splitlines())
    except ScheduleError:
        return False


# ---------------------------------------------------- install / remove ---

def default_backend() -> str:
    return "systemd" if shutil.which("systemctl") and os.environ.get("XDG_RUNTIME_DIR") else "cron"


def install(name: str, scenario: str | Path, baseline: str | Path, *, testbed: str | Path, backend: str = "auto",
            every: str | None = None, at: str | None = None, on_calendar: str | None = None, cron: str | None = None,
            state_dir: str | Path | None = None, enable: bool = True, workdir: str | Path | None = None,
            python: str | None = None, lab_wait_s: float | None = None) -> tuple[Schedule, list[str]]:
    """Write the schedule and its timer; returns it and what was done (lines for the user)."""
    if not NAME_RE.match(name):
        raise ScheduleError(f"schedule name {name!r}: use 1-64 letters, digits, '_', '.', '-'")
    backend = default_backend() if backend == "auto" else backend
    if backend not in ("systemd", "cron"):
        raise ScheduleError(f"--backend {backend!r} (allowed: systemd, cron, auto)")
    for what, p in (("scenario", scenario), ("testbed", testbed)):
        if not Path(p).exists():
            raise ScheduleError(f"{what} file not found: {p}")
    oc, cr = calendar_specs(every, at, on_calendar, cron)
    if lab_wait_s is not None and not 0 <= lab_wait_s <= 7 * 86400:
        raise ScheduleError(f"lab wait {lab_wait_s!r} s: expected 0 .. 604800 (a week)")
    root = state_root(state_dir)
    sdir = root / name
    sdir.mkdir(parents=True, exist_ok=True)
    pinned = pin_baseline(baseline, sdir / "baseline")
    s = Schedule(name=name, scenario=str(Path(scenario).resolve()), testbed=str(Path(testbed).resolve()),
                 baseline=str(pinned), baseline_source=str(Path(baseline).resolve()), backend=backend,
                 on_calendar=oc, cron=cr, python=python or sys.executable,
                 workdir=str(Path(workdir or os.getcwd()).resolve()), state_dir=str(root),
                 created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 lab_wait_s=DEFAULT_LAB_WAIT_S if lab_wait_s is None else float(lab_wait_s))
    save_schedule(s)
    done = [f"schedule {name}: state in {sdir}, baseline pinned from {s.baseline_source}"]
    if backend == "systemd":
        udir = systemd_user_dir()
        udir.mkdir(parents=True, exist_ok=True)
        for fname, text in systemd_units(s).items():
            atomic_write_text(udir / fname, text)
            done.append(f"wrote {udir / fname}")
        if enable:
            for args in (("daemon-reload",), ("enable", "--now", f"{unit_name(name)}.timer")):
                rc, out = _systemctl(*args)
                if rc != 0:
                    raise ScheduleError(f"systemctl --user {' '.join(args)} failed ({out}); the units are written: "
                                        f"run `systemctl --user enable --now {unit_name(name)}.timer` yourself")
                done.append(f"systemctl --user {' '.join(args)}")
        else:
            done.append(f"not enabled: run `systemctl --user daemon-reload && systemctl --user enable --now "
                        f"{unit_name(name)}.timer`")
    else:
        lines = _without(read_crontab(), name) + [cron_line(s)]
        write_crontab("\n".join(lines) + "\n")
        done.append(f"crontab entry: {s.cron} ... {CRON_TAG}{name}")
    return s, done


def remove(name: str, state_dir: str | Path | None = None, purge: bool = False) -> list[str]:
    s = load_schedule(name, state_dir)
    done = []
    if s.backend == "systemd":
        udir = systemd_user_dir()
        rc, out = _systemctl("disable", "--now", f"{unit_name(name)}.timer")
        done.append(f"systemctl --user disable --now {unit_name(name)}.timer" + ("" if rc == 0 else f" ({out})"))
        for fname in systemd_units(s):
            if (udir / fname).exists():
                (udir / fname).unlink()
                done.append(f"removed {udir / fname}")
        _systemctl("daemon-reload")
    else:
        text = read_crontab()
        kept = _without(text, name)
        if len(kept) != len(text.splitlines()):
            write_crontab("\n".join(kept) + ("\n" if kept else ""))
            done.append(f"removed the crontab entry {CRON_TAG}{name}")
    if purge:
        shutil.rmtree(s.dir)
        done.append(f"deleted {s.dir} (history and runs)")
    else:
        (s.dir / "schedule.json").rename(s.dir / "schedule.removed.json")
        done.append(f"kept history and runs in {s.dir}")
    return done


def history(name: str, state_dir: str | Path | None = None) -> list[dict]:
    p = state_root(state_dir) / name / "history.jsonl"
    out = []
    if p.exists():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def list_schedules(state_dir: str | Path | None = None) -> list[dict]:
    root = state_root(state_dir)
    out = []
    if not root.exists():
        return out
    for p in sorted(root.glob("*/schedule.json")):
        s = Schedule(**json.loads(p.read_text(encoding="utf-8")))
        if s.backend == "systemd":
            installed = (systemd_user_dir() / f"{unit_name(s.name)}.timer").exists()
        else:
            installed = cron_installed(s.name)
        h = history(s.name, state_dir)
        last = h[-1] if h else {}
        out.append({"name": s.name, "backend": s.backend, "when": s.on_calendar if s.backend == "systemd" else s.cron,
                    "scenario": s.scenario, "baseline": s.baseline_source, "installed": installed,
                    "runs": len(h), "last_at": last.get("at"), "last_verdict": last.get("verdict"),
                    "latest": str(s.dir / "latest") if (s.dir / "latest").exists() else None})
    return out


# ----------------------------------------------------------------- run ---

def _default_execute(s: Schedule, results_dir: Path) -> Path:
    from hilbed.orchestrator.run.runner import Runner
    out = Runner(s.testbed, s.scenario, results_dir=results_dir, quiet=True).execute()
    return out.run_dir


def _relink(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)


def _append(path: Path, entry: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def lab_holders(s: Schedule) -> list[dict]:
    """Live leases on the schedule's testbed held by someone else (a manual lease of this user does not
    block: the run borrows it). An unreachable node is no holder: the run's own check reports it."""
    from hilbed.orchestrator.config import load_testbed
    from hilbed.orchestrator.lab.lease import MANUAL_RUN_ID, default_owner, read_leases

    class _Lazy(dict):
        def __missing__(self, node):
            from hilbed.orchestrator.lab.connect import make_transport
            t = self[node] = make_transport(node, tb.nodes[node])
            return t

    tb = load_testbed(s.testbed)
    me = default_owner()["user"]
    trs = _Lazy()
    try:
        rows = read_leases(tb, trs)
    finally:
        for t in trs.values():
            try:
                t.close()
            except Exception:
                pass
    out = []
    for n, r in rows.items():
        o = r.get("owner") or {}
        if r["status"] == "held" and not (o.get("user") == me and o.get("run_id") == MANUAL_RUN_ID):
            out.append({"node": n, "holder": r["holder"], "expires_in_s": r["expires_in_s"]})
    return out


def _poll_s() -> float:
    try:
        return max(0.05, float(os.environ.get("HILBED_LAB_POLL_S", LAB_POLL_S)))
    except ValueError:
        return LAB_POLL_S


def run_scheduled(name: str, state_dir: str | Path | None = None,
                  execute: Callable[[Schedule, Path], Path] | None = None,
                  probe: Callable[[Schedule], list[dict]] | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> tuple[int, dict]:
    """One scheduled run: wait for a free lab, replay, report, compare with the pinned baseline, record.
    Returns (exit status, entry)."""
    from hilbed.analysis.compare import compare_runs
    from hilbed.analysis.load import load_manifest
    from hilbed.analysis.report import build_report

    s = load_schedule(name, state_dir)
    runs = s.dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    entry: dict = {"at": at, "schedule": name, "baseline": s.baseline_source}
    from hilbed.orchestrator.lab.lease import LeaseHeld
    probe = probe or lab_holders
    poll = _poll_s()
    t0 = time.monotonic()
    deadline = t0 + s.lab_wait_s
    held_by: dict[tuple, dict] = {}
    wait = entry["lab_wait"] = {"waited": False, "waited_s": 0.0, "max_s": s.lab_wait_s, "held_by": [],
                                  "gave_up": False}

    def busy(holders: list[dict]) -> bool:
        """Note who holds the lab; False when the wait is over (gave up)."""
        for h in holders:
            held_by.setdefault((h.get("node"), h.get("holder")), h)
        wait["held_by"] = list(held_by.values())
        wait["waited"] = True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sleep(min(poll, left))
        return True

    run_dir = None
    while run_dir is None:
        try:
            holders = probe(s)
        except Exception:  # cannot read the leases: let the run (its lease and check) say what is wrong
            holders = []
        if holders:
            if busy(holders):
                continue
        else:
            try:
                run_dir = Path((execute or _default_execute)(s, runs))
                break
            except LeaseHeld as exc:  # someone took the lab between our look and the run's own lease
                if busy([{"node": exc.node, "holder": exc.holder, "expires_in_s": exc.expires_in_s}]):
                    continue
            except Exception as exc:  # the run itself failed: record it, the timer fires again next time
                wait["waited_s"] = round(time.monotonic() - t0, 3)
                entry.update(verdict="run-failed", exit=1, error=f"{type(exc).__name__}: {exc}")
                _append(s.dir / "history.jsonl", entry)
                return 1, entry
        wait.update(waited_s=round(time.monotonic() - t0, 3), gave_up=True)
        entry.update(verdict="lab-busy", exit=1,
                     error=f"the lab stayed leased for {s.lab_wait_s:g} s: " + "; ".join(
                         f"{h['node']} by {h['holder']}" for h in wait["held_by"]))
        _append(s.dir / "history.jsonl", entry)
        return 1, entry
    wait["waited_s"] = round(time.monotonic() - t0, 3)
    m = load_manifest(run_dir)
    report_dir = run_dir / "report"
    if not (report_dir / "index.html").exists():
        build_report([run_dir], report_dir)
    cmp = compare_runs(s.baseline, run_dir)
    (report_dir / "compare.md").write_text(cmp.to_markdown(), encoding="utf-8")
    (report_dir / "compare.json").write_text(json.dumps(cmp.to_dict(), indent=1, default=str), encoding="utf-8")
    complete = m.get("state") in ("complete", None)
    verdict = "regression" if cmp.failed else ("incomplete" if not complete else "ok")
    entry.update(run_id=m.get("run_id", run_dir.name), run_dir=str(run_dir), state=m.get("state"),
                 records=m.get("records"), git=(m.get("git") or {}).get("sha"), verdict=verdict,
                 regressions=[{**d.cell, "metric": d.metric, "change": round(d.change, 3), "lo": round(d.lo, 3),
                               "hi": round(d.hi, 3), "threshold": d.threshold} for d in cmp.regressions],
                 inconclusive=len(cmp.inconclusive), report=str(report_dir / "index.html"),
                 exit=0 if verdict == "ok" else 1)
    _append(s.dir / "history.jsonl", entry)
    _relink(s.dir / "latest", report_dir)
    _relink(s.dir / "latest-run", run_dir)
    return entry["exit"], entry
