"""A lab of SSH hosts on one machine: network namespaces behind a Linux bridge.

Each host is a network namespace with one veth leg on a bridge in the root
namespace (``10.77.<k>.0/24``: the bridge is ``.1``, host ``i`` is ``.10+i``)
running a real OpenSSH server (``/usr/sbin/sshd -D``) with its own generated
host key and one authorised test key. The namespaces share this machine's
filesystem and Python, so every host gets its own work directory
(``<root>/<node>/work``, so provisioning into it is real per host) and its own
``$HOME`` (``<root>/<node>/home``).

Everything the lab creates is written down in ``<root>/lab.json`` before it is
created, so :func:`down` (or ``scripts/netns-lab down`` from another process)
removes namespaces, bridge, processes and files even after a crash. Needs root
and iproute2; only the lab's own addresses are ever used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LAB_BASE = Path(os.environ.get("HILBED_NETNS_ROOT", "/tmp/hilbed-netns"))
SSHD = "/usr/sbin/sshd"
MAX_HOSTS = 200


class LabError(RuntimeError):
    """The lab cannot be built here (not root, no iproute2/sshd) or a step failed."""


def unavailable_reason() -> str | None:
    """Why a namespace lab cannot run on this machine, or None if it can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, as CI does)"
    for tool in ("ip", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt install iproute2 openssh-client)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed (apt install openssh-server)"
    probe = f"hbprobe{os.getpid() % 100000}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"cannot create a network namespace: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p


def default_roles(n: int) -> dict[str, list[str]]:
    """Host names and roles: an edge, a client, a jammer, then more clients."""
    names: dict[str, list[str]] = {"edge": ["edge"]}
    if n >= 2:
        names["client-1"] = ["client"]
    if n >= 3:
        names["jammer"] = ["jammer"]
    k = 2
    while len(names) < n:
        names[f"client-{k}"] = ["client"]
        k += 1
    return names


@dataclass
class LabHost:
    name: str
    index: int
    netns: str
    address: str
    dir: Path
    roles: list[str] = field(default_factory=list)
    sshd_pid: int | None = None

    @property
    def workdir(self) -> Path:
        return self.dir / "work"

    @property
    def home(self) -> Path:
        """$HOME of sessions on this host (its own, like a separate machine; no rc files)."""
        return self.dir / "home"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def sshd_log(self) -> Path:
        return self.dir / "sshd.log"


