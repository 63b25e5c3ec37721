"""The numpy colour transform of the JPEG-family encoders, and fit-set-shared Huffman tables."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hilbed.nodes.codecs.jpeg_tables import (
    BT601,
    M_DHT,
    ColourTransform,
    JpegProfile,
    decode_jpeg,
    encode_jpeg,
    fit_huffman,
    header_bytes,
    optimal_table,
    recode,
    rgb_to_yuv8,
    scan_symbols,
    split_stream,
    yuv8_image,
)
from hilbed.nodes.workload.synthetic import make_image

WEIGHTS = [BT601, (0.2, 0.6, 0.2), (0.05, 0.9, 0.05), (0.4, 0.3, 0.3)]


@pytest.fixture(scope="module")
def images():
    return [make_image(i, "test", 0, 32)[0] for i in range(12)]


def _psnr(a, b) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 99.0 if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def _extremes() -> np.ndarray:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    corners = np.array([[a, b, c] for a in (0, 255) for b in (0, 255) for c in (0, 255)], np.uint8)
    x[0, :8] = corners
    return x


@pytest.mark.parametrize("w", WEIGHTS)
def test_numpy_yuv_matches_reference_matrix_math(w):
    ct = ColourTransform.of(w)
    x = _extremes()
    got = rgb_to_yuv8(x, ct.weights).astype(np.int64)
    ref = np.clip(np.floor(ct.forward_float(x) + 0.5), 0, 255)  # Phi x + (0, 128, 128), rounded half up
    assert got.shape == x.shape
    assert np.abs(got - ref).max() <= 1  # float32 ties
    assert (got != ref).mean() < 0.01
    # and Pillow's convert("RGB", matrix), which the encoder used before, to within one step
    pil = np.asarray(Image.fromarray(x).convert("RGB", ct._pil_matrix())).astype(np.int64)
    assert np.abs(got - pil).max() <= 1 and (got != pil).mean() < 0.01
    assert np.array_equal(ct.forward(x), rgb_to_yuv8(x, ct.weights))


def test_yuv_planes_reach_libjpeg_unconverted():
    ct = ColourTransform.of((0.2, 0.6, 0.2))
    x = _extremes()
    yuv = rgb_to_yuv8(x, ct.weights)
    data = encode_jpeg(x, tables=np.ones((3, 64)), colour=ct)  # q = 1 everywhere: near-lossless planes
    from io import BytesIO
    with Image.open(BytesIO(data)) as im:
        im.draft("YCbCr", None)
        planes = np.asarray(Image.frombuffer("RGB", im.size, im.tobytes(), "raw", "RGB", 0, 1)).astype(int)
    assert np.abs(planes - yuv.astype(int)).max() <= 2
    assert yuv8_image(yuv).mode == "YCbCr"


@pytest.mark.parametrize("w", WEIGHTS[1:])
def test_custom_colour_round_trip_within_jpeg_error(images, w):
    ct = ColourTransform.of(w)
    for headers in ("full", "abbreviated"):
        prof = JpegProfile(quality=90, colour=ct, headers=headers, optimize=headers == "full")
        for x in images[:4]:
            data, _, _ = prof.encode(x)
            back = prof.decode(data)
            assert back.shape == x.shape
            ref = decode_jpeg(encode_jpeg(x, quality=90, subsampling="4:4:4"))  # libjpeg's own BT.601
            assert _psnr(back, x) > 28.0 and _psnr(back, x) > _psnr(ref, x) - 3.0


# ------------------------------------------------------------ Huffman ---

@pytest.mark.parametrize("sub", ["4:4:4", "4:2:0"])
@pytest.mark.parametrize("optimize", [False, True])
def test_recoding_with_the_streams_own_tables_is_byte_identical(images, sub, optimize):
    for x in images[:3] + [_extremes()]:
        full = encode_jpeg(x, quality=75, optimize=optimize, subsampling=sub)
        ss = scan_symbols(full)
        assert recode(full, ss.tables)[-200:] == full[-200:]
        assert decode_jpeg(recode(full, ss.tables)).tolist() == decode_jpeg(full).tolist()


def test_optimal_table_matches_libjpeg_optimize(images):
    for x in images[:3]:
        std = encode_jpeg(x, quality=75, optimize=False, subsampling="4:2:0")
        opt = encode_jpeg(x, quality=75, optimize=True, subsampling="4:2:0")
        own = recode(std, fit_huffman([std], min_count=0))
        # same code lengths as libjpeg's optimiser: equal entropy-coded payload (libjpeg writes 4 DHT segments, we 1)
        assert len(own) - header_bytes(own) == len(opt) - header_bytes(opt)
    t = optimal_table(np.r_[np.ones(200), np.zeros(56)] * 1000)
    assert sum(t.bits) == 200 and len(t.codes()) == 200 and max(ln for _, ln in t.codes().values()) <= 16


@pytest.mark.parametrize("colour", [None, (0.2, 0.6, 0.2)])
def test_shared_tables_decode_and_beat_standard_on_the_fit_set(images, colour):
    ct = ColourTransform.of(colour) if colour else None
    prof = JpegProfile(quality=60, colour=ct, optimize=False, subsampling="4:4:4", headers="abbreviated")
    fit = images[:8]
    std = [prof._full(x) for x in fit]
    tables = fit_huffman(std)
    markers = prof.markers | {M_DHT}
    std_bytes = shared_bytes = 0
    for x, full in zip(fit + [_extremes()], std + [prof._full(_extremes())]):
        sh = recode(full, tables)
        assert np.array_equal(decode_jpeg(sh, ct), decode_jpeg(full, ct))  # same coefficients, other codes
        a_std, a_sh = split_stream(full, markers)[1], split_stream(sh, markers)[1]
        if full in std:  # an image unlike the fit set (noise) still codes, maybe longer
            std_bytes += len(a_std)
            shared_bytes += len(a_sh)
    assert shared_bytes <= std_bytes
    # the fit set alone: never worse than the standard tables
    total_std = sum(len(f) - header_bytes(f) for f in std)
    total_sh = sum(len(recode(f, tables)) - header_bytes(recode(f, tables)) for f in std)
    assert total_sh <= total_std
