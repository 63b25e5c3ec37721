"""``python -m hilbed.firmware_bridge.emulator``: emulated nRF52840 radios on pseudo-terminals.

Prints one host-side device path per radio on stdout (then flushes), and
runs until SIGTERM/SIGINT, or until stdin reaches EOF when stdin is a pipe
(so a parent that dies takes the emulator with it).  Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys

from .core import Emulator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hilbed.firmware_bridge.emulator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=["spinel", "wuart"], required=True,
                   help="firmware to emulate: OpenThread RCP (spinel) or Nordic Wireless UART (wuart)")
    p.add_argument("--radios", type=int, default=2, help="number of radios (default 2)")
    p.add_argument("--baud", type=int, default=None,
                   help="serial rate modelled on each pty (default 1000000 spinel, 230400 wuart)")
    p.add_argument("--medium-file", default=None,
                   help='JSON file with the interference load, e.g. {"load": 0.4, "t": 1700000000}; re-read ~10x/s')
    p.add_argument("--seed", type=int, default=None, help="random seed (backoffs, interference)")
    p.add_argument("--burst-ms", type=float, default=4.0, help="mean interference burst length in ms")
    p.add_argument("--channel", type=int, default=11, help="wuart radio channel (compile-time in the firmware)")
    p.add_argument("--wuart-msdu", type=int, default=100, help="max UART bytes per radio frame (wuart)")
    p.add_argument("--frame-log", default=None,
                   help="write one JSON line per frame event (tx with its outcome, CCA busy, retry...) to this file")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    emulator = Emulator(args.protocol, args.radios, baud=args.baud, medium_file=args.medium_file, seed=args.seed,
                        burst_ms=args.burst_ms, channel=args.channel, wuart_max_msdu=args.wuart_msdu,
                        frame_log=args.frame_log)

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        emulator.loop.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    try:
        stdin_is_pipe = stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        stdin_is_pipe = False
    if stdin_is_pipe:
        def _stdin_readable() -> None:
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            if not data:
                emulator.loop.remove_reader(0)
                emulator.loop.stop()

        emulator.loop.add_reader(0, _stdin_readable)

    for path in emulator.ports:
        sys.stdout.write(path + "\n")
    sys.stdout.flush()
    try:
        emulator.run_forever()
    finally:
        emulator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
