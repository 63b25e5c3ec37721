"""firmware_bridge: drive stock nRF52840 802.15.4 firmware from the host over serial.

The seed lab moves image data between two nRF52840 boards over IEEE 802.15.4
(250 kbit/s) while a Wi-Fi jammer interferes.  Rather than writing custom
firmware, hilbed talks to stock images -- OpenThread's RCP (Spinel over
HDLC-Lite) or Nordic's "Wireless UART 15.4" example -- and keeps all test
logic on the host.  Layers, bottom up:

* ``hdlc`` / ``spinel`` / ``wuart``: wire formats;
* ``phy``: 802.15.4 timing constants, airtime/CSMA math, MAC frame helpers;
* ``radio``: ``open_radio()`` -> ``SpinelRadio`` / ``WuartRadio``;
* ``identity``: which firmware a radio runs (NCP version, caps, EUI-64, or
  the emulated Wireless UART's version) and the testbed's match rule;
* ``message``: deadline-bounded, chunked message transport with per-chunk
  delivery times;
* ``emulator``: pty-based emulation of both firmwares with a shared,
  jammable medium (``python -m hilbed.firmware_bridge.emulator``);
* ``fuzz``: seeded serial fuzzer over the decoders and the message receiver
  (``benchmarks/serial_fuzz.py``, ``tests/firmware_bridge/test_serial_fuzz.py``).
"""

from importlib import import_module
from typing import Any

# Re-exports are resolved lazily so that the wire-format modules (hdlc,
# spinel, wuart, phy) import on machines without pyserial (e.g. the jammer).
_EXPORTS = {
    "open_radio": "radio",
    "SpinelRadio": "radio",
    "WuartRadio": "radio",
    "RxFrame": "radio",
    "TxStatus": "radio",
    "TxResult": "radio",
    "RadioStats": "radio",
    "RadioError": "radio",
    "RadioTimeout": "radio",
    "NotSupported": "radio",
    "SpinelStatusError": "radio",
    "firmware_identity": "identity",
    "read_identity": "identity",
    "firmware_matches": "identity",
    "MessageSender": "message",
    "MessageReceiver": "message",
    "MessageEvent": "message",
    "ReceivedMessage": "message",
    "ReceiverLimits": "message",
    "ReceiverStats": "message",
    "SendReport": "message",
    "ChunkDelivery": "message",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
