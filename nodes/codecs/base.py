"""The codec interface every variant implements.

A codec turns an RGB image into an ordered list of chunks (one chunk for
classic codecs, one per scan/layer for progressive ones) and turns whatever
prefix of chunks reached the edge back into pixels. ``progressive`` tells the
edge whether a strict prefix is still decodable; a non-progressive codec given
a partial payload returns None (a miss).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


class CodecParamsError(ValueError):
    def __init__(self, key: str | None, problem: str, allowed: str | None = None):
        self.key, self.problem, self.allowed = key, problem, allowed
        super().__init__(f"{key}: {problem}" + (f" (allowed: {allowed})" if allowed else ""))


@dataclass(frozen=True)
class Param:
    """A codec parameter: type, default and allowed range or choices."""

    type: type
    default: Any
    lo: float | None = None
    hi: float | None = None
    choices: tuple | None = None
    doc: str = ""

    def check(self, key: str, value: Any) -> Any:
        if self.type is bool:
            if not isinstance(value, bool):
                raise CodecParamsError(key, f"expected true/false, got {value!r}")
            return value
        if self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CodecParamsError(key, f"expected a number, got {value!r}", self._allowed())
            if self.type is int and not float(value).is_integer():
                raise CodecParamsError(key, f"expected an integer, got {value!r}", self._allowed())
            value = self.type(value)
        elif not isinstance(value, self.type):
            raise CodecParamsError(key, f"expected {self.type.__name__}, got {value!r}", self._allowed())
        if self.choices is not None and value not in self.choices:
            raise CodecParamsError(key, f"invalid value {value!r}", self._allowed())
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise CodecParamsError(key, f"out of range: {value!r}", self._allowed())
        return value

    def _allowed(self) -> str | None:
        if self.choices is not None:
            return ", ".join(map(str, self.choices))
        if self.lo is not None or self.hi is not None:
            return f"{self.type.__name__} {self.lo if self.lo is not None else '-inf'}..{self.hi if self.hi is not None else 'inf'}"
        return self.type.__name__


@dataclass
class Encoded:
    """An encoded image: ordered chunks as sent on the wire."""

    chunks: list[bytes]
    header_bytes: int = 0  # bytes of format headers inside chunks (tables, markers)
    meta: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(len(c) for c in self.chunks)


class Codec:
    """Base class: subclasses set ``name``, ``params_spec``, ``progressive``.

    Besides ``encode``/``decode`` a codec may override the optional hooks below.
    Each has a no-op default here, so the client and edge agents call them on
    every codec (or test the declared class flag) instead of probing with
    ``getattr``; a newcomer sees every extension point in one place.
    """

    name: ClassVar[str] = ""
    progressive: ClassVar[bool] = False
    params_spec: ClassVar[dict[str, Param]] = {}
    #: True when the edge should call :meth:`decode_features` and classify with
    #: :meth:`predict_features` instead of :meth:`decode` plus the edge's model.
    split_computing: ClassVar[bool] = False
    #: True when :meth:`feedback` does something, so the client keeps each sent
    #: image until the edge's reply arrives only for codecs that learn from it.
    learns_from_feedback: ClassVar[bool] = False
    #: the image side the codec works at (other sizes are resized to it); None: any size
    input_size: int | None = None

    def __init__(self, **params: Any):
        self.params = self.validate(params)

    @classmethod
    def validate(cls, params: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key in params:
            if key not in cls.params_spec:
                raise CodecParamsError(key, "unknown parameter",
                                       ", ".join(cls.params_spec) or "no parameters")
        for key, spec in cls.params_spec.items():
            out[key] = spec.check(key, params[key]) if key in params else spec.default
        return out

    def encode(self, image: np.ndarray) -> Encoded:  # HxWx3 uint8 RGB
        raise NotImplementedError

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        """Pixels from the received prefix ``chunks`` (of ``total_chunks``), or None."""
        raise NotImplementedError

    # -- optional hooks (no-op defaults) -------------------------------------------------------

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> None:
        """Make what this variant needs before a run (fit artifacts on first use); most need nothing.

        Runs on the controller, so an override may import its ``fitting`` module
        inside the method; runtime modules never import it at module level.
        """
        return None

    def set_stream(self, deadline_ms: float | None = None, period_ms: float | None = None) -> None:
        """Told the stream's deadline and frame period before a trial (client side).

        Rate-aware codecs (AutoJPEG) pick their operating point from these.
        """
        return None

    def feedback(self, image: np.ndarray, encoded: Encoded, record: dict, label: int | None = None) -> None:
        """Learn from the edge's reply to one image (client side).

        Called only when :attr:`learns_from_feedback` is true, with the source
        image, what was sent, the trial record (edge result merged) and the
        ground-truth label. AdaCompress and AutoJPEG adapt their quality here.
        """
        return None

    def decode_features(self, chunks: list[bytes], total_chunks: int) -> Any | None:
        """Features for :meth:`predict_features` from the received prefix, or None (edge side).

        Used instead of :meth:`decode` when :attr:`split_computing` is true.
        """
        raise NotImplementedError(f"{self.name} is not a split-computing codec")

    def predict_features(self, features: Any) -> np.ndarray:
        """Class probabilities (batch x classes) from :meth:`decode_features`' output (edge side)."""
        raise NotImplementedError(f"{self.name} is not a split-computing codec")

    def decode_extra(self, chunks: list[bytes], total_chunks: int) -> list[np.ndarray]:
        """Extra images carried in the payload that the edge should also classify.

        AdaCompress piggybacks a reference image for its agent's reward; the
        edge returns their top-5 as ``extra_top5``. Default: none.
        """
        return []

    # -- offline evaluation hooks (`hilbed eval-codecs`, hilbed.nodes.codecs.fitting.evaluate) ----

    def adapt_model(self, model: Any) -> Any:
        """The classifier to evaluate decoded images with: ``model`` unless the artifact changes it.

        AutoJPEG fitted with ``--finetune`` returns the fine-tuned model it carries.
        """
        return model

    def summary(self) -> dict | None:
        """What the codec did over a run, for the evaluation row (``codec_summary``); None: nothing."""
        return None

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params.items())})"
