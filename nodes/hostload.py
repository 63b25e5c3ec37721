"""How busy a host is: the facts a timing measurement needs beside it (CPU count, load, governor, rivals).

Read on the controller and on every node before and after a run, so a report
can say when latencies were measured on an overloaded machine and whether the
shaper could get real-time priority. Linux /proc and /sys only; a fact that
cannot be read is None, never a guess.
"""

from __future__ import annotations

import os
from pathlib import Path


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def running_processes() -> int | None:
    """Processes runnable right now (``procs_running`` of /proc/stat, this reader included)."""
    stat = _read("/proc/stat")
    if stat is None:
        return None
    for line in stat.splitlines():
        if line.startswith("procs_running "):
            return int(line.split()[1])
    return None


def rt_priority_allowed() -> bool:
    """Whether this process may use SCHED_FIFO (root, or an RLIMIT_RTPRIO above 0): the shaper's precise releases."""
    if os.geteuid() == 0:
        return True
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
        return soft != 0
    except (ImportError, AttributeError, ValueError, OSError):
        return False


def host_load() -> dict:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "load_avg": load,
            "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "busy_processes": running_processes(), "rt_priority": rt_priority_allowed()}


def overloaded(facts: dict | None) -> str | None:
    """A one-line reason when the 1-minute load exceeds the CPU count, else None."""
    if not facts or not facts.get("load_avg") or not facts.get("cpus"):
        return None
    one = facts["load_avg"][0]
    if one > facts["cpus"]:
        return f"load average {one:g} on {facts['cpus']} CPUs ({one / facts['cpus']:.1f}x)"
    return None
