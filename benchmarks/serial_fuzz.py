#!/usr/bin/env python3
"""Serial fuzzer over the radio path's decoders, as JSON counts per decoder.

Feeds ``--bytes`` of seeded input -- pure random bytes, and a mix of clean
frames, corrupted and truncated frames, special-byte bursts and noise -- in
random-sized reads into the HDLC-Lite decoder, a SpinelRadio's receive path
(HDLC + every Spinel parser), the Wireless UART decoder and the
MessageReceiver (Spinel MAC frames from three interleaved clients plus
hostile fragments; and the wuart byte stream).  The engine is
``hilbed.firmware_bridge.fuzz``; the seeded regression tests in
``tests/firmware_bridge/test_serial_fuzz.py`` use the same code.

Per decoder and mode: bytes, frames_planted (clean frames / messages that
must come out), frames_ok, recovered (planted ones decoded intact, in
order), late (planted frames held back past the read that completed them),
bad (bad input counted), garbage_bytes, exceptions (must be 0),
accounting_ok (the decoder's conservation law held) and seconds.  Exit
status 1 if any exception escaped, a planted frame was lost or late, or the
accounting failed.

    python benchmarks/serial_fuzz.py [--bytes 1000000] [--seed 1] [--targets hdlc,spinel,...]
        [--modes random,mixed] [--counters]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hilbed.firmware_bridge import fuzz  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bytes", type=int, default=1_000_000, help="input bytes per decoder and mode")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", default=",".join(fuzz.TARGETS), help="comma-separated subset of "
                    + ", ".join(fuzz.TARGETS))
    ap.add_argument("--modes", default="random,mixed")
    ap.add_argument("--counters", action="store_true", help="include every decoder counter")
    args = ap.parse_args(argv)
    results: dict[str, dict[str, dict]] = {}
    ok = True
    t0 = time.perf_counter()
    for target in args.targets.split(","):
        fn = fuzz.TARGETS[target]
        for mode in args.modes.split(","):
            res = fn(args.bytes, seed=args.seed, mode=mode)
            d = res.as_dict()
            for k in ("target", "mode", "seed"):
                d.pop(k)
            if not args.counters:
                d.pop("counters")
            if d["first_exception"] is None:
                d.pop("first_exception")
            d["seconds"] = round(d["seconds"], 4)
            results.setdefault(target, {})[mode] = d
            ok &= (res.exceptions == 0 and res.accounting_ok and res.late == 0
                   and res.recovered == res.frames_planted)
    print(json.dumps({"bytes_per_run": args.bytes, "seed": args.seed, "python": platform.python_version(),
                      "ok": ok, "total_seconds": round(time.perf_counter() - t0, 3), "results": results},
                     indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
