"""SSH transport: the same run/put/get/start_agent as ``LocalTransport``, on a remote node.

Built on Fabric's ``Connection`` (over paramiko), one connection per node,
optionally through a ProxyJump gateway shared by all nodes behind it.
Host keys are checked strictly against known_hosts (paramiko's
``RejectPolicy``); ``accept_new_host_keys: true`` accepts and records a key
for a host that has none, never a changed one. Agents run as
``<workdir>/venv/bin/python -m <module>`` on an exec channel: their stdin and
stdout are the channel, their stderr streams into a local log file. When the
channel drops, the agent sees EOF on stdin and tears itself down.

A watchdog asks the server for a reply every ``keepalive_s``; when three go
unanswered (a Wi-Fi flap, a rebooting node) it closes the connection, so every
agent channel on it reads EOF at once and the controller can reconnect.
Nothing secret is logged: no key material, no environment values.
"""

from __future__ import annotations

import base64
import fcntl
import getpass
import hashlib
import io
import logging
import os
import re
import shlex
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import paramiko
from fabric import Config, Connection, ThreadingGroup
from fabric.exceptions import GroupException
from invoke.exceptions import CommandTimedOut

from hilbed.orchestrator.lab.transport import AgentProcess, CommandResult, Transport, local_shell_path, shell_path

log = logging.getLogger("hilbed.ssh")
#: paramiko's own messages, one line each (its tracebacks only at debug level); never printed on the terminal
paramiko_log = logging.getLogger("hilbed.ssh.paramiko")

#: controller environment variables passed on to remote agents when set
FORWARD_ENV = ("HILBED_LOG",)
#: controller directories passed on only where the node sees the same directory (a shared filesystem, the
#: namespace lab): the edge then reuses the controller's trained models instead of training its own
FORWARD_DIRS = ("HILBED_CACHE_DIR",)
CONNECT_TIMEOUT_S = 10
KEEPALIVE_MISSES = 3


class SSHError(RuntimeError):
    """A node cannot be used over SSH; the message names the node and the fix."""

    def __init__(self, node: str, problem: str, fix: str = ""):
        self.node, self.problem, self.fix = node, problem, fix
        super().__init__(f"node {node}: {problem}" + (f"; fix: {fix}" if fix else ""))


class HostKeyError(SSHError):
    """The server's host key is unknown (strict checking) or differs from known_hosts."""


class NodeUnreachable(SSHError):
    """No SSH connection could be made or it dropped."""


class AuthFailed(SSHError):
    """The server refused our key."""


_TRACEBACK_LINE = re.compile(r"^(\s|Traceback \(|During handling of|The above exception|[\w.]*(Error|Exception|Exit|"
                             r"Interrupt|timeout)\b(:|$))")


class _ParamikoRelay(logging.Handler):
    """paramiko logs at ERROR, line by line, every traceback of its transport thread ("Socket exception",
    "Secsh channel N open FAILED" during every reconnect). With no logging configured Python prints them on
    the terminal. They go to ``hilbed.ssh.paramiko`` instead, at INFO (the run's ssh.log keeps them; the
    terminal's last-resort handler does not print INFO), and the traceback lines only at DEBUG: the
    transport's own errors already name the node and the fix."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record must not take the transport thread down
            return
        if not msg.strip() or _TRACEBACK_LINE.match(msg):
            paramiko_log.debug("paramiko traceback: %s", msg)
        else:
            paramiko_log.info("paramiko %s: %s", record.levelname.lower(), msg)


def _quiet_paramiko() -> None:
    """Route paramiko's logger through :class:`_ParamikoRelay`, once (WARNING and up only)."""
    plog = logging.getLogger("paramiko")
    if any(isinstance(h, _ParamikoRelay) for h in plog.handlers):
        return
    plog.addHandler(_ParamikoRelay())
    plog.propagate = False
    if plog.level == logging.NOTSET:
        plog.setLevel(logging.WARNING)


