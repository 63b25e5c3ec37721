"""Which firmware is on a radio: read it, and compare it with what the testbed expects.

Why: a lab shares boards between people, and a board reflashed with another
image (or another OpenThread revision) changes timing and behaviour without
any other symptom.  ``hilbed check`` reads each radio's identity and fails
when it is not the one ``radio.firmware`` in testbed.yaml names; ``hilbed
flash`` re-reads it after flashing.

* Spinel (OpenThread RCP): ``PROP_NCP_VERSION`` (``otGetVersionString()``,
  "OPENTHREAD/<version>; <platform>; <build date>"), ``PROP_CAPS`` and
  ``PROP_HWADDR`` (the factory EUI-64).
* Wireless UART: the stock nRF5 SDK example has no command interface, so
  there is nothing standard to ask.  hilbed's *emulated* firmware answers
  the version query ``WUART_VERSION_QUERY`` (docs/wuart-framing.md,
  "Version query"); real firmware forwards the query bytes over the air like
  any other data and does not answer, so its version reads as unknown.

``python -m hilbed.firmware_bridge.identity --protocol spinel --port P`` prints
the identity as one JSON line; the flash command runs it on the node that has
the board.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from . import spinel
from .wuart import WUART_VERSION_QUERY, WUART_VERSION_REPLY_PREFIX

#: hilbed's version query for the emulated Wireless UART firmware.  A NUL
#: first (rare at the start of a hilbed frame, which begins with "Hb"), no
#: "Hb" inside, so the wuart decoder on a peer that receives it from real
#: firmware counts it as garbage and resyncs.
WUART_VERSION_MAX = 96
_WUART_REPLY_RE = re.compile(re.escape(WUART_VERSION_REPLY_PREFIX) + rb"([^\x00\n]{1,%d})\n" % WUART_VERSION_MAX)
WUART_QUERY_TIMEOUT_S = 0.5
UNKNOWN = "unknown"


def cap_name(cap: int) -> str:
    """Spinel capability number -> name without the ``CAP_`` prefix (numbers stay for unknown ones)."""
    return spinel.CAP_NAMES.get(cap, str(cap))


def query_wuart_version(radio: Any, timeout: float = WUART_QUERY_TIMEOUT_S) -> str | None:
    """Send the version query and wait for the reply; None when nothing answers (real firmware)."""
    radio.write(WUART_VERSION_QUERY)
    deadline = time.monotonic() + timeout
    seen = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        data = radio.read(timeout=remaining)
        if data:
            seen = (seen + data)[-4096:]
            m = _WUART_REPLY_RE.search(seen)
            if m:
                return m.group(1).decode("utf-8", errors="replace")


def firmware_identity(radio: Any, *, wuart_timeout: float = WUART_QUERY_TIMEOUT_S) -> dict[str, Any]:
    """Identity of an open radio (SpinelRadio or WuartRadio).

    Keys: ``protocol``, ``ncp_version``, ``caps`` (names), ``hwaddr`` (hex),
    ``wuart_version`` (None unless a wuart firmware answered), and
    ``version`` -- the string ``firmware_matches`` compares: the NCP version,
    the wuart version, or "unknown".
    """
    if radio.protocol == "spinel":
        ncp = radio.ncp_version()
        caps = [cap_name(c) for c in radio.caps()]
        hwaddr = bytes(radio.get_prop(spinel.PROP_HWADDR)[0]).hex()
        return {"protocol": "spinel", "ncp_version": ncp, "caps": caps, "hwaddr": hwaddr,
                "wuart_version": None, "version": ncp}
    if radio.protocol == "wuart":
        ver = query_wuart_version(radio, wuart_timeout)
        return {"protocol": "wuart", "ncp_version": None, "caps": [], "hwaddr": None,
                "wuart_version": ver, "version": ver if ver else UNKNOWN}
    raise ValueError(f"unknown radio protocol {radio.protocol!r}")


def read_identity(protocol: str, port: str, baud: int | None = None, rtscts: bool | None = None,
                  **kwargs: Any) -> dict[str, Any]:
    """Open the radio, read its identity, close it (``hilbed check`` / ``hilbed flash``)."""
    from .radio import open_radio

    radio = open_radio(protocol, port, baud=baud, rtscts=rtscts)  # type: ignore[arg-type]
    try:
        return firmware_identity(radio, **kwargs)
    finally:
        radio.close()


def firmware_matches(expected: str | None, identity: dict[str, Any]) -> tuple[bool, str]:
    """(ok, found): ok when ``expected`` occurs, case-sensitively, in the reported version string.

    A substring rule, so testbed.yaml can pin as much as it cares about --
    "OPENTHREAD/thread-reference-20230706", "NRF52840", or the whole string.
    Empty/None expected accepts anything.  An unknown version (real Wireless
    UART firmware) never matches a non-empty expectation.
    """
    found = str(identity.get("version") or identity.get("ncp_version") or identity.get("wuart_version")
                or UNKNOWN)
    if not expected:
        return True, found
    if found == UNKNOWN:
        return False, found
    return expected in found, found


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line: {"ok": true, "identity": {...}} or {"ok": false, "error": "..."}; exit 0/1."""
    p = argparse.ArgumentParser(prog="python -m hilbed.firmware_bridge.identity", description=__doc__.split("\n")[0])
    p.add_argument("--protocol", choices=["spinel", "wuart"], required=True)
    p.add_argument("--port", required=True, help="serial port, socket://, rfc2217://, or 'emulated'")
    p.add_argument("--baud", type=int, default=None)
    p.add_argument("--rtscts", choices=["on", "off"], default=None)
    p.add_argument("--seed", type=int, default=None, help="emulated: the emulator's seed")
    args = p.parse_args(argv)
    rtscts = None if args.rtscts is None else args.rtscts == "on"
    try:
        if args.port == "emulated":
            from .emulator import Emulator

            with Emulator(args.protocol, 1, seed=args.seed) as emu:
                ident = read_identity(args.protocol, emu.ports[0], args.baud, rtscts)
        else:
            ident = read_identity(args.protocol, args.port, args.baud, rtscts)
    except Exception as exc:  # one line for the caller, whatever went wrong
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps({"ok": True, "identity": ident}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
