"""Provisioning wall time vs number of SSH hosts (namespace lab, real sshd). Prints JSON.

For each size: bring up a lab of N hosts, provision cold (nothing on the
hosts; the wheel already built, its one-off build time is reported apart),
provision again warm, then run the node check with its clock probe (NTP-style,
minimum-RTT of 8 samples over each host's SSH agent channel) and report the
offset uncertainties. Needs root, iproute2 and openssh-server.

    sudo .venv/bin/python benchmarks/provision_scale.py [--sizes 4 16 32] [--repeat 1]

Goals (issue): 32 hosts warm <= 15 s; 32 cold <= 2.5 x the 4-host cold time.
All hosts share this machine's CPUs, so cold time grows with the per-host CPU
work (sshd, Python start-up, venv, unpacking), which real nodes do in parallel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hilbed.orchestrator.config import load_testbed  # noqa: E402
from hilbed.orchestrator.lab.check import check_testbed  # noqa: E402
from hilbed.orchestrator.lab.netns_lab import NetnsLab, default_roles, unavailable_reason  # noqa: E402
from hilbed.orchestrator.lab.provision import build_wheel, provision  # noqa: E402


def measure(n: int, repeat: int, installer: str) -> dict:
    out: dict = {"hosts": n, "cold_s": [], "warm_s": []}
    for _ in range(repeat):
        lab = NetnsLab(n, name="hbb", subnet=200, roles=default_roles(n))
        lab.up(timeout=60)
        try:
            with tempfile.TemporaryDirectory() as d:
                tb = load_testbed(lab.write_testbed(Path(d) / "tb.yaml"))
                t0 = time.monotonic()
                cold = provision(tb, installer=installer)
                out["cold_s"].append(round(time.monotonic() - t0, 3))
                assert cold.ok and {r.state for r in cold.results.values()} == {"cold"}, \
                    {k: r.error for k, r in cold.results.items() if r.error}
                t0 = time.monotonic()
                warm = provision(tb)
                out["warm_s"].append(round(time.monotonic() - t0, 3))
                assert warm.ok and {r.state for r in warm.results.values()} == {"warm"}
                t0 = time.monotonic()
                checks = check_testbed(tb, clock=True)
                out.setdefault("check_s", []).append(round(time.monotonic() - t0, 3))
                unc = [c.clock["uncertainty_ns"] / 1e3 for c in checks if c.clock]
                offs = [abs(c.clock["offset_ns"]) / 1e3 for c in checks if c.clock]
                out["clock"] = {"hosts_probed": len(unc), "uncertainty_us_median": round(statistics.median(unc), 1),
                                "uncertainty_us_max": round(max(unc), 1),
                                "abs_offset_us_max": round(max(offs), 1)}
                out["per_host_cold_s_median"] = round(statistics.median(r.seconds for r in cold.results.values()), 3)
        finally:
            lab.down()
    out["cold_s_best"] = min(out["cold_s"])
    out["warm_s_best"] = min(out["warm_s"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 32])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--installer", choices=("unpack", "pip"), default="unpack")
    a = ap.parse_args()
    why = unavailable_reason()
    if why:
        print(json.dumps({"skipped": why}))
        return 0
    t0 = time.monotonic()
    wheel = build_wheel(force=True)
    build_s = round(time.monotonic() - t0, 3)
    res = {"benchmark": "provision_scale", "host": platform.node(), "cpus": os.cpu_count(),
           "load_avg_1m_start": round(os.getloadavg()[0], 2), "installer": a.installer,
           "wheel_build_s": build_s, "wheel_bytes": wheel.path.stat().st_size, "sizes": []}
    for n in a.sizes:
        res["sizes"].append(measure(n, a.repeat, a.installer))
    by = {s["hosts"]: s for s in res["sizes"]}
    if 4 in by and 32 in by:
        res["goals"] = {
            "warm_32_s": by[32]["warm_s_best"], "warm_32_le_15s": by[32]["warm_s_best"] <= 15,
            "cold_32_over_cold_4": round(by[32]["cold_s_best"] / by[4]["cold_s_best"], 2),
            "cold_32_le_2.5x_cold_4": by[32]["cold_s_best"] <= 2.5 * by[4]["cold_s_best"],
            "cold_32_over_cold_4_incl_build": round((by[32]["cold_s_best"] + build_s) /
                                                    (by[4]["cold_s_best"] + build_s), 2),
        }
    res["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