_quiet_paramiko()


class _RunLogs:
    """``<run>/logs/ssh.log``: this module's messages (paramiko's included) while a transport that started
    agents with their logs in that directory is open. Shared by transports, counted, removed on close."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[Path, list] = {}  # path -> [FileHandler, users]

    def acquire(self, path: Path) -> None:
        with self._lock:
            ent = self._handlers.get(path)
            if ent is None:
                try:
                    h = logging.FileHandler(path, encoding="utf-8", delay=True)
                except OSError:
                    return
                h.setLevel(logging.INFO)
                h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                log.addHandler(h)
                if log.getEffectiveLevel() > logging.INFO:
                    log.setLevel(logging.INFO)
                ent = self._handlers[path] = [h, 0]
            ent[1] += 1

    def release(self, path: Path) -> None:
        with self._lock:
            ent = self._handlers.get(path)
            if ent is None:
                return
            ent[1] -= 1
            if ent[1] <= 0:
                del self._handlers[path]
                log.removeHandler(ent[0])
                try:
                    ent[0].close()
                except OSError:
                    pass


_RUN_LOGS = _RunLogs()


def parse_jump(spec: str) -> tuple[str | None, str, int]:
    """``[user@]host[:port]`` -> (user, host, port)."""
    user = None
    rest = spec.strip()
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    port = 22
    if rest.startswith("["):  # [v6addr]:port
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = int(tail[1:])
    elif rest.count(":") == 1:
        host, p = rest.split(":")
        port = int(p)
    else:
        host = rest
    if not host or not 1 <= port <= 65535:
        raise ValueError(f"bad proxy_jump {spec!r} (expected [user@]host[:port])")
    return user or None, host, port


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH and paramiko name a host in known_hosts."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _sftp_path(p: str) -> str:
    """SFTP paths are relative to the login directory: ``~/x`` -> ``x``."""
    if p == "~":
        return "."
    if p.startswith("~/"):
        return p[2:]
    return p


class HintingRejectPolicy(paramiko.RejectPolicy):
    """Strict checking: refuse an unknown host key, naming the node and the fix.

    Behind a ``proxy_jump`` the controller cannot reach the node, so ``ssh-keyscan`` has to run on the
    gateway (its output is appended here); ``ssh -J`` is no way to record the key either, because options
    given on the command line (``UserKnownHostsFile``, ``-i``) do not apply to the jump hop.
    """

    def __init__(self, node: str, known_hosts: str, port: int, what: str = "node", jump: str | None = None,
                 key_file: str | None = None):
        self.node, self.known_hosts, self.port, self.what = node, known_hosts, port, what
        self.jump, self.key_file = jump, key_file

    def keyscan_command(self, hostname: str) -> str:
        """The shell command that records ``hostname``'s keys in our known_hosts (through the gateway if any)."""
        scan = f"ssh-keyscan -p {self.port} {shlex.quote(_bare(hostname))}"
        kh = local_shell_path(self.known_hosts)
        if not self.jump:
            return f"{scan} >> {kh}"
        guser, ghost, gport = parse_jump(self.jump)
        opts = f"-o UserKnownHostsFile={kh}" + (f" -i {local_shell_path(self.key_file)}" if self.key_file else "") + \
            (f" -p {gport}" if gport != 22 else "")
        return f"ssh {opts} {shlex.quote((guser + '@' if guser else '') + ghost)} {scan} >> {kh}"

    def missing_host_key(self, client, hostname, key):
        where = f" behind gateway {self.jump}" if self.jump else ""
        raise HostKeyError(
            self.node, f"{self.what} host key for {hostname}{where} is not in {self.known_hosts} "
                       f"({key.get_name()} {fingerprint(key)}); strict host-key checking refuses it",
            f"check the fingerprint on the node (ssh-keygen -lf /etc/ssh/ssh_host_{_key_file_kind(key)}_key.pub), then "
            f"`{self.keyscan_command(hostname)}`" + (" (ssh-keyscan runs on the gateway: this machine cannot "
                                                      "reach the node)" if self.jump else "") +
            ", or set `accept_new_host_keys: true` on this node to record it on first use")


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Like OpenSSH ``StrictHostKeyChecking=accept-new``: record unknown keys, refuse changed ones."""

    def __init__(self, node: str, known_hosts: str):
        self.node, self.known_hosts = node, known_hosts

    def missing_host_key(self, client, hostname, key):
        path = Path(self.known_hosts).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with open(path, "a", encoding="ascii") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            fcntl.flock(f, fcntl.LOCK_UN)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("node %s: recorded new host key %s %s for %s in %s", self.node, key.get_name(), fingerprint(key),
                    hostname, path)


def _bare(hostname: str) -> str:
    return hostname[1:].split("]")[0] if hostname.startswith("[") else hostname


def _key_file_kind(key: paramiko.PKey) -> str:
    name = key.get_name()
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(name, "ecdsa" if "ecdsa" in name else name)


class _GatewayPool:
    """One connection per gateway, shared by every node behind it (like ControlMaster)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[tuple, list] = {}  # key -> [Connection, refcount, lock]

    def acquire(self, key: tuple, make) -> tuple[Connection, threading.Lock]:
        with self._lock:
            ent = self._conns.get(key)
            if ent is None:
                ent = self._conns[key] = [make(), 0, threading.Lock()]
            ent[1] += 1
            return ent[0], ent[2]

    def release(self, key: tuple) -> None:
        with self._lock:
            ent = self._conns.get(key)
            if ent is None:
                return
            ent[1] -= 1
            if ent[1] <= 0:
                del self._conns[key]
                try:
                    ent[0].close()
                except Exception:
                    pass


