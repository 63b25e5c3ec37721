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
    """Base class: subclasses set ``name``, ``params_spec``, ``progressive``."""

    name: ClassVar[str] = ""
    progressive: ClassVar[bool] = False
    params_spec: ClassVar[dict[str, Param]] = {}
    #: heavy dependencies the client needs (for provisioning groups)
    client_requires: ClassVar[tuple[str, ...]] = ("pillow",)

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

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> None:
        """Make what this variant needs before a run (fit artifacts on first use); most need nothing."""
        return None

    def fit(self, dataset: Any, model: Any, **params: Any) -> Any:
        """Fit tables/weights for this variant. Classic codecs need nothing."""
        return None

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params.items())})"
