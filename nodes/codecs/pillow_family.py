"""Classic image codecs through Pillow: JPEG, progressive JPEG, WebP, PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile

from hilbed.nodes.codecs.base import Codec, Encoded, Param

SOS = b"\xff\xda"
EOI = b"\xff\xd9"


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")


def _from_bytes(data: bytes, allow_truncated: bool = False) -> np.ndarray | None:
    prev = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError):
        return None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = prev


def jpeg_header_bytes(data: bytes) -> int:
    """Bytes before the first scan's entropy-coded data (SOI, tables, SOF, SOS header)."""
    i = data.find(SOS)
    if i < 0:
        return len(data)
    seg_len = int.from_bytes(data[i + 2:i + 4], "big")
    return i + 2 + seg_len + len(EOI)


_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


class JpegCodec(Codec):
    name = "jpeg"
    params_spec = {
        "quality": Param(int, 75, 1, 100, doc="libjpeg quality"),
        "optimize": Param(bool, True, doc="optimised Huffman tables (per image; kept in the stream when abbreviated)"),
        "subsampling": Param(str, "4:2:0", choices=tuple(_SUBSAMPLING)),
        "headers": Param(str, "full", choices=("full", "abbreviated"),
                         doc="full streams, or abbreviated streams whose tables (DQT, and DHT unless optimize) are "
                             "pre-shared once per configuration (nodes/codecs/jpeg_tables.py)"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self._profile = None
        if self.params.get("headers") == "abbreviated":
            from .jpeg_tables import JpegProfile
            self._profile = JpegProfile(quality=self.params["quality"], optimize=self.params["optimize"],
                                        subsampling=self.params["subsampling"], headers="abbreviated")

    def _save_kwargs(self) -> dict:
        return dict(format="JPEG", quality=self.params["quality"], optimize=self.params["optimize"],
                    subsampling=_SUBSAMPLING[self.params["subsampling"]])

    def encode(self, image: np.ndarray) -> Encoded:
        if self._profile is not None:
            data, hdr, full_hdr = self._profile.encode(image)
            return Encoded([data], header_bytes=hdr, meta={"header_bytes_full": full_hdr})
        buf = io.BytesIO()
        _to_pil(image).save(buf, **self._save_kwargs())
        data = buf.getvalue()
        return Encoded([data], header_bytes=jpeg_header_bytes(data))

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        if len(chunks) < total_chunks or not chunks:
            return None
        if self._profile is not None:
            return self._profile.decode(b"".join(chunks))
        return _from_bytes(b"".join(chunks))


class ProgressiveJpegCodec(JpegCodec):
    """Progressive JPEG: one chunk per scan; the edge decodes the scans that arrived."""

    name = "jpeg-progressive"
    progressive = True
    params_spec = {k: v for k, v in JpegCodec.params_spec.items() if k != "headers"}

    def _save_kwargs(self) -> dict:
        kw = super()._save_kwargs()
        kw["progressive"] = True
        return kw

    def encode(self, image: np.ndarray) -> Encoded:
        enc = super().encode(image)
        data = enc.chunks[0]
        starts = []
        i = data.find(SOS)
        while i >= 0:
            starts.append(i)
            i = _next_sos(data, i + 2)
        if not starts:
            return enc
        # chunk 0 = headers + first scan; then one chunk per further scan; EOI rides on the last.
        bounds = starts[1:] + [len(data)]
        chunks = [data[:bounds[0]]]
        for a, b in zip(bounds[:-1], bounds[1:]):
            chunks.append(data[a:b])
        return Encoded(chunks, header_bytes=enc.header_bytes, meta={"scans": len(starts)})

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        if not chunks:
            return None
        data = b"".join(chunks)
        if len(chunks) < total_chunks:
            data += EOI
        return _from_bytes(data, allow_truncated=True)


def _next_sos(data: bytes, start: int) -> int:
    """Next SOS marker, skipping entropy-coded data (0xFF00 stuffing, RSTn) and other segments."""
    i = start
    n = len(data)
    while True:
        i = data.find(b"\xff", i)
        if i < 0 or i + 1 >= n:
            return -1
        m = data[i + 1]
        if m == 0xDA:
            return i
        i += 2  # 0x00 stuffing, RST markers, or table/marker segments we skip byte-wise


class WebpCodec(Codec):
    name = "webp"
    params_spec = {
        "quality": Param(int, 75, 0, 100),
        "method": Param(int, 4, 0, 6, doc="encoder effort"),
        "lossless": Param(bool, False),
    }

    def encode(self, image: np.ndarray) -> Encoded:
        buf = io.BytesIO()
        _to_pil(image).save(buf, format="WEBP", quality=self.params["quality"], method=self.params["method"],
                            lossless=self.params["lossless"])
        data = buf.getvalue()
        return Encoded([data], header_bytes=min(len(data), 20))  # RIFF+WEBP+chunk header

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        if len(chunks) < total_chunks or not chunks:
            return None
        return _from_bytes(b"".join(chunks))


class PngCodec(Codec):
    name = "png"
    params_spec = {"compress_level": Param(int, 9, 0, 9)}

    def encode(self, image: np.ndarray) -> Encoded:
        buf = io.BytesIO()
        _to_pil(image).save(buf, format="PNG", compress_level=self.params["compress_level"], optimize=False)
        data = buf.getvalue()
        return Encoded([data], header_bytes=8 + 25 + 12)  # signature, IHDR, IEND

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        if len(chunks) < total_chunks or not chunks:
            return None
        return _from_bytes(b"".join(chunks))
