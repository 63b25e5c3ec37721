"""Codec variants behind one interface (see :mod:`hilbed.nodes.codecs.base`).

``CODECS`` maps the names used in scenario YAML to codec classes. Families
that need torch register lazily so a light client never imports it.

Layout (runtime apart from tooling, as in CompressAI):

- ``<family>.py``: what a client or edge runs - the codec class, loading its
  artifact, encode/decode (numpy, Pillow; torch only inside decode paths);
- ``nets/<family>.py``: the networks a codec runs (torch modules the edge
  rebuilds from an artifact, AdaCompress's numpy agent);
- ``fitting/``: controller-side fitting, evaluation (``fitting.evaluate``)
  and the ``hilbed fit`` plug-in of each family (``fitting/<family>.py``).
  Runtime modules import it only inside a function that fits on first use.
"""

from __future__ import annotations

from typing import Any

from hilbed.nodes.codecs.base import Codec, CodecParamsError, Encoded, Param
from hilbed.nodes.codecs.pillow_family import JpegCodec, PngCodec, ProgressiveJpegCodec, WebpCodec

CODECS: dict[str, type[Codec]] = {c.name: c for c in (JpegCodec, ProgressiveJpegCodec, WebpCodec, PngCodec)}

#: codec families in their own modules, imported on first use so that a light
#: client never imports torch for a codec it does not run: name -> "module:Class"
LAZY_CODECS: dict[str, str] = {
    "grace": "hilbed.nodes.codecs.grace:GraceCodec",
    "autojpeg": "hilbed.nodes.codecs.autojpeg:AutoJpegCodec",
    "adacompress": "hilbed.nodes.codecs.adacompress:AdaCompressCodec",
    "pnc": "hilbed.nodes.codecs.pnc:PncCodec",
    "entropic": "hilbed.nodes.codecs.entropic:EntropicStudentCodec",
    "factorized": "hilbed.nodes.codecs.entropic:FactorizedPriorCodec",
    "crbq": "hilbed.nodes.codecs.entropic:CrBqCodec",
}


def codec_class(name: str) -> type[Codec]:
    if name in CODECS:
        return CODECS[name]
    if name in LAZY_CODECS:
        import importlib
        mod, cls = LAZY_CODECS[name].split(":")
        try:
            CODECS[name] = getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError) as exc:
            raise CodecParamsError(None, f"codec {name!r} is not available here ({exc})") from None
        return CODECS[name]
    raise CodecParamsError(None, f"unknown codec {name!r}", ", ".join(sorted(all_codec_names())))


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator for plug-ins: make ``cls`` the codec named ``cls.name``.

    Config validation reads :func:`all_codec_names` and the class's
    ``params_spec``, so a registered codec validates like a built-in one. A
    name taken by another class (built-in, lazy or registered) is refused.
    """
    if not (isinstance(cls, type) and issubclass(cls, Codec)) or not cls.name:
        raise ValueError(f"{getattr(cls, '__name__', cls)!r}: a codec is a Codec subclass with a name")
    known = CODECS.get(cls.name)
    lazy = LAZY_CODECS.get(cls.name)
    if (known is not None and known is not cls) or (lazy is not None and lazy != f"{cls.__module__}:{cls.__qualname__}"):
        raise ValueError(f"codec {cls.name!r} exists already")
    CODECS[cls.name] = cls
    return cls


def all_codec_names() -> set[str]:
    import importlib.util
    names = set(CODECS)
    for n, target in LAZY_CODECS.items():
        if importlib.util.find_spec(target.split(":")[0]) is not None:
            names.add(n)
    return names


def validate_codec_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    return codec_class(name).validate(dict(params or {}))


def explicit_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that differ from the codec's defaults.

    Trial ids and labels use these, so adding a parameter with a default to a
    codec later keeps the ids (and ``hilbed resume``) of existing runs valid.
    """
    spec = codec_class(name).params_spec
    return {k: v for k, v in params.items() if k not in spec or spec[k].default != v}


def make_codec(name: str, params: dict[str, Any] | None = None) -> Codec:
    return codec_class(name)(**(params or {}))


__all__ = ["explicit_params", "register_codec", "CODECS", "LAZY_CODECS", "codec_class", "all_codec_names", "Codec", "CodecParamsError", "Encoded", "Param", "make_codec", "validate_codec_params"]