_GATEWAYS = _GatewayPool()


class _ChannelStdin(io.RawIOBase):
    """The agent's stdin: writes go straight to the channel; close() sends EOF (once)."""

    def __init__(self, chan: paramiko.Channel):
        super().__init__()
        self.chan = chan

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed agent stdin")
        self.chan.sendall(bytes(data))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self.chan.shutdown_write()  # EOF: the agent tears down
            except Exception:
                pass
        super().close()


class SSHAgentProcess(AgentProcess):
    """An agent on an SSH exec channel: stdin/stdout are the channel, stderr goes to a log file."""

    def __init__(self, transport: "SSHTransport", chan: paramiko.Channel, module: str, pidfile: str, log_path: Path):
        self.transport = transport
        self.chan = chan
        self.module = module
        self.pidfile = pidfile
        self.stdin = _ChannelStdin(chan)
        self.stdout = chan.makefile("rb")
        self.log_path = log_path
        self._remote_pid: int | None = None
        self._stderr = threading.Thread(target=self._pump_stderr, args=(log_path,), daemon=True,
                                        name=f"ssh-stderr-{transport.node}")
        self._stderr.start()

    def _pump_stderr(self, log_path: Path) -> None:
        with open(log_path, "ab") as f:
            while True:
                try:
                    data = self.chan.recv_stderr(65536)
                except (OSError, EOFError):
                    break
                if not data:
                    break
                f.write(data)
                f.flush()

    def alive(self) -> bool:
        return not (self.chan.closed or self.chan.exit_status_ready()) and self.transport.connected

    def wait(self, timeout: float) -> int | None:
        if not self.chan.status_event.wait(timeout):
            return None
        self._stderr.join(2.0)  # the agent's last words are in its log when wait() returns
        return self.chan.exit_status

    def remote_pid(self, timeout: float = 10) -> int | None:
        """The agent's process id on the node (read from its pid file)."""
        if self._remote_pid is None:
            r = self.transport.run(f"cat {self.pidfile}", timeout=timeout)
            if r.ok and r.stdout.strip().isdigit():
                self._remote_pid = int(r.stdout.strip())
        return self._remote_pid

    def kill(self) -> None:
        """Kill the remote process (if the node is reachable) and close the channel."""
        if self.transport.connected:
            mod = shlex.quote(self.module)
            try:
                self.transport.run(
                    f"p=$(cat {self.pidfile} 2>/dev/null) && [ -n \"$p\" ] && "
                    f"grep -q -- {mod} /proc/$p/cmdline 2>/dev/null && kill -KILL $p; rm -f {self.pidfile}",
                    timeout=10)
            except Exception as exc:  # unreachable: the node side tears down on EOF anyway
                log.debug("kill %s on %s: %s", self.module, self.transport.node, exc)
        try:
            self.chan.close()
        except Exception:
            pass

    @property
    def pid(self) -> int | None:
        return self._remote_pid


