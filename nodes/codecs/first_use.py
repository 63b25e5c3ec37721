"""Fitting on first use: how a codec given no ``artifact`` param gets one.

The fitters are training code (torch) in :mod:`hilbed.nodes.codecs.fitting`,
which imports the runtime codecs; the runtime codecs name their fitter here by
``"module:function"`` and resolve it only when they need it, so the runtime
never imports training code and the two layers do not form an import cycle.
"""

from __future__ import annotations

import importlib
from typing import Callable

FITTERS: dict[str, str] = {
    "grace": "hilbed.nodes.codecs.fitting.grace:auto_fit",
    "autojpeg": "hilbed.nodes.codecs.fitting.autojpeg:auto_fit",
    "adacompress": "hilbed.nodes.codecs.fitting.adacompress:auto_fit",
    "pnc": "hilbed.nodes.codecs.fitting.pnc:auto_artifact",
    "entropic": "hilbed.nodes.codecs.fitting.entropic:auto_artifact",
    "crbq": "hilbed.nodes.codecs.fitting.entropic:auto_artifact",
}


def first_use_fitter(family: str) -> Callable:
    """The function that fits (or finds the already fitted) artifact for ``family``'s settings."""
    mod, fn = FITTERS[family].split(":")
    return getattr(importlib.import_module(mod), fn)
