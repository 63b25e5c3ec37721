"""Codec variants behind one interface (see :mod:`nodes.codecs.base`).

``CODECS`` maps the names used in scenario YAML to codec classes. Families
that need torch register lazily so a light client never imports it.
"""

from __future__ import annotations

from typing import Any

from .base import Codec, CodecParamsError, Encoded, Param
from .pillow_family import JpegCodec, PngCodec, ProgressiveJpegCodec, WebpCodec

CODECS: dict[str, type[Codec]] = {c.name: c for c in (JpegCodec, ProgressiveJpegCodec, WebpCodec, PngCodec)}


def validate_codec_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return CODECS[name].validate(dict(params or {}))


def make_codec(name: str, params: dict[str, Any] | None = None) -> Codec:
    try:
        cls = CODECS[name]
    except KeyError:
        raise CodecParamsError(None, f"unknown codec {name!r}", ", ".join(sorted(CODECS))) from None
    return cls(**(params or {}))


__all__ = ["CODECS", "Codec", "CodecParamsError", "Encoded", "Param", "make_codec", "validate_codec_params"]
