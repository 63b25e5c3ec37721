"""GRACE with `huffman: shared`: fit-set Huffman tables in the artifact, the fast re-coder, round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hilbed.nodes.codecs import make_codec
from hilbed.nodes.codecs.artifacts import ArtifactStore
from hilbed.nodes.codecs.base import CodecParamsError
from hilbed.nodes.codecs.fitting.grace import HUFFMAN_BUDGETS, fit_grace, fit_huffman_fast
from hilbed.nodes.codecs.jpeg_tables import (
    JpegProfile,
    SharedHuffmanProfile,
    decode_jpeg,
    encode_symbols,
    encode_symbols_fast,
    fit_huffman,
    join_stream,
    recode,
    recode_fast,
    scan_symbols,
    scan_symbols_fast,
    split_stream,
)
from hilbed.nodes.workload.synthetic import make_image


def _images(n, split="test", size=32):
    return [make_image(i % 10, split, i, size)[0] for i in range(n)]


@pytest.mark.parametrize("prof", [JpegProfile(quality=75, optimize=False, subsampling="4:2:0"),
                                  JpegProfile(quality=20, optimize=False, subsampling="4:4:4"),
                                  JpegProfile(quality=95, optimize=False, subsampling="4:4:4")])
def test_fast_recoder_matches_the_reference_byte_for_byte(prof):
    streams = [prof._full(x) for x in _images(24, size=40)]  # 40 px: partial MCUs at the edges
    tables = fit_huffman(streams[:12])
    assert fit_huffman_fast(streams[:12]) == tables
    for s in streams:
        syms, _ = scan_symbols_fast(s)
        assert [tuple(r) for r in syms.tolist()] == scan_symbols(s).syms
        assert encode_symbols_fast(syms, tables) == encode_symbols(scan_symbols(s).syms, tables)
        r = recode_fast(s, tables)
        assert r == recode(s, tables)
        assert np.array_equal(decode_jpeg(r), decode_jpeg(s))


def test_shared_profile_abbreviated_round_trip():
    fit = [JpegProfile(quality=50, optimize=False)._full(x) for x in _images(20, "train")]
    prof = SharedHuffmanProfile(quality=50, headers="abbreviated", huffman=fit_huffman(fit))
    std = JpegProfile(quality=50, optimize=False, headers="abbreviated")
    for x in _images(8):
        data, hdr, full_hdr = prof.encode(x)
        assert data.count(b"\xff\xc4") == 0 or b"\xff\xc4" not in data[:hdr]  # no DHT in the header sent
        assert hdr == std.encode(x)[1]
        assert np.array_equal(prof.decode(data), std.decode(std.encode(x)[0]))
        full = prof.to_full(data)
        assert join_stream(*split_stream(full, prof.markers)) == full
    assert prof.tables_id != std.tables_id


@pytest.fixture(scope="module")
def grace_huffman_artifact(tmp_path_factory, synthetic_model):
    from hilbed.nodes.codecs import fitting as F
    root = tmp_path_factory.mktemp("grace-huffman-store")
    store = ArtifactStore(root)
    F.set_threads(1)
    x, y, loaded, src = F.prepare("synthetic", "synthetic-cnn", 32, 32, 0, "cpu")
    art = fit_grace(x, y, loaded, src.meta(), store, huffman_images=x, huffman_meta={"dataset": "synthetic"})
    plain = fit_grace(x, y, loaded, src.meta(), store)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HILBED_ARTIFACTS", str(root))
        yield art, plain


def test_grace_shared_huffman_codec(grace_huffman_artifact):
    art, plain = grace_huffman_artifact
    doc = json.loads(art.read_bytes("huffman.json"))
    assert len(doc["sets"]) == 4 * len(HUFFMAN_BUDGETS) and art.meta["huffman"]["images"] == 32
    imgs = _images(10)
    for colour, sub in (("gyuv", "4:4:4"), ("bt601", "4:2:0")):
        base = {"artifact": art.id, "budget": 0.3, "colour": colour, "subsampling": sub, "headers": "abbreviated"}
        enc = make_codec("grace", {**base, "huffman": "shared"})
        dec = make_codec("grace", {**base, "huffman": "shared"})
        std = make_codec("grace", {**base, "huffman": "standard"})
        assert enc.huffman_budget == 0.3
        n_sh = n_std = 0
        for x in imgs:
            e, s = enc.encode(x), std.encode(x)
            assert e.header_bytes == s.header_bytes
            assert np.array_equal(dec.decode(e.chunks, 1), std.decode(s.chunks, 1))  # same pixels
            n_sh += e.total_bytes
            n_std += s.total_bytes
        assert n_sh < n_std
    # a budget between fitted ones takes the nearest set; full headers carry the shared DHT in the stream
    c = make_codec("grace", {"artifact": art.id, "budget": 0.33, "huffman": "shared"})
    assert c.huffman_budget == 0.35
    e = c.encode(imgs[0])
    assert c.decode(e.chunks, 1).shape == imgs[0].shape
    with pytest.raises(CodecParamsError):
        make_codec("grace", {"artifact": plain.id, "huffman": "shared"})
