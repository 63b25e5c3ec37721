"""Flash a radio's firmware on the node it hangs off, then read back what it runs.

Why: the boards are plugged into lab nodes (a Raspberry Pi next to each),
not into the controller, so the vendor tool has to run there, over the
node's transport, with the image copied over first.  Re-reading the
firmware identity afterwards proves the board came back with the image the
testbed expects (``radio.firmware``), rather than trusting an exit status.

Command lines (see docs/radios.md, "Flashing with `hilbed flash`", for
sources and what was tried on hardware):

* dongle + nrfutil (legacy nrfutil 6.x, the nRF52840 Dongle's USB DFU
  bootloader): ``nrfutil pkg generate --hw-version 52 --sd-req 0x00
  --application IMAGE.hex --application-version 1 IMAGE.zip`` then
  ``nrfutil dfu usb-serial -pkg IMAGE.zip -p PORT`` (a ``.zip`` image skips
  the first step);
* dk + nrfjprog: ``nrfjprog -f nrf52 [--snr SN] --chiperase --program IMAGE.hex --reset``;
* dk + pyocd: ``pyocd flash -t nrf52840 [-u UID] --erase chip IMAGE`` (pyocd
  resets the target after programming unless told not to).
"""

from __future__ import annotations

import json
import posixpath
import shlex
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hilbed.orchestrator.errors import RunError

BOARDS = ("dongle", "dk")
TOOLS = ("nrfutil", "pyocd", "nrfjprog")
#: Which tools can program which board: the dongle has no debug header wired
#: to a probe (only its USB DFU bootloader); the DK's J-Link OB takes nrfjprog
#: or pyocd.
BOARD_TOOLS = {"dongle": ("nrfutil",), "dk": ("nrfjprog", "pyocd")}
DEFAULT_TOOL = {"dongle": "nrfutil", "dk": "nrfjprog"}
TOOL_TIMEOUT_S = 300
IDENTITY_TIMEOUT_S = 60
INSTALL_HINT = {
    "nrfutil": "install it on the node (pip install nrfutil, the legacy 6.x CLI with `pkg generate` and `dfu usb-serial`)",
    "nrfjprog": "install nRF Command Line Tools (nrfjprog, with the SEGGER J-Link software) on the node",
    "pyocd": "install it on the node (pip install pyocd; `pyocd pack install nrf52840` if the target is missing)",
}


class FlashError(RunError):
    """Flashing could not be done or did not work; one line saying why (exit 1)."""


class FlashInputError(FlashError):
    """The request itself is wrong (board/tool/image/node); nothing was run (exit 2)."""


@dataclass
class FlashResult:
    node: str
    board: str
    tool: str
    image: str
    image_remote: str
    port: str
    commands: list[list[str]] = field(default_factory=list)
    identity: dict[str, Any] | None = None
    expected: str | None = None
    found: str | None = None
    firmware_ok: bool | None = None
    ok: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def infer_board(port: str) -> str | None:
    """Board kind from a /dev/serial/by-id name: SEGGER J-Link -> dk, Nordic USB (RCP or DFU) -> dongle."""
    name = port.rsplit("/", 1)[-1]
    if "SEGGER_J-Link" in name:
        return "dk"
    if "Nordic_Semiconductor" in name:
        return "dongle"
    return None


def build_commands(board: str, tool: str, image: str, port: str, *, probe: str | None = None) -> list[list[str]]:
    """The vendor command lines, in order, for ``image`` (a path on the node)."""
    if board not in BOARDS:
        raise FlashInputError(f"unknown board {board!r} (allowed: {', '.join(BOARDS)})")
    if tool not in BOARD_TOOLS[board]:
        raise FlashInputError(f"{tool} cannot flash a {board} (use {' or '.join(BOARD_TOOLS[board])})")
    low = image.lower()
    if tool == "nrfutil":
        if low.endswith(".zip"):
            return [["nrfutil", "dfu", "usb-serial", "-pkg", image, "-p", port]]
        if not low.endswith(".hex"):
            raise FlashInputError(f"nrfutil needs an Intel HEX image or a DFU .zip, not {image!r} "
                             "(arm-none-eabi-objcopy -O ihex ot-rcp ot-rcp.hex)")
        pkg = image[:-4] + ".zip"
        return [["nrfutil", "pkg", "generate", "--hw-version", "52", "--sd-req", "0x00", "--application", image,
                 "--application-version", "1", pkg],
                ["nrfutil", "dfu", "usb-serial", "-pkg", pkg, "-p", port]]
    if tool == "nrfjprog":
        if not low.endswith(".hex"):
            raise FlashInputError(f"nrfjprog needs an Intel HEX image, not {image!r} (arm-none-eabi-objcopy -O ihex ...)")
        return [["nrfjprog", "-f", "nrf52", *(["--snr", probe] if probe else []), "--chiperase", "--program", image,
                 "--reset"]]
    if not low.endswith((".hex", ".elf", ".axf")):
        raise FlashInputError(f"pyocd needs a .hex or .elf image here (a .bin has no load address), not {image!r}")
    return [["pyocd", "flash", "-t", "nrf52840", *(["-u", probe] if probe else []), "--erase", "chip", image]]


def _shell_word(arg: str) -> str:
    """Quote for the node's shell; ``~/`` stays expandable (the SSH workdir default is ~/.hilbed)."""
    if arg.startswith("~/"):
        return '"$HOME"/' + shlex.quote(arg[2:])
    return shlex.quote(arg)


def shell_line(argv: list[str]) -> str:
    return " ".join(_shell_word(a) for a in argv)


