"""``hilbed flash NODE --image FILE``: flash a node's radio with the vendor tool, then re-read its firmware.

Exit status: 0 flashed and the radio reports the expected firmware; 1 the
tool is missing or failed, the identity could not be read, or it is not the
one testbed.yaml expects (one line on stderr); 2 bad input (unknown node,
no or emulated radio, a tool that cannot program that board, a wrong image
type) -- nothing was run.
"""

from __future__ import annotations

import sys

from hilbed.orchestrator.cli.output import add_json_flag, emit, wants_json


def cmd_flash(args) -> int:
    from hilbed.orchestrator.config import load_testbed
    from hilbed.orchestrator.lab.flash import FlashError, FlashInputError, flash_node

    tb = load_testbed(args.testbed)
    if args.node not in tb.nodes:
        print(f"hilbed flash: no node {args.node!r} in {args.testbed} (nodes: {', '.join(tb.nodes)})", file=sys.stderr)
        return 2
    try:
        res = flash_node(args.node, tb.nodes[args.node], args.image, board=args.board, tool=args.tool,
                         port=args.port, probe=args.probe, remote_dir=args.remote_dir, settle_s=args.settle)
    except FlashError as exc:
        print(f"hilbed flash: {exc}", file=sys.stderr)
        if wants_json(args):
            emit(args, {"ok": False, "node": args.node, "error": str(exc)})
        return 2 if isinstance(exc, FlashInputError) else 1
    if res.error:
        print(f"hilbed flash: {res.error}", file=sys.stderr)
    if wants_json(args):
        emit(args, res.as_dict())
    else:
        ident = res.identity or {}
        print(f"{res.node}: flashed {res.image} with {res.tool} ({res.board})")
        print(f"  firmware: {res.found}")
        if ident.get("hwaddr"):
            print(f"  hwaddr:   {ident['hwaddr']}")
        if res.expected:
            print(f"  expected: {res.expected} ({'ok' if res.firmware_ok else 'MISMATCH'})")
    return 0 if res.ok else 1


def register(sub) -> None:
    """Add ``hilbed flash``."""
    p = sub.add_parser("flash", help="flash a node's radio firmware with the vendor tool and re-read its version",
                       description="Copy the image to the node the board hangs off, run the vendor "
                       "tool there (nrfutil DFU for a dongle, nrfjprog or pyocd for a DK), then re-read the "
                       "radio's firmware identity and compare it with radio.firmware in testbed.yaml.")
    p.add_argument("node", help="testbed node whose radio to flash")
    p.add_argument("--image", required=True, help="firmware image on this machine (.hex; .zip DFU package for nrfutil)")
    p.add_argument("--testbed", "-t", default=None, help="testbed YAML (default testbed.yaml)")
    p.add_argument("--board", choices=["dongle", "dk"], default=None,
                   help="nRF52840 Dongle (USB DFU bootloader) or DK (J-Link); default: from the by-id port name")
    p.add_argument("--tool", choices=["nrfutil", "pyocd", "nrfjprog"], default=None,
                   help="vendor tool (default: nrfutil for a dongle, nrfjprog for a DK)")
    p.add_argument("--port", default=None,
                   help="serial port for nrfutil DFU (the dongle's Open_DFU_Bootloader port; default: radio.port)")
    p.add_argument("--probe", default=None, help="debug probe serial number (nrfjprog --snr, pyocd -u)")
    p.add_argument("--remote-dir", default=None,
                   help="where the image is copied on the node (default: <workdir>/firmware over SSH, a temp dir locally)")
    p.add_argument("--settle", type=float, default=15.0,
                   help="seconds to keep retrying the identity read while the board re-enumerates (default 15)")
    add_json_flag(p, "print the result (commands run, identity, expected/found firmware) as JSON on stdout")
    p.set_defaults(fn=cmd_flash)
