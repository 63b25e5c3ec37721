"""``hilbed check`` and the automatic check before every run.

One row per node: reachable, provisioned with the controller's sources,
Python, free disk, the radio's serial port (present and openable), iperf3 on
a jammer, a GPU on the edge, clock offset with its uncertainty (NTP-style
exchange over a probe agent, minimum-RTT sample of at least 8), uptime and
whether the node rebooted since it was provisioned. A failure names the node
and the fix; the run refuses to start while any node fails.
"""

from __future__ import annotations

import errno
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hilbed.orchestrator.lab.transport import AgentHandle, Transport, clock_probe
from hilbed.orchestrator.roles import CHECK_GPU, CHECK_IPERF3, ROLES
from hilbed.orchestrator.ui import make_console

COLUMNS = ("reachable", "provisioned", "assets", "python", "disk", "serial", "firmware", "iperf3", "gpu", "rt prio",
           "clock", "uptime")
#: the fix a missing or changed asset names when the caller did not say which scenario needs it
PROVISION_FIX = "hilbed provision --testbed TESTBED --scenario SCENARIO"
MIN_PYTHON = (3, 10)
DISK_FAIL_BYTES = 200 * 2**20
DISK_WARN_BYTES = 1 * 2**30
CLOCK_WARN_UNCERTAINTY_NS = 50_000_000
SERIAL_SHORT = {errno.ENOENT: "missing", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EBUSY: "busy", errno.ENXIO: "no device", errno.EIO: "no device"}


@dataclass
class CheckItem:
    status: str  # ok | warn | fail | na
    value: str = ""  # short, for the table cell
    fix: str = ""
    detail: str = ""  # the full problem, for the line under the table

    @property
    def text(self) -> str:
        return self.detail or self.value


