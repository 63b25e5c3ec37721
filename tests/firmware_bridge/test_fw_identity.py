"""Firmware identity: what the emulated RCP / Wireless UART report, and the testbed match rule."""

from __future__ import annotations

import json
import os
import time

import pytest

from hilbed.firmware_bridge import identity as I
from hilbed.firmware_bridge import spinel, wuart
from hilbed.firmware_bridge.emulator import Emulator
from hilbed.firmware_bridge.emulator.spinel_rcp import NCP_VERSION
from hilbed.firmware_bridge.emulator.wuart_fw import WUART_VERSION
from hilbed.firmware_bridge.radio import WuartRadio, open_radio


def test_spinel_identity_from_emulator():
    with Emulator("spinel", 2, seed=7) as emu:
        a = I.read_identity("spinel", emu.ports[0])
        b = I.read_identity("spinel", emu.ports[1])
    assert a["protocol"] == "spinel"
    assert a["ncp_version"] == NCP_VERSION == a["version"]
    assert a["ncp_version"].startswith("OPENTHREAD/") and "; NRF52840; " in a["ncp_version"]
    assert "emulated" in a["ncp_version"]
    # what ot-rcp reports (NcpBase::HandlePropertyGet<SPINEL_PROP_CAPS> with OPENTHREAD_RADIO)
    assert a["caps"] == ["COUNTERS", "UNSOL_UPDATE_FILTER", "802_15_4_2450MHZ_OQPSK", "CONFIG_RADIO", "MAC_RAW",
                         "RCP_API_VERSION"]
    assert a["wuart_version"] is None
    for ident in (a, b):
        assert len(bytes.fromhex(ident["hwaddr"])) == 8
        assert ident["hwaddr"].startswith("f4ce36")  # Nordic's OUI
    assert a["hwaddr"] != b["hwaddr"]
    assert a["hwaddr"].endswith("00") and b["hwaddr"].endswith("01")


def test_emulated_hwaddr_follows_the_seed():
    def addrs(seed):
        with Emulator("spinel", 2, seed=seed) as emu:
            return [n.hwaddr.hex() for n in emu.nodes]

    assert addrs(11) == addrs(11)
    assert addrs(11) != addrs(12)


def test_identity_reads_hwaddr_over_the_wire_and_names_unknown_caps():
    with Emulator("spinel", 1, seed=3) as emu:
        emu.nodes[0].hwaddr = bytes.fromhex("0011223344556677")
        with open_radio("spinel", emu.ports[0]) as r:
            ident = I.firmware_identity(r)
    assert ident["hwaddr"] == "0011223344556677"
    assert I.cap_name(spinel.CAP_MAC_RAW) == "MAC_RAW"
    assert I.cap_name(9999) == "9999"


def test_wuart_identity_from_emulator_and_the_query_stays_off_the_air():
    with Emulator("wuart", 2, seed=1) as emu:
        r0 = open_radio("wuart", emu.ports[0])
        r1 = open_radio("wuart", emu.ports[1])
        try:
            ident = I.firmware_identity(r0)
            assert ident["wuart_version"] == WUART_VERSION == ident["version"]
            assert "emulated" in ident["wuart_version"]
            assert ident["protocol"] == "wuart" and ident["ncp_version"] is None
            assert r1.read(timeout=0.3) == b""  # the peer never sees the query
            assert emu.counters(0)["version_queries"] == 1
        finally:
            r0.close()
            r1.close()


def test_wuart_data_that_looks_like_a_query_start_is_forwarded_intact():
    # the last bytes are a query prefix: held briefly, then released, never lost
    payload = (wuart.begin_frame(1, 1, 3).encode() + b"\x00HB\x00HBVE" + b"\x00" * 3 + b"\x00HBVER")
    with Emulator("wuart", 2, seed=2) as emu:
        r0 = open_radio("wuart", emu.ports[0])
        r1 = open_radio("wuart", emu.ports[1])
        try:
            r0.write(payload)
            got = b""
            deadline = time.monotonic() + 5
            while len(got) < len(payload) and time.monotonic() < deadline:
                got += r1.read(timeout=0.2)
            assert got == payload
            assert emu.counters(0)["version_queries"] == 0
        finally:
            r0.close()
            r1.close()


def test_real_wuart_firmware_does_not_answer_so_the_version_is_unknown():
    master, slave = os.openpty()  # a port where nothing answers, as stock firmware would not
    try:
        r = WuartRadio(os.ttyname(slave), rtscts=False)
        try:
            ident = I.firmware_identity(r, wuart_timeout=0.2)
        finally:
            r.close()
        assert os.read(master, 64) == I.WUART_VERSION_QUERY
    finally:
        os.close(master)
        os.close(slave)
    assert ident["wuart_version"] is None and ident["version"] == "unknown"
    assert I.firmware_matches("hilbed-emulated-wuart", ident) == (False, "unknown")
    assert I.firmware_matches(None, ident) == (True, "unknown")


@pytest.mark.parametrize("expected, ok", [
    ("OPENTHREAD/thread-reference-20230706", True),
    ("NRF52840", True),
    (NCP_VERSION, True),
    ("", True),
    (None, True),
    ("openthread/thread-reference-20230706", False),  # case-sensitive
    ("OPENTHREAD/thread-reference-20240101", False),
    (NCP_VERSION + " ", False),
])
def test_firmware_matches_is_a_substring_of_the_reported_version(expected, ok):
    ident = {"protocol": "spinel", "ncp_version": NCP_VERSION, "caps": [], "hwaddr": "00" * 8,
             "wuart_version": None, "version": NCP_VERSION}
    assert I.firmware_matches(expected, ident) == (ok, NCP_VERSION)


def test_identity_cli_prints_one_json_line(capsys):
    assert I.main(["--protocol", "spinel", "--port", "emulated", "--seed", "4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["identity"]["ncp_version"] == NCP_VERSION
    assert I.main(["--protocol", "spinel", "--port", "/nonexistent/tty-hilbed"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and json.loads(out[0])["ok"] is False
