"""Host load facts: read from /proc, and the overload rule the report and console use."""

from __future__ import annotations

import os

from hilbed.nodes.hostload import host_load, overloaded


def test_host_load_reads_this_machine():
    f = host_load()
    assert f["cpus"] == os.cpu_count() and len(f["load_avg"]) == 3 and f["busy_processes"] >= 1
    assert f["rt_priority"] == (os.geteuid() == 0) or f["rt_priority"] in (True, False)


def test_overloaded_when_the_one_minute_load_exceeds_the_cpus():
    assert overloaded({"cpus": 2, "load_avg": [5.0, 3.0, 1.0]}) == "load average 5 on 2 CPUs (2.5x)"
    assert overloaded({"cpus": 2, "load_avg": [1.9, 3.0, 1.0]}) is None
    assert overloaded({"cpus": 2, "load_avg": None}) is None and overloaded(None) is None
