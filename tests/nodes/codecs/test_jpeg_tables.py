"""Block DCT, quantisation tables verbatim, colour transforms and abbreviated JPEG streams."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from hilbed.nodes.codecs.dct import ZIGZAG, block_dct, block_dct_t, block_idct, block_idct_t, dct_matrix
from hilbed.nodes.codecs.jpeg_tables import (
    BT601,
    M_DHT,
    M_DQT,
    ColourTransform,
    JpegProfile,
    JpegStreamError,
    clamp_tables,
    decode_jpeg,
    dqt_tables,
    encode_jpeg,
    header_bytes,
    ijg_quality_tables,
    join_stream,
    parse_header,
    parse_tables,
    project_simplex,
    shared_markers,
    split_stream,
)
from hilbed.nodes.codecs.pillow_family import jpeg_header_bytes
from hilbed.nodes.workload.synthetic import make_image


@pytest.fixture(scope="module")
def images():
    return [make_image(i, "test", 0, 32)[0] for i in range(6)]


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


# ------------------------------------------------------------------ DCT ---

def test_dct_matrix_is_orthonormal_and_matches_jpeg_definition():
    c = dct_matrix(8)
    assert np.allclose(c @ c.T, np.eye(8), atol=1e-12)
    # JPEG: F(u,v) = 1/4 C(u) C(v) sum f cos cos; a flat block of value a has DC = 8 a
    blk = np.full((8, 8), 10.0)
    assert block_dct(blk)[0, 0, 0, 0] == pytest.approx(80.0)
    assert np.abs(block_dct(blk)[0, 0].ravel()[1:]).max() < 1e-9
    # one cosine basis image lands in exactly one coefficient
    x = np.arange(8)
    basis = np.outer(np.cos((2 * x + 1) * 2 * np.pi / 16), np.cos((2 * x + 1) * 3 * np.pi / 16))
    s = block_dct(basis)[0, 0]
    assert abs(s[2, 3]) > 1 and np.abs(np.delete(s.ravel(), 2 * 8 + 3)).max() < 1e-9


@pytest.mark.parametrize("shape", [(32, 32), (3, 24, 16), (2, 3, 20, 27)])
def test_dct_idct_round_trip_numpy_and_torch(shape):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).uniform(0, 255, shape)
    s = block_dct(x)
    assert s.shape[-2:] == (8, 8)
    back = block_idct(s, shape[-2:])
    assert np.abs(back - x).max() < 1e-9
    # energy is preserved (orthonormal), padding aside
    if shape[-1] % 8 == 0 and shape[-2] % 8 == 0:
        assert np.sum(s ** 2) == pytest.approx(np.sum(x ** 2), rel=1e-9)
    if len(shape) == 4:
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        st = block_dct_t(t)
        assert np.allclose(st.detach().numpy(), s, atol=1e-9)
        assert np.allclose(block_idct_t(st, shape[-2:]).detach().numpy(), x, atol=1e-9)
        # the inverse is differentiable: grad of sum(idct(s)) w.r.t. s is the DCT of ones
        sv = torch.tensor(s, requires_grad=True)
        block_idct_t(sv).sum().backward()
        ones_dct = block_dct(np.ones((shape[0], shape[1], st.shape[2] * 8, st.shape[3] * 8)))
        assert np.allclose(sv.grad.numpy(), ones_dct, atol=1e-9)


def test_zigzag_is_a_permutation_in_jpeg_order():
    assert sorted(ZIGZAG.tolist()) == list(range(64))
    assert ZIGZAG[:6].tolist() == [0, 1, 8, 16, 9, 2] and ZIGZAG[-1] == 63


# --------------------------------------------------------------- tables ---

@pytest.mark.parametrize("q", [5, 10, 25, 50, 75, 90, 100])
def test_ijg_quality_tables_match_libjpeg(images, q):
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, "JPEG", quality=q)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        qt = im.quantization
    ours = ijg_quality_tables(q)
    assert np.array_equal(np.array(qt[0]), ours[0]) and np.array_equal(np.array(qt[1]), ours[1])


def test_custom_tables_are_used_verbatim_clamped_one_per_component(images):
    rng = np.random.default_rng(0)
    tables = rng.integers(1, 200, (3, 64))
    tables[0, 5], tables[1, 7], tables[2, 63] = 0, 300, 255  # clamped to 1 and 255
    data = encode_jpeg(images[0], tables, colour=ColourTransform(0.3, 0.4, 0.3))
    got = dqt_tables(data)
    assert set(got) == {0, 1, 2}
    want = clamp_tables(tables)
    assert want[0, 5] == 1 and want[1, 7] == 255
    for k in range(3):
        assert np.array_equal(got[k], want[k])
    # SOF: three components, 4:4:4 (sampling 0x11), table k for component k
    segs, _ = parse_header(data)
    sof = next(s for s in segs if s.marker == 0xC0).raw
    comps = [tuple(sof[10 + 3 * i:13 + 3 * i]) for i in range(3)]
    assert comps == [(1, 0x11, 0), (2, 0x11, 1), (3, 0x11, 2)]


# -------------------------------------------------------------- colour ---

def test_bt601_transform_matches_libjpeg_and_inverts(images):
    std = ColourTransform(*BT601)
    assert std.is_standard()
    yuv = std.forward(images[0]).astype(float)
    ref = np.asarray(Image.fromarray(images[0]).convert("YCbCr")).astype(float)
    assert np.abs(yuv - ref).max() <= 1.0
    m = std.matrix()
    assert m[1].tolist() == pytest.approx([-0.168736, -0.331264, 0.5], abs=1e-6)
    assert m[2].tolist() == pytest.approx([0.5, -0.418688, -0.081312], abs=1e-6)
    for w in [(0.2, 0.3, 0.5), (0.45, 0.45, 0.1), (1 / 3, 1 / 3, 1 / 3)]:
        ct = ColourTransform(*w)
        assert np.allclose(ct.inverse_matrix() @ ct.matrix(), np.eye(3), atol=1e-12)
        back = ct.inverse(ct.forward(images[1]))
        assert np.abs(back.astype(int) - images[1]).max() <= 2
    with pytest.raises(ValueError):
        ColourTransform(0.5, 0.6, -0.1)


def test_custom_colour_transform_is_really_applied_and_inverted(images):
    ct = ColourTransform(0.15, 0.55, 0.30)
    data = encode_jpeg(images[2], ijg_quality_tables(95), colour=ct)
    ours = decode_jpeg(data, ct)
    stock = decode_jpeg(data, None)  # a stock decoder assumes BT.601
    assert psnr(ours, images[2]) > 30
    assert psnr(stock, images[2]) < psnr(ours, images[2]) - 3


def test_project_simplex_exact_and_closest():
    assert project_simplex([0.2, 0.3, 0.5]).tolist() == pytest.approx([0.2, 0.3, 0.5])
    assert project_simplex([0.5, 0.6, -0.2]).tolist() == pytest.approx([0.45, 0.55, 0.0])
    assert project_simplex([3.0, 0.0, 0.0]).tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert project_simplex([1.0, 1.0, 1.0]).tolist() == pytest.approx([1 / 3] * 3)
    rng = np.random.default_rng(3)
    grid = np.array([(a, b, 1 - a - b) for a, b in itertools.product(np.linspace(0, 1, 101), repeat=2)
                     if a + b <= 1 + 1e-12])
    for _ in range(20):
        v = rng.normal(0.3, 0.8, 3)
        p = project_simplex(v)
        assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
        best = np.min(np.sum((grid - v) ** 2, axis=1))
        assert np.sum((p - v) ** 2) <= best + 1e-9


# ------------------------------------------------ abbreviated streams ---

@pytest.mark.parametrize("optimize", [False, True])
@pytest.mark.parametrize("colour", [None, ColourTransform(0.35, 0.45, 0.2)])
def test_abbreviated_streams_rebuild_byte_identical_and_decode_to_same_pixels(images, optimize, colour):
    tables = ijg_quality_tables(60)
    full_p = JpegProfile(tables=tables, colour=colour, optimize=optimize, headers="full")
    abbr_p = JpegProfile(tables=tables, colour=colour, optimize=optimize, headers="abbreviated")
    shared = abbr_p.tables_stream
    segs = parse_tables(shared)  # a valid tables-only datastream: SOI, tables, EOI
    markers = {s.marker for s in segs}
    assert M_DQT in markers and (M_DHT in markers) == (not optimize)
    for im in images:
        full, fh, _ = full_p.encode(im)
        abbr, ah, afh = abbr_p.encode(im)
        assert afh == fh and ah < fh
        assert len(full) - fh == len(abbr) - ah  # same entropy-coded payload
        assert join_stream(shared, abbr) == full
        assert np.array_equal(abbr_p.decode(abbr), full_p.decode(full))
        assert split_stream(full, shared_markers(optimize)) == (shared, abbr)
    if not optimize:  # standard Huffman tables pre-shared: only SOI, SOF, SOS, EOI travel
        assert ah <= 2 + 19 + 14 + 2


def test_header_accounting_agrees_with_pillow_family(images):
    data = encode_jpeg(images[0], quality=75, optimize=True, subsampling="4:2:0")
    assert header_bytes(data) == jpeg_header_bytes(data)
    # custom tables on a 32x32 image: the header outweighs the image (~600-700 bytes)
    full = JpegProfile(tables=ijg_quality_tables(50) + 1, optimize=False)
    d, h, _ = full.encode(images[0])
    assert h > 600 and h > len(d) - h


def test_abbreviated_stream_errors(images):
    p = JpegProfile(quality=50, headers="abbreviated", optimize=False)
    abbr, _, _ = p.encode(images[0])
    assert p.decode(abbr[:10]) is None
    with pytest.raises(JpegStreamError):
        parse_header(b"not a jpeg")
    with pytest.raises(JpegStreamError):
        parse_tables(encode_jpeg(images[0], quality=50))  # a full stream is not tables-only
    other = JpegProfile(quality=51, headers="abbreviated", optimize=False)
    other._shared = p.tables_stream  # wrong pre-shared tables must be refused at the encoder
    with pytest.raises(JpegStreamError):
        other.encode(images[0])