def _node_python(t: Any) -> str:
    return getattr(t, "venv_python", None) or getattr(t, "python", None) or "python3"


def _default_remote_dir(t: Any) -> str:
    wd = getattr(t, "workdir", None)
    if wd:
        return posixpath.join(wd.rstrip("/"), "firmware")
    return tempfile.mkdtemp(prefix="hilbed-flash-")


def _last_line(text: str, limit: int | None = 300) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else ""


def read_identity_on_node(t: Any, radio: Any, *, settle_s: float = 15.0, interval_s: float = 1.0) -> dict[str, Any]:
    """Run ``python -m hilbed.firmware_bridge.identity`` on the node, retrying while the board re-enumerates."""
    argv = [_node_python(t), "-m", "hilbed.firmware_bridge.identity", "--protocol", radio.protocol,
            "--port", radio.port]
    if radio.baud:
        argv += ["--baud", str(radio.baud)]
    if radio.rtscts is not None:
        argv += ["--rtscts", "on" if radio.rtscts else "off"]
    deadline = time.monotonic() + settle_s
    why = "no answer"
    while True:
        r = t.run(shell_line(argv), timeout=IDENTITY_TIMEOUT_S)
        try:
            doc = json.loads(_last_line(r.stdout, None) or "{}")
        except ValueError:
            doc = {}
        if doc.get("ok"):
            return doc["identity"]
        why = doc.get("error") or _last_line(r.stderr) or f"exit status {r.returncode}"
        if time.monotonic() >= deadline:
            raise FlashError(f"reading the firmware identity on {t.node} failed: {why}")
        time.sleep(interval_s)


def flash_node(node: str, cfg: Any, image: str | Path, *, board: str | None = None, tool: str | None = None,
               port: str | None = None, probe: str | None = None, transport: Any = None,
               remote_dir: str | None = None, settle_s: float = 15.0) -> FlashResult:
    """Copy ``image`` to ``node``, run the vendor tool there, re-read the identity; raises FlashError."""
    from hilbed.firmware_bridge.identity import firmware_matches

    radio = getattr(cfg, "radio", None)
    if radio is None:
        raise FlashInputError(f"node {node} has no radio in the testbed")
    if radio.port == "emulated":
        raise FlashInputError(f"node {node}'s radio is emulated: there is no board to flash")
    local = Path(image)
    if not local.is_file():
        raise FlashInputError(f"image {image} not found")
    board = board or getattr(radio, "board", None) or infer_board(radio.port)
    if board is None:
        raise FlashInputError(f"cannot tell the board kind from {radio.port}: pass --board dongle|dk")
    tool = tool or DEFAULT_TOOL.get(board, "")
    flash_port = port or radio.port
    if transport is None:
        from hilbed.orchestrator.lab.connect import make_transport
        transport = make_transport(node, cfg)
    t = transport
    rdir = remote_dir or _default_remote_dir(t)
    remote = posixpath.join(rdir, local.name)
    commands = build_commands(board, tool, remote, flash_port, probe=probe)
    res = FlashResult(node, board, tool, str(local), remote, flash_port, commands, expected=radio.firmware)

    found = t.run(f"command -v {shlex.quote(tool)}", timeout=30)
    if not found.ok:
        raise FlashError(f"{tool} not found on node {node}: {INSTALL_HINT[tool]}")
    t.put(local, remote)
    for argv in commands:
        r = t.run(shell_line(argv), timeout=TOOL_TIMEOUT_S)
        if not r.ok:
            detail = _last_line(r.stderr) or _last_line(r.stdout) or "no output"
            raise FlashError(f"{tool} failed on {node} (exit {r.returncode}): {detail}")
    try:
        res.identity = read_identity_on_node(t, radio, settle_s=settle_s)
    except FlashError as exc:
        raise FlashError(f"flashed, but {exc}") from None
    res.firmware_ok, res.found = firmware_matches(radio.firmware, res.identity)
    res.ok = bool(res.firmware_ok)
    if not res.firmware_ok:
        res.error = f"node {node} now reports firmware {res.found!r}; the testbed expects {radio.firmware!r}"
    return res


def firmware_check(t: Any, radio: Any, node: str) -> dict[str, Any]:
    """For ``hilbed check``: the radio's identity judged against ``radio.firmware``; never raises.

    Returns {"state": ok|warn|fail|na, "short", "fix", "detail", "identity"}.  An
    unreadable identity fails only when the testbed names a firmware (else warns);
    Wireless UART firmware that does not answer reads as "unknown".
    """
    from hilbed.firmware_bridge.identity import firmware_matches

    if radio is None:
        return {"state": "na", "short": "", "fix": "", "detail": "", "identity": None}
    expected = getattr(radio, "firmware", None)
    try:
        ident = read_identity_on_node(t, radio, settle_s=0)
    except Exception as exc:  # a check item, not a crash
        return {"state": "fail" if expected else "warn", "short": "unreadable",
                "fix": "check the radio's port and that it runs the firmware for radio.protocol "
                       f"({radio.protocol}); `hilbed flash {node} --image FILE` reflashes it",
                "detail": str(exc), "identity": None}
    ok, found = firmware_matches(expected, ident)
    short = found if len(found) <= 40 else found[:39] + "…"
    if ok:
        return {"state": "ok", "short": short, "fix": "", "identity": ident,
                "detail": f"found {found!r}" + (f", expected {expected!r}" if expected else "")}
    return {"state": "fail", "short": "mismatch", "identity": ident,
            "fix": f"flash the expected image: hilbed flash {node} --image FILE",
            "detail": f"expected firmware {expected!r}, found {found!r}"}
