"""Emulated nRF52840 radios (OpenThread RCP / Nordic Wireless UART) on pseudo-terminals.

The emulator lets every hilbed layer above the serial port run without
hardware: pyserial opens the pty paths exactly as it would open
``/dev/serial/by-id/...``.  See ``docs/radios.md`` for the timing and
interference model.
"""

from .core import Emulator, EmulatorProcess, default_baud
from .loop import EventLoop
from .medium import Medium, MediumConfig, MediumFileWatcher
from .radio_model import RadioModel
from .spinel_rcp import EmulatedSpinelRcp
from .wuart_fw import EmulatedWuart

__all__ = [
    "Emulator",
    "EmulatorProcess",
    "EventLoop",
    "Medium",
    "MediumConfig",
    "MediumFileWatcher",
    "RadioModel",
    "EmulatedSpinelRcp",
    "EmulatedWuart",
    "default_baud",
]