class SSHTransport(Transport):
    kind = "ssh"

    def __init__(self, node: str, cfg: Any, *, connect_timeout: float = CONNECT_TIMEOUT_S,
                 env: dict[str, str] | None = None):
        super().__init__(node)
        self.cfg = cfg
        self.user = cfg.user or getpass.getuser()
        self.connect_timeout = connect_timeout
        self.known_hosts = cfg.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        self.workdir = cfg.workdir
        self.extra_env = {**(getattr(cfg, "env", None) or {}), **(env or {})}
        self._lock = threading.RLock()
        self._gw_key: tuple | None = None
        self._gw_lock: threading.Lock | None = None
        self._conn = self._make_connection(cfg.host, cfg.port, self.user, gateway=self._gateway())
        self._sftp: paramiko.SFTPClient | None = None
        self._watchdog: threading.Thread | None = None
        self._stop = threading.Event()
        self.connects = 0
        self.last_error: str | None = None
        self._run_logs: set[Path] = set()

    # -- connection -------------------------------------------------------
    def _policy(self, port: int, what: str = "node") -> paramiko.MissingHostKeyPolicy:
        if self.cfg.accept_new_host_keys:
            return AcceptNewPolicy(self.node, self.known_hosts)
        jump = self.cfg.proxy_jump if what == "node" else None
        if jump:
            try:
                parse_jump(jump)
            except ValueError:
                jump = None
        if jump:  # the gateway's user defaults to the node's, as in _gateway()
            guser, ghost, gport = parse_jump(jump)
            jump = f"{guser or self.user}@{ghost}" + (f":{gport}" if gport != 22 else "")
        return HintingRejectPolicy(self.node, self.known_hosts, port, what, jump=jump, key_file=self.cfg.key_file)

    def _make_connection(self, host: str, port: int, user: str, gateway: Connection | None,
                         what: str = "node") -> Connection:
        kwargs: dict[str, Any] = {"allow_agent": True, "banner_timeout": self.connect_timeout,
                                  "auth_timeout": self.connect_timeout, "channel_timeout": self.connect_timeout}
        if self.cfg.key_file:
            kwargs["key_filename"] = os.path.expanduser(self.cfg.key_file)
            kwargs["look_for_keys"] = False
        # ssh_config files are not read: the testbed file is the one source of truth
        config = Config(overrides={"load_ssh_configs": False})
        conn = Connection(host, user=user, port=port, config=config, gateway=gateway if gateway else False,
                          connect_timeout=int(self.connect_timeout), connect_kwargs=kwargs)
        client = conn.client
        if self.cfg.known_hosts:
            kh = Path(self.cfg.known_hosts).expanduser()
            if kh.exists():
                client.load_host_keys(str(kh))
        else:
            client.load_system_host_keys()
        client.set_missing_host_key_policy(self._policy(port, what))
        return conn

    def _gateway(self) -> Connection | None:
        if not self.cfg.proxy_jump:
            return None
        try:
            guser, ghost, gport = parse_jump(self.cfg.proxy_jump)
        except ValueError as exc:
            raise SSHError(self.node, str(exc), "write proxy_jump as [user@]host[:port]") from None
        guser = guser or self.user
        self._gw_key = (guser, ghost, gport, self.cfg.key_file, self.known_hosts, self.cfg.accept_new_host_keys)
        conn, self._gw_lock = _GATEWAYS.acquire(
            self._gw_key, lambda: self._make_connection(ghost, gport, guser, None, what="gateway"))
        return conn

    @property
    def connected(self) -> bool:
        return self._conn.is_connected

    def connect(self) -> "SSHTransport":
        """Open the connection now (run/put/... do it on demand); errors name the node and the fix."""
        with self._lock:
            if self._conn.is_connected:
                return self
            self._close_sftp()
            if self._conn.client.get_transport() is not None:
                self._conn.client.close()  # a dead transport: start over
            t0 = time.monotonic()
            try:
                if self._conn.gateway and self._gw_lock is not None:
                    with self._gw_lock:
                        try:
                            self._conn.gateway.open()
                        except Exception as exc:
                            raise self._translate(exc, gateway=True) from None
                self._conn.open()
            except SSHError as exc:
                self.last_error = str(exc)
                self._conn.client.close()
                raise
            except Exception as exc:
                err = self._translate(exc)
                self.last_error = str(err)
                try:
                    self._conn.client.close()
                except Exception:
                    pass
                raise err from None
            tr = self._conn.transport
            tr.set_keepalive(max(1, int(self.cfg.keepalive_s)))
            self.connects += 1
            log.info("node %s: connected to %s in %.2f s", self.node, self.describe(), time.monotonic() - t0)
            self._start_watchdog(tr)
            return self

    def _translate(self, exc: BaseException, gateway: bool = False) -> SSHError:
        where = f"{self.user}@{self.cfg.host}:{self.cfg.port}"
        if gateway:
            where = f"gateway {self.cfg.proxy_jump}"
        if isinstance(exc, SSHError):
            return exc
        if isinstance(exc, paramiko.BadHostKeyException):
            name = known_hosts_name(exc.hostname, self.cfg.port) if not gateway else exc.hostname
            return HostKeyError(
                self.node, f"host key of {where} CHANGED: it offers {exc.key.get_name()} {fingerprint(exc.key)} but "
                           f"{self.known_hosts} has {fingerprint(exc.expected_key)} (a reinstalled node, or someone "
                           "in the middle); the connection was refused",
                f"if the node was reinstalled, verify the new fingerprint on it and remove the old entry: "
                f"`ssh-keygen -R '{name}' -f {self.known_hosts}`")
        if isinstance(exc, paramiko.AuthenticationException):
            key = f"key {self.cfg.key_file}" if self.cfg.key_file else "your keys / ssh-agent"
            return AuthFailed(self.node, f"authentication to {where} failed with {key}",
                              f"add the public key to ~{self.user}/.ssh/authorized_keys on the node "
                              "(ssh-copy-id), or set key_file")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return NodeUnreachable(self.node, f"{where} did not answer within {self.connect_timeout:g} s",
                                   "check that the node is powered and on the network (ping it, `ssh` to it)")
        if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
            reason = str(exc) or type(exc).__name__
            return NodeUnreachable(self.node, f"cannot connect to {where}: {reason}",
                                   "check that the node is up, sshd runs and the address/port are right")
        return NodeUnreachable(self.node, f"cannot connect to {where}: {type(exc).__name__}: {exc}")

    def _start_watchdog(self, tr: paramiko.Transport) -> None:
        self._stop.clear()
        self._watchdog = threading.Thread(target=self._watch, args=(tr,), daemon=True, name=f"ssh-watchdog-{self.node}")
        self._watchdog.start()

    def _watch(self, tr: paramiko.Transport) -> None:
        """Close the connection when the server stops answering (ServerAliveInterval/CountMax)."""
        interval = float(self.cfg.keepalive_s)
        while not self._stop.wait(interval) and tr.is_active():
            answered = threading.Event()

            def ask() -> None:
                try:
                    tr.global_request("keepalive@openssh.com", wait=True)
                finally:
                    answered.set()

            threading.Thread(target=ask, daemon=True, name=f"ssh-keepalive-{self.node}").start()
            if not answered.wait(interval * KEEPALIVE_MISSES) and not self._stop.is_set():
                log.warning("node %s: no answer to keepalives for %.0f s: closing the connection",
                            self.node, interval * KEEPALIVE_MISSES)
                self.last_error = "keepalive timeout"
                tr.close()
                return

    def reconnect(self) -> "SSHTransport":
        """Drop the current connection (if any) and open a new one."""
        with self._lock:
            self._stop.set()
            self._close_sftp()
            try:
                self._conn.client.close()
            except Exception:
                pass
            return self.connect()

    # -- commands ---------------------------------------------------------
    def run(self, cmd: str | list[str], timeout: float | None = 60, check: bool = False) -> CommandResult:
        text = cmd if isinstance(cmd, str) else shlex.join(cmd)
        self.connect()
        try:
            r = self._conn.run(text, hide=True, warn=True, timeout=timeout, in_stream=False, pty=False)
        except CommandTimedOut:
            raise subprocess.TimeoutExpired(text, timeout) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise NodeUnreachable(self.node, f"connection lost while running a command: {exc}") from None
        res = CommandResult(text, r.exited if r.exited is not None else -1, r.stdout, r.stderr)
        if check and not res.ok:
            raise RuntimeError(f"{self.node}: {text!r} failed ({res.returncode}): {res.stderr.strip()[:300]}")
        return res

    def sftp(self) -> paramiko.SFTPClient:
        with self._lock:
            self.connect()
            if self._sftp is None:
                self._sftp = self._conn.client.open_sftp()
            return self._sftp

    def _close_sftp(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
        self._conn._sftp = None

    def put(self, local: str | Path, remote: str) -> None:
        """Copy a file; written to ``remote.part`` then renamed, so a node never sees half a file."""
        sftp = self.sftp()
        dest = _sftp_path(remote)
        tmp = f"{dest}.part-{uuid.uuid4().hex[:6]}"
        try:
            sftp.put(str(local), tmp, confirm=True)
        except FileNotFoundError:
            self.makedirs(os.path.dirname(remote) or ".")
            sftp.put(str(local), tmp, confirm=True)
        try:
            sftp.posix_rename(tmp, dest)  # OpenSSH extension: atomic replace
        except OSError:
            try:
                sftp.remove(dest)
            except OSError:
                pass
            sftp.rename(tmp, dest)

    def makedirs(self, remote_dir: str) -> None:
        """``mkdir -p`` over SFTP (no remote shell is started)."""
        sftp = self.sftp()
        path = _sftp_path(remote_dir).rstrip("/")
        missing = []
        while path and path not in (".", "/"):
            try:
                sftp.stat(path)
                break
            except FileNotFoundError:
                missing.append(path)
                path = os.path.dirname(path)
        for p in reversed(missing):
            try:
                sftp.mkdir(p)
            except OSError:
                sftp.stat(p)  # created meanwhile by someone else is fine

    def get(self, remote: str, local: str | Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        self.sftp().get(_sftp_path(remote), str(local))

    # -- agents -----------------------------------------------------------
    @property
    def venv_python(self) -> str:
        return f"{self.workdir.rstrip('/')}/venv/bin/python"

    def agent_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        out = {k: os.environ[k] for k in FORWARD_ENV if os.environ.get(k)}
        out.update(self.extra_env)
        out.update(env or {})
        return out

    def start_agent(self, module: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> AgentProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        ssh_log = log_path.parent / "ssh.log"
        if ssh_log not in self._run_logs:
            self._run_logs.add(ssh_log)
            _RUN_LOGS.acquire(ssh_log)
        try:
            log_offset = log_path.stat().st_size
        except OSError:
            log_offset = 0
        wd = shell_path(self.workdir)
        token = f"{module}-{uuid.uuid4().hex[:10]}"
        pidfile = f"{wd}/run/{token}.pid"
        envs = self.agent_env(env)
        env_words = " ".join(shlex.quote(f"{k}={v}") for k, v in envs.items())
        shared = "".join(f"[ -d {shlex.quote(os.environ[k])} ] && export {k}={shlex.quote(os.environ[k])}; "
                         for k in FORWARD_DIRS if os.environ.get(k) and k not in envs)
        miss = shlex.quote(f"hilbed: node {self.node}: {self.workdir}/venv is missing: run `hilbed provision`")
        cmd = (f"cd {wd} 2>/dev/null && [ -x venv/bin/python ] || {{ echo {miss} >&2; exit 127; }}; {shared}"
               f"mkdir -p run && echo $$ > run/{token}.pid && "
               f"exec env {env_words} HILBED_ARTIFACTS=\"$PWD/artifacts\" venv/bin/python -I -u -m "
               f"{shlex.quote(module)} {' '.join(shlex.quote(a) for a in args)}")
        self.connect()
        try:
            chan = self._conn.transport.open_session(timeout=self.connect_timeout)
            chan.exec_command(cmd)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise NodeUnreachable(self.node, f"cannot start {module}: {exc}") from None
        log.info("node %s: started %s over SSH", self.node, module)
        proc = SSHAgentProcess(self, chan, module, pidfile, log_path)
        proc.log_offset = log_offset
        return proc

    # -- lifecycle --------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._stop.set()
            self._close_sftp()
            try:
                self._conn.close()
            except Exception:
                pass
            if self._gw_key is not None:
                _GATEWAYS.release(self._gw_key)
                self._gw_key = None
            for p in self._run_logs:
                _RUN_LOGS.release(p)
            self._run_logs.clear()

    def describe(self) -> str:
        via = f" via {self.cfg.proxy_jump}" if self.cfg.proxy_jump else ""
        return f"ssh {self.user}@{self.cfg.host}:{self.cfg.port}{via}"

    @property
    def connection(self) -> Connection:
        return self._conn


def connect_all(transports: Iterable[SSHTransport], jobs: int = 32) -> dict[str, SSHError | None]:
    """Open many connections in parallel; returns the error (or None) per node."""
    from concurrent.futures import ThreadPoolExecutor
    ts = list(transports)
    out: dict[str, SSHError | None] = {}
    if not ts:
        return out

    def one(t: SSHTransport) -> SSHError | None:
        try:
            t.connect()
            return None
        except SSHError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(ts)))) as ex:
        for t, err in zip(ts, ex.map(one, ts)):
            out[t.node] = err
    return out


def group_run(transports: Iterable[SSHTransport], cmd: str, timeout: float = 30) -> dict[str, CommandResult | Exception]:
    """The same command on many nodes at once (Fabric ``ThreadingGroup``); per node a result or an error."""
    ts = list(transports)
    errors = connect_all(ts)
    live = [t for t in ts if errors.get(t.node) is None]
    out: dict[str, CommandResult | Exception] = {t.node: errors[t.node] for t in ts if errors.get(t.node) is not None}
    if not live:
        return out
    by_conn = {id(t.connection): t for t in live}
    group = ThreadingGroup.from_connections([t.connection for t in live])
    try:
        results = group.run(cmd, hide=True, warn=True, timeout=timeout, in_stream=False)
    except GroupException as exc:
        results = exc.result
    for conn, r in results.items():
        t = by_conn[id(conn)]
        if isinstance(r, BaseException):
            out[t.node] = r if isinstance(r, SSHError) else NodeUnreachable(t.node, f"{cmd!r}: {r}")
        else:
            out[t.node] = CommandResult(cmd, r.exited if r.exited is not None else -1, r.stdout, r.stderr)
    return out
