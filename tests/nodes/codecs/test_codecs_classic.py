from __future__ import annotations

import numpy as np
import pytest

from hilbed.nodes.codecs import CodecParamsError, make_codec
from hilbed.nodes.workload.synthetic import make_image


@pytest.fixture(scope="module")
def image():
    return make_image(3, "test", 0, 32)[0]


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.mark.parametrize("name, params", [("jpeg", {"quality": 50}), ("jpeg-progressive", {"quality": 80}),
                                          ("webp", {"quality": 60}), ("png", {})])
def test_round_trip(image, name, params):
    c = make_codec(name, params)
    enc = c.encode(image)
    assert enc.total_bytes > 0 and 0 < enc.header_bytes <= enc.total_bytes
    out = c.decode(enc.chunks, len(enc.chunks))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert psnr(out, image) > (90 if name == "png" else 20)


def test_png_is_lossless_and_jpeg_quality_orders_bytes(image):
    png = make_codec("png")
    assert np.array_equal(png.decode(png.encode(image).chunks, 1), image)
    sizes = [make_codec("jpeg", {"quality": q}).encode(image).total_bytes for q in (10, 50, 90)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_non_progressive_partial_payload_is_a_miss(image):
    c = make_codec("jpeg", {"quality": 75})
    enc = c.encode(image)
    assert c.decode([], 1) is None
    assert c.decode(enc.chunks[:0], 1) is None


def test_progressive_partial_decode_improves_with_scans(image):
    c = make_codec("jpeg-progressive", {"quality": 90})
    enc = c.encode(image)
    n = len(enc.chunks)
    assert n >= 4, "progressive JPEG should have several scans"
    # the chunks are the whole file, cut at scan boundaries
    whole = make_codec("jpeg", {"quality": 90})  # same settings, baseline
    assert b"".join(enc.chunks).endswith(b"\xff\xd9") and all(ch[:2] == b"\xff\xda" for ch in enc.chunks[1:])
    assert whole.encode(image).total_bytes > 0
    quality = []
    for k in range(1, n + 1):
        out = c.decode(enc.chunks[:k], n)
        assert out is not None and out.shape == image.shape
        quality.append(psnr(out, image))
    assert quality[-1] > quality[0] + 3
    # every scan adds information: PSNR never falls by more than noise
    assert all(b >= a - 0.5 for a, b in zip(quality, quality[1:]))
    # the first chunk carries the headers
    assert enc.chunks[0][:2] == b"\xff\xd8"


def test_params_validated():
    with pytest.raises(CodecParamsError, match="out of range"):
        make_codec("jpeg", {"quality": 101})
    with pytest.raises(CodecParamsError, match="unknown parameter"):
        make_codec("webp", {"q": 1})
    with pytest.raises(CodecParamsError, match="unknown codec"):
        make_codec("bpg")
