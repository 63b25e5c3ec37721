"""A grayscale JPEG codec: only luma travels, so images are smaller than colour JPEG at the same quality."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from hilbed.nodes.codecs.base import Codec, Encoded, Param


class GrayJpegCodec(Codec):
    name = "gray-jpeg"
    params_spec = {"quality": Param(int, 60, 1, 100, doc="libjpeg quality of the luma plane")}

    def encode(self, image: np.ndarray) -> Encoded:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image, np.uint8), "RGB").convert("L").save(
            buf, format="JPEG", quality=self.params["quality"], optimize=True)
        return Encoded([buf.getvalue()])

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        if not chunks or len(chunks) < total_chunks:
            return None
        try:
            with Image.open(io.BytesIO(b"".join(chunks))) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError):
            return None
