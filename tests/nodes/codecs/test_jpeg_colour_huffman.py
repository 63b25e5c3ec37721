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
    JpegWriter,
    decode_jpeg,
    encode_jpeg,
    encode_jpeg_reference,
    fit_huffman,
    header_bytes,
    optimal_table,
    recode,
    rgb_to_yuv8,
    save_kwargs,
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


# ------------------------------------------------ the fast encode path ---

def test_fast_encode_path_gives_the_reference_bytes():
    """JpegWriter (Pillow's C encoder called directly, YUV planes unpacked without Image.frombuffer) writes the
    bytes of the plain path (Image.fromarray/frombuffer + Image.save) for random images, random custom colour
    weights and BT.601, tables or quality, both Huffman modes, both subsamplings, odd sizes, both header modes."""
    rng = np.random.default_rng(18)
    n = 0
    for trial in range(12):
        w = BT601 if trial % 4 == 0 else tuple(rng.dirichlet([1.0, 1.0, 1.0]))
        ct = ColourTransform.of(w)
        h, wd = (int(v) for v in rng.choice([8, 13, 32, 57, 224], 2))
        x = _extremes() if trial == 1 else (make_image(trial, "test", 0, h)[0] if trial % 2 else
                                            rng.integers(0, 256, (h, wd, 3), dtype=np.uint8))
        tables = rng.integers(1, 80, (3, 64))
        for optimize in (True, False):
            for sub in ("4:4:4", "4:2:0"):
                ref = encode_jpeg_reference(x, tables, colour=ct, optimize=optimize, subsampling=sub)
                writer = JpegWriter(save_kwargs(tables, optimize=optimize, subsampling=sub), ct)
                assert writer.direct, "the direct Pillow encoder call is off (Pillow changed?): slower, same bytes"
                assert writer.encode(x) == ref
                assert encode_jpeg(x, tables, colour=ct, optimize=optimize, subsampling=sub) == ref
                n += 1
        q = int(rng.integers(5, 100))
        assert encode_jpeg(x, quality=q, subsampling="4:2:0") == encode_jpeg_reference(x, quality=q,
                                                                                       subsampling="4:2:0")
        for headers in ("full", "abbreviated"):  # the profile (codecs' path) and its tables-only stream
            prof = JpegProfile(tables=tables, colour=ct, optimize=headers == "full", headers=headers)
            data, _, _ = prof.encode(x)
            full = encode_jpeg_reference(x, tables, colour=ct, optimize=headers == "full")
            assert prof.to_full(data) == full
            assert np.array_equal(prof.decode(data), decode_jpeg(full, ct))
    assert n == 48


def test_fast_encode_path_falls_back_where_libjpeg_needs_a_bigger_buffer():
    """Noise at q = 1 with optimised tables outgrows the buffer Pillow sizes (2 bytes/pixel): the writer takes the
    reference path (Image.save with the MAXBLOCK retry) and still gives its bytes."""
    x = np.random.default_rng(4).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    ct = ColourTransform.of((0.2, 0.6, 0.2))
    kw = save_kwargs(np.ones((3, 64)), optimize=True)
    writer = JpegWriter(kw, ct)
    assert writer._direct(x) is None  # the direct call reports the full buffer
    assert writer.encode(x) == encode_jpeg_reference(x, np.ones((3, 64)), colour=ct)


def test_a_direct_encoder_that_disagrees_is_not_used_and_says_so(monkeypatch, caplog):
    """If Pillow's C encoder call ever writes other bytes than Image.save, the writer uses Image.save and logs it."""
    import hilbed.nodes.codecs.jpeg_tables as J
    monkeypatch.setattr(J, "_direct_checked", {})
    monkeypatch.setattr(J, "_encode_core", lambda *a, **k: b"not the same bytes")
    ct = ColourTransform.of((0.25, 0.5, 0.25))
    x = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with caplog.at_level("WARNING", logger=J.__name__):
        writer = JpegWriter(save_kwargs(np.full((3, 64), 4), optimize=True), ct)
    assert not writer.direct and "using Image.save" in caplog.text
    assert writer.encode(x) == encode_jpeg_reference(x, np.full((3, 64), 4), colour=ct)


def test_yuv_planes_do_not_depend_on_the_image_size_or_the_buffers():
    """The planes the encoder hands libjpeg are the same whether computed per image, in one big batch or after
    another size used the per-thread buffers."""
    rng = np.random.default_rng(7)
    w = tuple(rng.dirichlet([1.0, 1.0, 1.0]))
    big = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    whole = rgb_to_yuv8(big, w)
    for r0, r1 in ((0, 1), (5, 37), (40, 64)):
        rgb_to_yuv8(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8), w)  # resize the work buffers in between
        assert np.array_equal(rgb_to_yuv8(np.ascontiguousarray(big[r0:r1]), w), whole[r0:r1])


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
