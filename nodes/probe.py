"""Probe agent for ``hilbed check``: ``python -m hilbed.nodes.probe`` on a node.

Speaks the normal agent protocol (so the clock probe is the same NTP-style
exchange the runner uses) and answers one ``check`` op with the node's facts:
Python, free disk, whether the radio's serial port exists and opens, iperf3,
GPU, uptime and boot time, and the provision marker. Standard library only
(torch is imported only when a GPU check is asked for).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time

from hilbed.nodes.agent import Agent, run_agent
from hilbed.nodes.hostload import rt_priority_allowed

SERIAL_FIXES = {
    errno.ENOENT: "plug the board in and check the path (ls -l /dev/serial/by-id/)",
    errno.EACCES: "let the user open it: sudo usermod -aG dialout $USER, then log in again",
    errno.EPERM: "let the user open it: sudo usermod -aG dialout $USER, then log in again",
    errno.EBUSY: "another process holds the port: find it with fuser -v PORT and stop it",
    errno.ENXIO: "the device node exists but no device answers: replug the board",
    errno.EIO: "the device node exists but no device answers: replug the board",
}


def serial_status(port: str, timeout: float = 2.0) -> dict:
    """Does the radio's port exist and open? Nothing is written to it."""
    if port == "emulated":
        return {"ok": True, "detail": "emulated"}
    if "://" in port:
        scheme, _, rest = port.partition("://")
        hostport = rest.split("/")[0].split("?")[0]
        host, _, p = hostport.rpartition(":")
        if scheme in ("socket", "rfc2217") and p.isdigit():
            try:
                with socket.create_connection((host, int(p)), timeout=timeout):
                    return {"ok": True, "detail": f"{scheme} server answers"}
            except OSError as exc:
                return {"ok": False, "detail": f"{hostport}: {exc.strerror or exc}",
                        "fix": "start the serial server (ser2net) on the host that has the board"}
        return {"ok": None, "detail": f"{scheme}:// not checked"}
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return {"ok": False, "detail": f"{os.strerror(exc.errno)}", "errno": exc.errno,
                "fix": SERIAL_FIXES.get(exc.errno, "check the device")}
    try:
        tty = os.isatty(fd)
    finally:
        os.close(fd)
    real = os.path.realpath(port)
    detail = ("opens" if tty else "opens (not a tty)") + (f" -> {real}" if real != port else "")
    out = {"ok": True, "detail": detail}
    if not port.startswith("/dev/serial/by-id/") and real.startswith("/dev/tty"):
        out["warn"] = "prefer the stable /dev/serial/by-id/... name: ttyACM numbers change across reboots"
    return out


def gpu_status(mode: str) -> dict:
    """``torch``: CUDA through torch (slow: imports torch); ``driver``: an NVIDIA device node exists."""
    if mode == "torch":
        try:
            import torch
        except ImportError as exc:
            return {"ok": False, "detail": f"no torch ({exc})", "fix": "provision the node with the edge extras"}
        if torch.cuda.is_available():
            return {"ok": True, "detail": f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})",
                    "cuda": True}
        return {"ok": False, "detail": f"torch {torch.__version__}: no CUDA device", "cuda": False,
                "fix": "install the NVIDIA driver and a CUDA build of torch, or set device: cpu/auto"}
    present = os.path.exists("/dev/nvidia0") or bool(_listdir("/proc/driver/nvidia/gpus"))
    return {"ok": True if present else None, "detail": "NVIDIA device present" if present else "no GPU: CPU inference",
            "cuda": present}


def _listdir(p: str) -> list[str]:
    try:
        return os.listdir(p)
    except OSError:
        return []


def boot_time() -> int | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def uptime_s() -> float | None:
    try:
        with open("/proc/uptime") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


class ProbeAgent(Agent):
    name = "probe"

    def op_check(self, workdir: str | None = None, serial: str | None = None, iperf3: bool = False,
                 gpu: str | None = None) -> dict:
        where = os.path.expanduser(workdir) if workdir else os.getcwd()
        probe_dir = where
        while not os.path.exists(probe_dir) and probe_dir not in ("/", ""):
            probe_dir = os.path.dirname(probe_dir)
        du = shutil.disk_usage(probe_dir or "/")
        out: dict = {
            "hostname": platform.node(), "python": platform.python_version(), "executable": sys.executable,
            "platform": platform.platform(), "machine": platform.machine(), "disk_free_bytes": du.free,
            "disk_path": probe_dir, "uptime_s": uptime_s(), "boot_time": boot_time(), "time_ns": time.time_ns(),
            "rt_priority": rt_priority_allowed(),
        }
        if serial:
            out["serial"] = serial_status(serial)
        if iperf3:
            path = shutil.which("iperf3")
            st: dict = {"ok": bool(path), "detail": path or "not installed"}
            if path:
                try:
                    v = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
                    st["detail"] = (v.stdout.splitlines() or [path])[0]
                except (OSError, subprocess.TimeoutExpired):
                    pass
            else:
                st["fix"] = "sudo apt install iperf3"
            out["iperf3"] = st
        if gpu:
            out["gpu"] = gpu_status(gpu)
        if workdir:
            try:
                with open(os.path.join(where, "provision.json")) as f:
                    out["marker"] = json.load(f)
            except (OSError, ValueError):
                out["marker"] = None
        return out


if __name__ == "__main__":
    run_agent(ProbeAgent)