@dataclass
class NodeCheck:
    node: str
    roles: list[str]
    transport: str
    items: dict[str, CheckItem] = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    clock: dict | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[tuple[str, CheckItem]]:
        return [(k, v) for k, v in self.items.items() if v.status == "fail"]

    @property
    def warnings(self) -> list[tuple[str, CheckItem]]:
        return [(k, v) for k, v in self.items.items() if v.status == "warn"]

    def set(self, name: str, status: str, value: str = "", fix: str = "", detail: str = "") -> None:
        self.items[name] = CheckItem(status, value, fix, detail)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def problems(self) -> list[str]:
        return [f"{self.node}: {k}: {v.text}" + (f" (fix: {v.fix})" if v.fix else "") for k, v in self.failures]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _fmt_duration(s: float) -> str:
    s = int(s)
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    return f"{d}d{h:02d}h" if d else (f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s")


def _fmt_ns(ns: int) -> str:
    a = abs(ns)
    if a >= 1_000_000_000:
        return f"{ns / 1e9:+.2f} s"
    if a >= 1_000_000:
        return f"{ns / 1e6:+.1f} ms"
    return f"{ns / 1e3:+.0f} µs"


def check_node(node: str, cfg: Any, t: Transport | None, *, clock: bool = True, deep: bool = False,
               need_radio: bool = True, need_jammer: bool = True, source_hash: str | None = None,
               log_dir: Path | None = None, make=None, reach: Any = None, assets: list | None = None,
               provision_fix: str = PROVISION_FIX) -> NodeCheck:
    """Check one node; never raises (problems become failed items).

    ``assets``: the pushed files (:class:`hilbed.orchestrator.lab.provision.Asset`) this node must have for a
    scenario; each is hashed on the node and a missing or changed one fails with ``provision_fix``.

    ``reach``: the result (or exception) of ``uname -n`` run on the node already, e.g. by
    :func:`hilbed.orchestrator.lab.ssh.group_run` for many nodes at once.
    """
    t0 = time.monotonic()
    tkind = cfg.transport.kind
    nc = NodeCheck(node, list(cfg.roles), tkind)
    for c in COLUMNS:
        nc.set(c, "na")
    try:
        if t is None:
            t = make(node, cfg)
    except Exception as exc:
        nc.set("reachable", "fail", str(exc), getattr(exc, "fix", ""))
        return nc
    wd = getattr(cfg.transport, "workdir", None) if tkind == "ssh" else None

    # 1. reachable: a command over the transport
    try:
        r = reach if reach is not None else t.run(["uname", "-n"], timeout=30)
        if isinstance(r, BaseException):
            raise r
        if not r.ok:
            raise RuntimeError(r.stderr.strip() or f"exit status {r.returncode}")
        nc.set("reachable", "ok", cfg.transport.host if tkind == "ssh" else "local")
        nc.facts["hostname"] = r.stdout.strip()
    except Exception as exc:
        nc.set("reachable", "fail", getattr(exc, "problem", None) or str(exc),
               getattr(exc, "fix", "") or "check that the node is up and reachable")
        nc.seconds = round(time.monotonic() - t0, 3)
        return nc

    # 2. facts and clock from a probe agent (same channel kind as the real agents)
    radio = getattr(cfg, "radio", None)
    want_gpu = None
    checks = {c for r in cfg.roles if r in ROLES for c in ROLES[r].checks}
    if CHECK_GPU in checks:
        want_gpu = "torch" if (deep or cfg.device == "cuda") else "driver"
    handle = None
    logs = Path(log_dir) if log_dir else Path(tempfile.gettempdir())
    try:
        proc = t.start_agent("hilbed.nodes.probe", [], logs / f"{node}-probe.log")
        handle = AgentHandle(node, "probe", proc)
        handle.wait_ready(60)
        facts = handle.call("check", timeout=120, workdir=wd, serial=radio.port if radio else None,
                            iperf3=CHECK_IPERF3 in checks, gpu=want_gpu)
        nc.facts = facts
        if clock:
            nc.clock = clock_probe(handle, 8)
    except Exception as exc:
        # an agent that dies before it is ready is reported at once, with its exit status and last log lines
        tail = handle.log_tail() if handle is not None else []
        if any("venv is missing" in ln for ln in tail):
            nc.set("provisioned", "fail", "no venv", "run `hilbed provision`", f"no venv in {wd}")
        else:
            why = str(exc) or type(exc).__name__
            if tail and tail[-1][:300] not in why:
                why += "; last lines of its log: " + " | ".join(ln[:300] for ln in tail)
            nc.set("provisioned" if tkind == "ssh" else "python", "fail", "probe failed",
                   "run `hilbed provision`" if tkind == "ssh" else "check the controller's Python environment",
                   f"the probe agent failed: {why}")
        nc.seconds = round(time.monotonic() - t0, 3)
        return nc
    finally:
        if handle is not None:
            handle.close(timeout=5)
    _judge(nc, cfg, facts, source_hash=source_hash, need_radio=need_radio, need_jammer=need_jammer)
    if assets and tkind == "ssh":
        check_assets(nc, t, wd, assets, provision_fix)
    if radio is not None and need_radio:  # the radio's firmware identity against radio.firmware
        from hilbed.orchestrator.lab.flash import firmware_check
        fw = firmware_check(t, radio, node)
        nc.set("firmware", fw["state"], fw["short"], fw["fix"], fw["detail"])
        nc.facts["radio_identity"] = fw["identity"]
    nc.seconds = round(time.monotonic() - t0, 3)
    return nc


def _judge(nc: NodeCheck, cfg: Any, facts: dict, *, source_hash: str | None, need_radio: bool,
           need_jammer: bool) -> None:
    tkind = cfg.transport.kind
    marker = facts.get("marker")
    if tkind == "ssh":
        if not marker:
            nc.set("provisioned", "fail", "no provision marker", "run `hilbed provision`")
        elif source_hash and marker.get("source_hash") != source_hash:
            nc.set("provisioned", "fail", "stale", "run `hilbed provision`",
                   f"hilbed {marker.get('version')} from other sources ({marker.get('source_hash')}; "
                   f"the controller has {source_hash})")
        else:
            from hilbed.orchestrator.lab.provision import node_extras
            missing = set(node_extras(cfg.roles)) - set(marker.get("extras", []))
            if missing:
                nc.set("provisioned", "fail", f"extras {', '.join(sorted(missing))} not installed",
                       "run `hilbed provision`")
            else:
                nc.set("provisioned", "ok", f"{marker.get('version')} ({str(marker.get('wheel_sha256'))[:8]})")
    py = facts.get("python", "")
    try:
        ok_py = tuple(int(x) for x in py.split(".")[:2]) >= MIN_PYTHON
    except ValueError:
        ok_py = False
    if "rt_priority" in facts:  # shaped links release precisely only with SCHED_FIFO
        nc.set("rt prio", "ok" if facts["rt_priority"] else "warn", "yes" if facts["rt_priority"] else "no",
               "" if facts["rt_priority"] else "run as root or raise RLIMIT_RTPRIO (limits.conf rtprio) for the "
               "agents' user: without it shaped links release packets less precisely (the report warns)")
    nc.set("python", "ok" if ok_py else "fail", py,
           "" if ok_py else f"install Python >= {'.'.join(map(str, MIN_PYTHON))} on the node")
    free = facts.get("disk_free_bytes")
    if free is not None:
        st = "fail" if free < DISK_FAIL_BYTES else ("warn" if free < DISK_WARN_BYTES else "ok")
        nc.set("disk", st, _fmt_bytes(free), "" if st == "ok" else f"free space on {facts.get('disk_path')}")
    ser = facts.get("serial")
    radio = getattr(cfg, "radio", None)
    if ser is not None and radio is not None:
        detail = f"{radio.port}: {ser['detail']}"
        if ser.get("ok") is True:
            short = "emulated" if radio.port == "emulated" else (
                "opens" if not ser.get("warn") else f"opens ({ser['detail'].rsplit('/', 1)[-1]})")
            nc.set("serial", "warn" if ser.get("warn") else "ok", short, ser.get("warn", ""), detail)
        elif ser.get("ok") is None:
            nc.set("serial", "warn", "not checked", "", detail)
        else:
            short = SERIAL_SHORT.get(ser.get("errno"), ser["detail"][:24])
            nc.set("serial", "fail" if need_radio else "warn", short, ser.get("fix", ""),
                   detail + ("" if need_radio else " (not used by this scenario)"))
    ip = facts.get("iperf3")
    if ip is not None:
        m = re.search(r"iperf ([0-9.]+)", ip["detail"])
        nc.set("iperf3", "ok" if ip["ok"] else ("fail" if need_jammer else "warn"),
               m.group(1) if m else ip["detail"], ip.get("fix", ""))
    gpu = facts.get("gpu")
    if gpu is not None:
        if gpu.get("ok") is True:
            nc.set("gpu", "ok", gpu["detail"])
        elif gpu.get("ok") is None:
            nc.set("gpu", "na", "none (cpu)")
        else:
            nc.set("gpu", "fail" if cfg.device == "cuda" else "warn", gpu["detail"], gpu.get("fix", ""))
    if nc.clock is not None:
        unc = nc.clock["uncertainty_ns"]
        st = "warn" if unc > CLOCK_WARN_UNCERTAINTY_NS else "ok"
        nc.set("clock", st, f"{_fmt_ns(nc.clock['offset_ns'])} ±{_fmt_ns(abs(unc))[1:]}",
               "" if st == "ok" else "the link to the node is slow or congested: offsets are uncertain")
    up = facts.get("uptime_s")
    if up is not None:
        st, fix, note = "ok", "", ""
        bt, mbt = facts.get("boot_time"), (marker or {}).get("boot_time")
        if tkind == "ssh" and bt and mbt and abs(int(bt) - int(mbt)) > 5:
            st, note = "warn", " (rebooted since provisioning)"
            fix = "check the node came back as expected (radio attached, clock synchronised)"
        nc.set("uptime", st, _fmt_duration(up) + note, fix)


def check_assets(nc: NodeCheck, t: Transport, workdir: str, assets: list, fix: str = PROVISION_FIX) -> set[str]:
    """Hash every asset on the node (one command); a missing or changed one fails the node with the
    provisioning command as the fix (an optional one, the model, only warns: the edge then makes it itself).
    Returns the sha256 of the assets found intact; ``nc.facts["assets"]`` keeps them too."""
    from hilbed.orchestrator.run.assets import hash_on_node
    try:
        got = hash_on_node(t, workdir, [a.remote for a in assets])
    except Exception as exc:
        nc.set("assets", "fail", "not checked", f"run `{fix}`", f"cannot hash the pushed files: {exc}")
        return set()
    ok = {a.sha256 for a in assets if got.get(a.remote) == a.sha256}
    nc.facts["assets"] = sorted(ok)
    bad = [a for a in assets if a.sha256 not in ok]
    if not bad:
        nc.set("assets", "ok", f"{len(assets)} ok")
        return ok
    words = [f"{a.what} ({a.name}) {'missing' if got.get(a.remote) is None else 'changed'} at "
             f"{workdir.rstrip('/')}/{a.remote}" for a in bad]
    required = [a for a in bad if not a.optional]
    if required:
        nc.set("assets", "fail", f"{len(bad)} of {len(assets)} missing", f"run `{fix}`", "; ".join(words))
    else:
        nc.set("assets", "warn", f"{len(bad)} not pushed", f"`{fix}` pushes it; meanwhile the node makes it itself",
               "; ".join(words))
    return ok


def check_testbed(testbed: Any, transports: dict[str, Transport] | None = None, *, clock: bool = True,
                  deep: bool = False, need_radio: bool = True, need_jammer: bool = True,
                  nodes: Iterable[str] | None = None, log_dir: Path | None = None, jobs: int = 16,
                  assets: dict[str, list] | None = None, provision_fix: str = PROVISION_FIX) -> list[NodeCheck]:
    """Check every node in parallel. Transports given are used (and left open); missing ones are
    created, stored into ``transports`` when it is a dict, else closed afterwards. ``assets``: node -> the
    pushed files it must have (see :func:`check_assets`)."""
    from hilbed.orchestrator.lab.connect import make_transport
    from hilbed.orchestrator.lab.provision import source_hash
    names = list(nodes) if nodes else list(testbed.nodes)
    sh = source_hash() if any(testbed.nodes[n].transport.kind == "ssh" for n in names) else None
    trs = transports if transports is not None else {}
    created: list[Transport] = []
    tmp_logs = None
    if log_dir is None:  # probe logs only matter while checking: their last line goes into the failure
        tmp_logs = log_dir = Path(tempfile.mkdtemp(prefix="hilbed-check-"))

    def make(node: str, cfg: Any) -> Transport:
        t = make_transport(node, cfg)
        if transports is not None:
            transports[node] = t
        else:
            created.append(t)
        return t

    reach: dict[str, Any] = {}

    def one(n: str) -> NodeCheck:
        return check_node(n, testbed.nodes[n], trs.get(n), clock=clock, deep=deep, need_radio=need_radio,
                          need_jammer=need_jammer, source_hash=sh, log_dir=log_dir, make=make, reach=reach.get(n),
                          assets=(assets or {}).get(n), provision_fix=provision_fix)

    try:
        ssh_nodes = [n for n in names if testbed.nodes[n].transport.kind == "ssh"]
        if ssh_nodes:  # connect to every SSH node at once and ask each for its name (Fabric ThreadingGroup)
            from hilbed.orchestrator.lab.ssh import group_run
            ssh_ts = []
            for n in ssh_nodes:
                try:
                    ssh_ts.append(trs.get(n) or make(n, testbed.nodes[n]))
                except Exception as exc:
                    reach[n] = exc
            reach.update(group_run(ssh_ts, "uname -n", timeout=30))
            for n in ssh_nodes:
                if n not in trs:
                    trs[n] = next((t for t in ssh_ts if t.node == n), None)
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(names)))) as ex:
            return list(ex.map(one, names))
    finally:
        for t in created:
            try:
                t.close()
            except Exception:
                pass
        if tmp_logs is not None:
            shutil.rmtree(tmp_logs, ignore_errors=True)