class NetnsLab:
    """``NetnsLab(3).up()`` ... ``.down()``; also a context manager."""

    def __init__(self, n: int = 3, name: str = "hb", subnet: int = 0, roles: dict[str, list[str]] | None = None,
                 root: Path | None = None, client_alive_s: int = 2):
        if not 1 <= n <= MAX_HOSTS:
            raise LabError(f"a lab has 1..{MAX_HOSTS} hosts (asked for {n})")
        if not (name.isalnum() and len(name) <= 6):
            raise LabError("the lab name must be 1-6 letters/digits (it prefixes interface names)")
        if not 0 <= subnet <= 255:
            raise LabError("subnet must be 0..255 (the third octet of 10.77.<subnet>.0/24)")
        self.name = name
        self.subnet = subnet
        self.root = Path(root) if root else LAB_BASE / name
        self.bridge = f"{name}br0"
        self.gateway = f"10.77.{subnet}.1"
        self.client_alive_s = client_alive_s
        roles = roles or default_roles(n)
        if len(roles) != n:
            raise LabError(f"roles name {len(roles)} hosts, the lab has {n}")
        self.hosts: dict[str, LabHost] = {}
        for i, (hname, hroles) in enumerate(roles.items(), start=1):
            self.hosts[hname] = LabHost(hname, i, f"{name}-n{i}", f"10.77.{subnet}.{10 + i}", self.root / hname,
                                        list(hroles))
        self.client_key = self.root / "id_ed25519"
        self.known_hosts = self.root / "known_hosts"
        self._procs: dict[str, subprocess.Popen] = {}

    # -- state file -------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / "lab.json"

    def _write_state(self, phase: str) -> None:
        state = {"name": self.name, "subnet": self.subnet, "bridge": self.bridge, "phase": phase,
                 "root": str(self.root), "controller_pid": os.getpid(),
                 "hosts": {h.name: {"index": h.index, "netns": h.netns, "address": h.address, "roles": h.roles,
                                    "sshd_pid": h.sshd_pid} for h in self.hosts.values()}}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)

    @classmethod
    def from_state(cls, root: Path) -> "NetnsLab":
        st = json.loads((Path(root) / "lab.json").read_text())
        roles = {n: h["roles"] for n, h in sorted(st["hosts"].items(), key=lambda kv: kv[1]["index"])}
        lab = cls(len(roles), st["name"], st["subnet"], roles, root=Path(st["root"]))
        for n, h in st["hosts"].items():
            lab.hosts[n].sshd_pid = h.get("sshd_pid")
        return lab

    # -- lifecycle --------------------------------------------------------
    def __enter__(self) -> "NetnsLab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self, timeout: float = 20.0) -> "NetnsLab":
        why = unavailable_reason()
        if why:
            raise LabError(why)
        if self.state_path.exists():
            raise LabError(f"a lab named {self.name!r} is already up ({self.state_path}); "
                           f"`scripts/netns-lab down --name {self.name}` removes it")
        if _ip("link", "show", self.bridge, check=False).returncode == 0:
            raise LabError(f"interface {self.bridge} already exists: another lab uses the name {self.name!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_state("creating")  # written first: down() can always clean up
        try:
            self._make_keys()
            self._make_network()
            for h in self.hosts.values():
                self._start_sshd(h)
            self._write_state("starting")
            self._wait_ready(timeout)
            self._write_state("up")
        except BaseException:
            self.down()
            raise
        return self

    def _make_keys(self) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hilbed-lab-{self.name}",
                        "-f", str(self.client_key)], check=True, capture_output=True)
        pub = self.client_key.with_suffix(".pub").read_text().strip()
        lines = []
        for h in self.hosts.values():
            h.workdir.mkdir(parents=True, exist_ok=True)
            h.home.mkdir(parents=True, exist_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{h.name}@{self.name}",
                            "-f", str(h.host_key)], check=True, capture_output=True)
            (h.dir / "authorized_keys").write_text(pub + "\n")
            kt, blob = h.host_key.with_suffix(".pub").read_text().split()[:2]
            lines.append(f"{h.address} {kt} {blob}")
            h.sshd_config.write_text(self._sshd_config(h))
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _sshd_config(self, h: LabHost) -> str:
        return "\n".join([
            f"ListenAddress {h.address}", "Port 22", f"HostKey {h.host_key}", f"PidFile {h.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {h.dir / 'authorized_keys'}", "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "UseDNS no", "PrintMotd no", "PrintLastLog no",
            f"ClientAliveInterval {self.client_alive_s}", "ClientAliveCountMax 3", "MaxStartups 200:30:400",
            "MaxSessions 64", "AllowTcpForwarding yes", "Subsystem sftp internal-sftp", "LogLevel ERROR",
            # each host its own $HOME (the shared root account's rc files are not run on every command);
            # SFTP still starts in the account's home directory, so the lab's workdirs are absolute paths
            f"SetEnv HOME={h.home}", "",
        ])

    def _make_network(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for h in self.hosts.values():
            host_leg, ns_leg = f"{self.name}v{h.index}", f"{self.name}p{h.index}"
            _ip("netns", "add", h.netns)
            _ip("link", "add", host_leg, "type", "veth", "peer", "name", ns_leg, "netns", h.netns)
            _ip("link", "set", host_leg, "master", self.bridge, "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")
            _ip("-n", h.netns, "addr", "add", f"{h.address}/24", "dev", ns_leg)
            _ip("-n", h.netns, "link", "set", ns_leg, "up")
            _ip("-n", h.netns, "route", "add", "default", "via", self.gateway)

    def _start_sshd(self, h: LabHost) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        with open(h.sshd_log, "ab") as log:
            p = subprocess.Popen(["ip", "netns", "exec", h.netns, SSHD, "-D", "-e", "-f", str(h.sshd_config)],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self._procs[h.name] = p
        h.sshd_pid = p.pid  # `ip netns exec` execs sshd: same pid

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.hosts)
        while pending:
            for n in list(pending):
                h = self.hosts[n]
                p = self._procs.get(n)
                if p is not None and p.poll() is not None:
                    raise LabError(f"sshd of {n} exited ({p.returncode}): {h.sshd_log.read_text()[-400:]}")
                try:
                    with socket.create_connection((h.address, 22), timeout=0.5) as s:
                        s.settimeout(1.0)
                        if s.recv(4).startswith(b"SSH-"):
                            pending.discard(n)
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                raise LabError(f"sshd did not come up on {', '.join(sorted(pending))} within {timeout:.0f} s")
            if pending:
                time.sleep(0.05)

    def down(self) -> None:
        """Remove everything: processes in the namespaces, namespaces, bridge, files."""
        for h in self.hosts.values():
            self._kill_namespace_processes(h.netns)
        for p in self._procs.values():
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()
        for h in self.hosts.values():
            _ip("netns", "del", h.netns, check=False)
            _ip("link", "del", f"{self.name}v{h.index}", check=False)
        _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _kill_namespace_processes(netns: str) -> None:
        for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0)):
            pids = _netns_pids(netns)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            t_end = time.monotonic() + wait
            while time.monotonic() < t_end and _netns_pids(netns):
                time.sleep(0.05)

    # -- faults -----------------------------------------------------------
    def session_pids(self, host: str) -> list[int]:
        """sshd processes serving connections on ``host`` (not its listener)."""
        h = self.hosts[host]
        return [pid for pid in _netns_pids(h.netns) if pid != h.sshd_pid and _comm(pid) == "sshd"]

    def drop_connections(self, host: str) -> list[int]:
        """Cut every SSH connection to ``host`` (as a reboot or Wi-Fi loss would). Returns the killed pids."""
        pids = self.session_pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def stop_sshd(self, host: str) -> None:
        """Stop the host's SSH server and cut its connections: the host is unreachable."""
        h = self.hosts[host]
        p = self._procs.pop(host, None)
        if h.sshd_pid:
            try:
                os.kill(h.sshd_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p is not None:
            p.wait(5)
        self.drop_connections(host)
        h.sshd_pid = None
        self._write_state("up")

    def start_sshd(self, host: str, timeout: float = 10.0) -> None:
        h = self.hosts[host]
        if h.sshd_pid and _comm(h.sshd_pid) == "sshd":
            return
        self._start_sshd(h)
        self._write_state("up")
        only = {host: h}
        saved, self.hosts = self.hosts, only
        try:
            self._wait_ready(timeout)
        finally:
            self.hosts = saved

    def set_link(self, host: str, up: bool) -> None:
        """Take the host's network leg down or up (a Wi-Fi flap: no FIN, packets just vanish)."""
        h = self.hosts[host]
        _ip("-n", h.netns, "link", "set", f"{self.name}p{h.index}", "up" if up else "down")

    def processes(self, host: str) -> list[int]:
        return _netns_pids(self.hosts[host].netns)

    # -- testbed ----------------------------------------------------------
    def testbed(self, name: str | None = None, python: str | None = None, keepalive_s: float = 2.0,
                radio_ports: dict[str, str] | None = None, results_dir: str = "runs") -> dict:
        """A testbed document (dict) that reaches every host over SSH."""
        python = python or sys.executable
        nodes = {}
        for h in self.hosts.values():
            node = {
                "roles": h.roles, "address": h.address, "description": f"netns {h.netns}",
                "transport": {"kind": "ssh", "host": h.address, "user": "root", "key_file": str(self.client_key),
                              "known_hosts": str(self.known_hosts), "python": python, "workdir": str(h.workdir),
                              "keepalive_s": keepalive_s},
            }
            port = (radio_ports or {}).get(h.name)
            if port is None and ("client" in h.roles or "edge" in h.roles):
                port = "emulated"
            if port is not None:
                node["radio"] = {"protocol": "spinel", "port": port}
            nodes[h.name] = node
        return {"name": name or f"netns-{self.name}", "description": f"{len(self.hosts)} SSH hosts in network "
                f"namespaces on 10.77.{self.subnet}.0/24", "results_dir": results_dir, "nodes": nodes}

    def testbed_yaml(self, **kw) -> str:
        """The testbed as YAML (written by hand: the script runs without PyYAML)."""
        tb = self.testbed(**kw)
        q = json.dumps  # a JSON string is a valid YAML scalar
        out = [f"# Generated by scripts/netns-lab for lab {self.name!r} ({self.root}).",
               f"# Remove the lab with: scripts/netns-lab down --name {self.name}",
               f"name: {q(tb['name'])}", f"description: {q(tb['description'])}",
               f"results_dir: {q(tb['results_dir'])}", "nodes:"]
        for n, node in tb["nodes"].items():
            out.append(f"  {n}:")
            out.append(f"    roles: [{', '.join(node['roles'])}]")
            out.append(f"    address: {q(node['address'])}")
            out.append(f"    description: {q(node['description'])}")
            for sect in ("transport", "radio"):
                if sect in node:
                    out.append(f"    {sect}:")
                    out.extend(f"      {k}: {q(v)}" for k, v in node[sect].items())
        return "\n".join(out) + "\n"

    def write_testbed(self, path: Path, **kw) -> Path:
        path = Path(path)
        path.write_text(self.testbed_yaml(**kw))
        return path


def _netns_pids(netns: str) -> list[int]:
    p = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    if p.returncode != 0:
        return []
    return [int(x) for x in p.stdout.split() if x.strip().isdigit()]


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def list_labs(base: Path = LAB_BASE) -> list[dict]:
    """The labs recorded under ``base``, with which hosts still answer."""
    out = []
    if not base.exists():
        return out
    for st in sorted(base.glob("*/lab.json")):
        try:
            d = json.loads(st.read_text())
        except (OSError, ValueError):
            continue
        alive = {}
        for n, h in d.get("hosts", {}).items():
            pid = h.get("sshd_pid")
            alive[n] = bool(pid) and _comm(pid) == "sshd"
        d["sshd_alive"] = alive
        out.append(d)
    return out
