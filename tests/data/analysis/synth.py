"""Synthetic run directories for the analysis tests (deterministic, no testbed needed).

``make_run`` writes manifest.json + trials.jsonl the way the runner does, from a
simple model of the lab: an 802.15.4-like link whose capacity the jammer
takes a share of, a deadline that cuts transmission, a classifier whose
accuracy grows with the share of bytes that arrived. Every number is drawn
from a seeded generator, so a test can rebuild the same run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

T0_NS = 1_800_000_000_000_000_000
MS = 1_000_000

CODECS = [  # label, family, mean bytes, chunks, progressive, accuracy when complete
    ("jpeg-q20", "jpeg", 420, 1, False, 0.80),
    ("jpeg-q80", "jpeg", 900, 1, False, 0.93),
    ("pjpeg-q80", "jpeg-progressive", 1000, 5, True, 0.93),
]
CONDITIONS = [  # name, jamming level, deadline ms, jammer load
    ("r64-none", "none", 150.0, None),
    ("r64-light", "light", 150.0, 0.25),
    ("r64-heavy", "heavy", 150.0, 0.6),
    ("r64-none-d80", "none", 80.0, None),
    ("r64-none-d300", "none", 300.0, None),
]
JAM_MBPS = {"light": 4.0, "heavy": 9.5}


def _tid(*parts) -> str:
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


def records(run_id: str, seed: int = 0, n_images: int = 30, codecs=CODECS, conditions=CONDITIONS,
            rate_kbps: float = 64.0, period_ms: float = 150.0, slow: dict | None = None,
            worse: dict | None = None) -> list[dict]:
    """``slow[(label, cond)] = factor`` stretches transmit; ``worse[(label, cond)] = p`` flips correct answers."""
    rng = np.random.default_rng(seed)
    slow, worse = slow or {}, worse or {}
    out = []
    t = T0_NS
    for cname, jam, deadline, load in conditions:
        for label, fam, mean_b, chunks, prog, acc in codecs:
            tid = _tid("synthetic", label, cname, 0)
            for i in range(n_images):
                arrival = t
                t += int(period_ms * MS)
                # every draw happens for every image, so injected changes do not shift the random stream
                u_b, u_enc, u_tx, u1, u_flip, u5, u_lab = (rng.normal(), rng.random(), rng.exponential(2.0),
                                                          rng.random(), rng.random(), rng.random(), rng.random())
                b = int(max(60, mean_b + 0.08 * mean_b * u_b))
                enc = 1.0 + 2.0 * u_enc + (4.0 if prog else 0.0)
                cap = rate_kbps * (1 - (load or 0.0))
                tx_ms = (b * 8 / cap + 5.0 + u_tx) * slow.get((label, cname), 1.0)
                budget = deadline - enc
                if tx_ms <= budget:
                    delivered, close_ms, met = b, enc + tx_ms, True
                else:
                    frac = max(0.0, budget - 5.0) / (tx_ms - 5.0)
                    delivered, close_ms, met = int(b * frac), deadline, False
                c_del = chunks if met else int(chunks * delivered / b)
                decoded = met or (prog and c_del >= 1)
                p_ok = acc * (1.0 if met else (0.5 + 0.5 * c_del / chunks) if decoded else 0.0)
                ok1 = bool(decoded and u1 < p_ok)
                if ok1 and u_flip < worse.get((label, cname), 0.0):
                    ok1 = False
                ok5 = bool(decoded and (ok1 or u5 < 0.8))
                label_cls = int(u_lab * 10)
                top1 = label_cls if ok1 else (label_cls + 1) % 10
                top5 = [top1] + [(label_cls + k) % 10 for k in range(2, 6)]
                if ok5 and label_cls not in top5:
                    top5[-1] = label_cls
                if not ok5:
                    top5 = [(label_cls + k) % 10 for k in range(1, 6)]
                dec_ms, inf_ms, ret_ms = rng.uniform(0.5, 1.5), rng.uniform(3.0, 5.0), rng.uniform(1.5, 3.0)
                ns = lambda ms: arrival + int(ms * MS)  # noqa: E731
                out.append({
                    "run_id": run_id, "trial_id": tid, "scenario": "synthetic", "codec": fam, "codec_label": label,
                    "codec_params": "{}", "condition": cname, "jamming_level": jam, "link_kind": "radio",
                    "link_rate_kbps": rate_kbps, "trace_name": None, "link_delay_ms": 5.0, "deadline_ms": deadline,
                    "period_ms": period_ms, "repetition": 0, "client": "client-1", "image_index": i,
                    "label": label_cls, "bytes_total": b, "header_bytes": 100, "bytes_delivered": delivered,
                    "wire_bytes_sent": delivered + 20, "chunks_total": chunks, "chunks_delivered": c_del,
                    "packets_sent": b // 100 + 1, "packets_lost": 0, "retries": 0, "rssi_dbm": -60.0,
                    "t_arrival_ns": arrival, "t_encode_start_ns": ns(0.2), "t_encode_end_ns": ns(enc),
                    "t_tx_start_ns": ns(enc), "t_tx_end_ns": ns(close_ms - 5.0 if met else deadline),
                    "t_rx_end_ns": ns(close_ms), "t_edge_close_ns": ns(close_ms),
                    "t_decode_end_ns": ns(close_ms + dec_ms), "t_infer_end_ns": ns(close_ms + dec_ms + inf_ms),
                    "t_result_ns": ns(close_ms + dec_ms + inf_ms + ret_ms), "deadline_met": met,
                    "decoded": decoded, "top1": top1 if decoded else None, "top5": top5 if decoded else [],
                    "top1_prob": 0.7, "correct1": ok1, "correct5": ok5,
                    "jammer_load": load, "jammer_mbps": JAM_MBPS.get(jam), "client_clock_offset_ns": -5000,
                    "edge_clock_offset_ns": -6000, "clock_uncertainty_ns": 50_000,
                    "close_reason": "end" if met else "deadline", "error": None,
                    # the emulated meter's model (docs/energy.md), drawn from no random numbers
                    "energy_encode_mj": round((2700.0 + 925.0) * (enc - 0.2) / 1e3, 6),
                    "energy_tx_mj": round(14.4 * ((close_ms - 5.0 if met else deadline) - enc) / 1e3, 6),
                    "power_samples": 0, "power_missed": 0, "power_flagged": 0, "power_idle_mw": 2700.0,
                    "power_meter": "emulated",
                })
    return out


def manifest(run_id: str, n_images: int, n_records: int, thresholds: dict | None = None, codecs=CODECS,
             conditions=CONDITIONS) -> dict:
    parsed = {
        "name": "synthetic", "description": "synthetic lab run for the analysis tests",
        "stream": {"period_ms": 150.0},
        "codecs": [{"codec": fam, "params": {}, "label": lb} for lb, fam, *_ in codecs],
        "conditions": [{"name": c, "jamming": j, "deadline_ms": d,
                        "link": {"kind": "radio", "rate_kbps": 64.0, "delay_ms": 5.0}} for c, j, d, _ in conditions],
        "jamming_levels": {"light": {"bitrate_mbps": 4.0}, "heavy": {"bitrate_mbps": 10.0}},
        "thresholds": thresholds or {"top1_drop_points": 1.0, "p95_latency_increase_pct": 10.0,
                                     "miss_rate_increase_points": 2.0},
        "repetitions": 1,
    }
    return {
        "run_id": run_id, "state": "complete", "hilbed_version": "0.1.0",
        "testbed": {"name": "lab", "parsed": {"name": "lab", "nodes": {
            "rpi4": {"roles": ["client"], "transport": {"kind": "ssh", "host": "rpi4.lab"},
                     "radio": {"protocol": "wuart", "port": "/dev/serial/by-id/nrf52840-a", "channel": 15}},
            "gpu": {"roles": ["edge"], "transport": {"kind": "local"}},
            "rpi3": {"roles": ["jammer"], "transport": {"kind": "ssh", "host": "rpi3.lab"}}}}},
        "scenario": {"name": "synthetic", "path": "scenarios/synthetic.yaml", "text": "name: synthetic\n",
                     "parsed": parsed},
        "git": {"sha": "0123456789abcdef0123456789abcdef01234567", "dirty": False, "branch": "main"},
        "versions": {"python": "3.11.7", "hilbed": "0.1.0"},
        "host": {"hostname": "ctl"},
        "plan": {"images": n_records},
        "started_at": "2027-01-15T10:00:00+0000", "finished_at": "2027-01-15T10:05:00+0000",
        "clock_offsets": {"rpi4": {"before": {"offset_ns": -5000, "uncertainty_ns": 25000, "rtt_ns": 50000, "samples": 8},
                                   "after": {"offset_ns": -9000, "uncertainty_ns": 25000, "rtt_ns": 50000, "samples": 8}},
                          "gpu": {"before": {"offset_ns": -6000, "uncertainty_ns": 25000, "rtt_ns": 50000, "samples": 8},
                                  "after": {"offset_ns": -6500, "uncertainty_ns": 25000, "rtt_ns": 50000, "samples": 8}}},
        "records": n_records,
    }


def write_run(root: Path, recs: list[dict], man: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(man, indent=1), encoding="utf-8")
    with open(root / "trials.jsonl", "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    return root


def make_run(parent: Path, run_id: str = "synthetic-20270115-100000-aaaa", seed: int = 0, n_images: int = 30,
             thresholds: dict | None = None, **kw) -> Path:
    recs = records(run_id, seed=seed, n_images=n_images, **kw)
    return write_run(Path(parent) / run_id, recs,
                     manifest(run_id, n_images, len(recs), thresholds, kw.get("codecs", CODECS),
                              kw.get("conditions", CONDITIONS)))


_CACHE: dict[str, Path] = {}


def cached_report(tmp_path_factory, name: str = "synthetic", **kw) -> Path:
    """One synthetic run + report per test session (figures take seconds), shared by the test modules."""
    if name not in _CACHE or not _CACHE[name].exists():
        from hilbed.analysis.report import build_report
        run = make_run(tmp_path_factory.mktemp(name), **kw)
        _CACHE[name] = build_report([run])
    return _CACHE[name]