_MARK = {"ok": ("green", "✓"), "warn": ("yellow", "!"), "fail": ("red", "✗"), "na": ("dim", "–")}


def render_checks(checks: list[NodeCheck], console=None, title: str = "testbed check") -> None:
    from rich.table import Table
    con = console or make_console()
    tbl = Table(title=title)
    tbl.add_column("node")
    for c in COLUMNS:
        tbl.add_column(c)
    for nc in checks:
        cells = []
        for c in COLUMNS:
            it = nc.items.get(c, CheckItem("na"))
            color, mark = _MARK[it.status]
            cells.append(f"[{color}]{mark} {it.value}[/]" if it.value else f"[{color}]{mark}[/]")
        name = f"[bold]{nc.node}[/]" if nc.ok else f"[bold red]{nc.node}[/]"
        tbl.add_row(f"{name}\n[dim]{','.join(nc.roles)}[/]", *cells)
    con.print(tbl)
    for nc in checks:
        for k, it in nc.failures:
            con.print(f"[red]✗ {nc.node}[/]: {k}: {it.text}" + (f"\n    fix: {it.fix}" if it.fix else ""))
        for k, it in nc.warnings:
            con.print(f"[yellow]! {nc.node}[/]: {k}: {it.text}" + (f" ({it.fix})" if it.fix else ""))
    bad = [nc for nc in checks if not nc.ok]
    if bad:
        con.print(f"[red]{len(bad)} of {len(checks)} node(s) not ready: {', '.join(nc.node for nc in bad)}[/]")
    else:
        con.print(f"[green]all {len(checks)} nodes ready[/]")
