"""``hilbed flash`` against recording stand-ins for nrfutil/pyocd/nrfjprog on a local node.

The stand-in records its argv and exits 0 (or FAKE_RC); the radio is an
emulated RCP behind a pty, so the identity re-read after "flashing" is real.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from hilbed.firmware_bridge.emulator import Emulator
from hilbed.firmware_bridge.emulator.spinel_rcp import NCP_VERSION
from hilbed.orchestrator.cli.main import main
from hilbed.orchestrator.lab.flash import FlashError, build_commands, infer_board

STAND_IN = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_RECORD"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
rc = int(os.environ.get("FAKE_RC", "0"))
if rc:
    print("some progress output")
    print("ERROR: no debugger found", file=sys.stderr)
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def rcp():
    with Emulator("spinel", 1, seed=5) as emu:
        yield emu.ports[0]


@pytest.fixture
def lab(tmp_path, monkeypatch, rcp):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_RECORD", str(record))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("FAKE_RC", raising=False)
    image = tmp_path / "ot-rcp.hex"
    image.write_text(":00000001FF\n")

    def testbed(firmware="OPENTHREAD/thread-reference-20230706", port=rcp):
        fw = f", firmware: {json.dumps(firmware)}" if firmware else ""
        tb = tmp_path / "testbed.yaml"
        tb.write_text(f"name: flashlab\nnodes:\n  client-1:\n    roles: [client]\n    transport: {{kind: local}}\n"
                      f"    radio: {{protocol: spinel, port: {json.dumps(port)}{fw}}}\n"
                      f"  edge:\n    roles: [edge]\n    transport: {{kind: local}}\n")
        return str(tb)

    def tools(*names):
        for n in names:
            p = bindir / n
            p.write_text(STAND_IN)
            p.chmod(0o755)

    def recorded():
        return [json.loads(ln) for ln in record.read_text().splitlines()] if record.exists() else []

    class Lab:
        pass

    L = Lab()
    L.tmp, L.image, L.rcp, L.remote = tmp_path, image, rcp, tmp_path / "node-fw"
    L.testbed, L.tools, L.recorded = testbed, tools, recorded
    return L


def run_flash(lab, *extra, testbed=None):
    return main(["flash", "client-1", "--image", str(lab.image), "--testbed", testbed or lab.testbed(),
                 "--remote-dir", str(lab.remote), "--settle", "0", *extra])


def test_dongle_nrfutil_generates_the_package_then_runs_dfu_and_rereads(lab, capsys):
    lab.tools("nrfutil")
    assert run_flash(lab, "--board", "dongle", "--json") == 0
    hexfile, zipfile = str(lab.remote / "ot-rcp.hex"), str(lab.remote / "ot-rcp.zip")
    assert lab.recorded() == [
        ["nrfutil", "pkg", "generate", "--hw-version", "52", "--sd-req", "0x00", "--application", hexfile,
         "--application-version", "1", zipfile],
        ["nrfutil", "dfu", "usb-serial", "-pkg", zipfile, "-p", lab.rcp],
    ]
    assert (lab.remote / "ot-rcp.hex").read_bytes() == lab.image.read_bytes()  # copied with Transport.put
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["firmware_ok"] is True
    assert doc["identity"]["ncp_version"] == NCP_VERSION == doc["found"]
    assert len(doc["identity"]["hwaddr"]) == 16 and "MAC_RAW" in doc["identity"]["caps"]


def test_dongle_nrfutil_zip_and_dfu_port(lab, capsys):
    lab.tools("nrfutil")
    lab.image = lab.tmp / "ot-rcp.zip"
    lab.image.write_bytes(b"PK\x05\x06" + bytes(18))
    dfu = "/dev/serial/by-id/usb-Nordic_Semiconductor_Open_DFU_Bootloader_C1E8D2B54E6C-if00"
    assert run_flash(lab, "--board", "dongle", "--port", dfu) == 0
    assert lab.recorded() == [["nrfutil", "dfu", "usb-serial", "-pkg", str(lab.remote / "ot-rcp.zip"), "-p", dfu]]
    out = capsys.readouterr().out
    assert "firmware: " + NCP_VERSION in out and "(ok)" in out


def test_dk_nrfjprog_command_line(lab):
    lab.tools("nrfjprog", "pyocd")
    assert run_flash(lab, "--board", "dk", "--probe", "683123456") == 0
    assert lab.recorded() == [["nrfjprog", "-f", "nrf52", "--snr", "683123456", "--chiperase", "--program",
                               str(lab.remote / "ot-rcp.hex"), "--reset"]]


def test_dk_pyocd_command_line(lab):
    lab.tools("pyocd")
    assert run_flash(lab, "--board", "dk", "--tool", "pyocd") == 0
    assert lab.recorded() == [["pyocd", "flash", "-t", "nrf52840", "--erase", "chip", str(lab.remote / "ot-rcp.hex")]]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_tool_is_one_line_exit_1(lab, capsys):
    if shutil.which("nrfjprog", path="/usr/bin:/bin"):
        pytest.skip("a real nrfjprog is installed")
    assert run_flash(lab, "--board", "dk") == 1
    line = _one_line(capsys)
    assert line.startswith("hilbed flash: nrfjprog not found on node client-1: install")
    assert lab.recorded() == [] and not (lab.remote / "ot-rcp.hex").exists()


def test_failing_tool_is_one_line_exit_1_and_stops(lab, capsys, monkeypatch):
    lab.tools("nrfutil")
    monkeypatch.setenv("FAKE_RC", "3")
    assert run_flash(lab, "--board", "dongle") == 1
    assert _one_line(capsys) == "hilbed flash: nrfutil failed on client-1 (exit 3): ERROR: no debugger found"
    assert len(lab.recorded()) == 1  # the DFU step never ran after `pkg generate` failed


def test_wrong_firmware_after_flashing_fails_with_expected_and_found(lab, capsys):
    lab.tools("nrfjprog")
    assert run_flash(lab, "--board", "dk", "--json", testbed=lab.testbed("OPENTHREAD/thread-reference-20240101")) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["ok"] is False and doc["firmware_ok"] is False
    assert doc["expected"] == "OPENTHREAD/thread-reference-20240101" and doc["found"] == NCP_VERSION
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "OPENTHREAD/thread-reference-20240101" in err[0] and NCP_VERSION in err[0]


def test_unreadable_radio_after_flashing_fails(lab, capsys):
    lab.tools("nrfjprog")
    assert run_flash(lab, "--board", "dk", testbed=lab.testbed(port="/nonexistent/tty-hilbed")) == 1
    assert "reading the firmware identity on client-1 failed" in _one_line(capsys)


def test_emulated_radio_and_bad_combinations_are_refused_exit_2(lab, capsys):
    lab.tools("nrfutil", "pyocd")
    assert run_flash(lab, "--board", "dk", testbed=lab.testbed(port="emulated")) == 2
    assert "emulated" in _one_line(capsys)
    assert run_flash(lab, "--board", "dongle", "--tool", "pyocd") == 2
    assert _one_line(capsys) == "hilbed flash: pyocd cannot flash a dongle (use nrfutil)"
    assert lab.recorded() == []


def test_board_inference_and_image_checks():
    assert infer_board("/dev/serial/by-id/usb-SEGGER_J-Link_000683123456-if00") == "dk"
    assert infer_board("/dev/serial/by-id/usb-Nordic_Semiconductor_nRF528xx_OpenThread_Device_X-if00") == "dongle"
    assert infer_board("/dev/ttyACM0") is None
    with pytest.raises(FlashError, match="Intel HEX"):
        build_commands("dk", "nrfjprog", "/x/ot-rcp.bin", "/dev/ttyACM0")
    with pytest.raises(FlashError, match="unknown board"):
        build_commands("nucleo", "pyocd", "/x/a.hex", "/dev/ttyACM0")


def test_board_required_when_the_port_does_not_say(lab, capsys):
    lab.tools("nrfjprog")
    assert run_flash(lab) == 2
    assert "pass --board dongle|dk" in _one_line(capsys)


def test_unknown_node_is_bad_input(lab, capsys):
    assert main(["flash", "nope", "--image", str(lab.image), "--testbed", lab.testbed()]) == 2
    assert "no node 'nope'" in _one_line(capsys)


def test_firmware_check_item_for_hilbed_check(lab):
    from hilbed.orchestrator.config import load_testbed
    from hilbed.orchestrator.lab.flash import firmware_check
    from hilbed.orchestrator.lab.transport import LocalTransport

    def item(**kw):
        radio = load_testbed(lab.testbed(**kw)).nodes["client-1"].radio
        return firmware_check(LocalTransport("client-1"), radio, "client-1")

    ok = item()
    assert ok["state"] == "ok" and ok["identity"]["ncp_version"] == NCP_VERSION
    assert ok["short"].startswith("OPENTHREAD/thread-reference-2023") and len(ok["short"]) <= 40
    bad = item(firmware="OPENTHREAD/thread-reference-20240101")
    assert bad["state"] == "fail" and bad["short"] == "mismatch"
    assert bad["detail"] == f"expected firmware 'OPENTHREAD/thread-reference-20240101', found {NCP_VERSION!r}"
    assert item(port="emulated")["state"] == "ok"  # the embedded testbed: an emulator answers
    gone = item(port="/nonexistent/tty-hilbed")
    assert gone["state"] == "fail" and gone["short"] == "unreadable" and gone["identity"] is None
    assert item(port="/nonexistent/tty-hilbed", firmware=None)["state"] == "warn"
