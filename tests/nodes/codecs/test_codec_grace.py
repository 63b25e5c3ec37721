"""GRACE: Theorem 1 / Algorithm 1, Theorem 2, gradient probing, the codec and its fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hilbed.nodes.codecs import make_codec
from hilbed.nodes.codecs.artifacts import ArtifactStore
from hilbed.nodes.codecs.fitting.grace import fit_grace, probe, theorem2
from hilbed.nodes.codecs.grace import GraceProbe, quant_tables, theorem1
from hilbed.nodes.codecs.jpeg_tables import ColourTransform, dqt_tables, encode_jpeg_reference, parse_header
from hilbed.nodes.workload.synthetic import make_image

# -------------------------------------------------------------- Theorem 1 ---

def test_theorem1_hand_computed_case():
    # theta = |g| |s| = [10, 1, 0.5, 4], B = 6. Sorted: 10, 4, 1, 0.5.
    # k=4: d=6/4=1.5 > 0.5 -> no; k=3: d=(6-0.5)/3=1.833 > 1 -> no; k=2: d=(6-1.5)/2=2.25 <= 4 -> K=2.
    theta = np.array([10.0, 1.0, 0.5, 4.0])
    d, K = theorem1(theta, 6.0)
    assert K == 2
    assert d.tolist() == pytest.approx([2.25, 1.0, 0.5, 2.25])
    # q_n = 2 d_n / |g_n| with g = [2, 1, 0.5, 1] (s = theta / g)
    g = np.array([2.0, 1.0, 0.5, 1.0])
    q = quant_tables(g, theta / g, 6.0)
    assert q.tolist() == pytest.approx([2.25, 2.0, 2.0, 4.5])


def test_theorem1_edge_cases_and_optimality():
    theta = np.array([3.0, 3.0, 3.0])
    d, K = theorem1(theta, 3.0)          # budget below every cap: equal split
    assert K == 3 and d.tolist() == pytest.approx([1.0, 1.0, 1.0])
    d, K = theorem1(theta, 100.0)        # budget covers all caps: d = theta
    assert K == 0 and d.tolist() == pytest.approx(theta.tolist())
    rng = np.random.default_rng(0)
    for _ in range(50):
        th = rng.exponential(1.0, 40)
        B = rng.uniform(0.05, 1.0) * th.sum()
        d, K = theorem1(th, B)
        assert np.all(d <= th + 1e-12) and np.all(d > 0)
        assert d.sum() == pytest.approx(B)
        lam = d.max()                     # water-filling: d = min(theta, lambda)
        assert np.allclose(d, np.minimum(th, lam))
        # no feasible perturbation improves the product (sum log d)
        for _ in range(20):
            i, j = rng.choice(40, 2, replace=False)
            eps = 1e-3 * min(d[i], d[j])
            e = d.copy()
            e[i] -= eps
            e[j] = min(e[j] + eps, th[j])
            assert np.sum(np.log(e)) <= np.sum(np.log(d)) + 1e-12


def test_theorem2_weights():
    (wr, wg, wb), z1, z2 = theorem2(np.array([0.5, 1.0, 2.0]), np.array([2.0, 3.0, 4.0]))
    assert (z1, z2) == (1.0, 3.0)
    assert (wr, wg, wb) == pytest.approx((3 / 5, 1 / 5, 1 / 5))
    (wr, wg, wb), z1, _ = theorem2(np.array([-1.0, -2.0]), np.array([1.0, 1.0]))
    assert z1 < 0 and min(wr, wg, wb) > 0 and wr + wg + wb == pytest.approx(1.0)


# ----------------------------------------------------------------- probing ---

class _Linear:
    """A LoadedModel stand-in whose loss gradient w.r.t. pixels is known in closed form."""

    def __init__(self):
        import torch
        self.device = torch.device("cpu")
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        torch.manual_seed(0)
        self.module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))


def test_probe_gradient_is_the_block_dct_of_the_pixel_gradient():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from hilbed.nodes.codecs.dct import block_dct
    m = _Linear()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
    labels = np.array([0, 1, 1, 0])
    out = probe(m, imgs, labels, None, batch=4, keep_ratios=True)
    x = torch.tensor(imgs, dtype=torch.float32).permute(0, 3, 1, 2).requires_grad_(True)
    loss = F.cross_entropy(m.module(x / 255.0), torch.tensor(labels), reduction="sum")
    (gx,) = torch.autograd.grad(loss, x)
    g_s = block_dct(gx.numpy().astype(np.float64))        # orthonormal: dL/ds = DCT(dL/dx)
    want = np.abs(g_s).mean(axis=(0, 2, 3))
    assert np.allclose(out["g_abs"], want, rtol=1e-4, atol=1e-9)
    s = block_dct(imgs.transpose(0, 3, 1, 2).astype(np.float64) - 128)
    assert np.allclose(out["s_abs"], np.abs(s).mean(axis=(0, 2, 3)), rtol=1e-5)
    assert np.allclose(out["s_max"], np.abs(s).max(axis=(2, 3)).mean(axis=0), rtol=1e-5)
    assert len(out["ratio_bg"]) == g_s[:, 1].size


# -------------------------------------------------------------- the codec ---

@pytest.fixture(scope="module")
def grace_artifact(tmp_path_factory, synthetic_model):
    """A small fit on the synthetic default (the path `hilbed fit grace` takes)."""
    from hilbed.nodes.codecs import fitting as F
    root = tmp_path_factory.mktemp("grace-store")
    store = ArtifactStore(root)
    F.set_threads(1)
    x, y, loaded, src = F.prepare("synthetic", "synthetic-cnn", 64, 32, 0, "cpu")
    art = fit_grace(x, y, loaded, src.meta(), store)
    with pytest.MonkeyPatch.context() as mp:  # codecs built by make_codec read the default store
        mp.setenv("HILBED_ARTIFACTS", str(root))
        yield store, art


def test_fit_writes_a_content_hashed_artifact_with_probe_stats(grace_artifact):
    store, art = grace_artifact
    assert art.id.startswith("grace-") and store.get(art.id).id == art.id
    d = json.loads(art.read_bytes("probe.json"))
    w = d["weights_gyuv"]
    assert sum(w) == pytest.approx(1.0) and min(w) > 0
    assert art.meta["dataset"] == "synthetic" and art.meta["n_images"] == 64
    pr = GraceProbe(art)
    g, s = pr.gs()
    assert g.shape == (3, 8, 8) and np.all(g >= 0) and np.all(s > 0)


def test_codec_uses_theorem1_tables_verbatim_and_gyuv(grace_artifact):
    store, art = grace_artifact
    c = make_codec("grace", {"artifact": art.id, "budget": 0.4})
    assert c.profile.colour == ColourTransform.of(GraceProbe(art).weights)
    img = make_image(5, "test", 0, 32)[0]
    enc = c.encode(img)
    got = dqt_tables(enc.chunks[0])
    want = GraceProbe(art).tables(0.4)
    for k in range(3):
        assert np.array_equal(got[k], want[k])
    segs, _ = parse_header(enc.chunks[0])
    sof = next(s for s in segs if s.marker == 0xC0).raw
    assert [sof[11 + 3 * i] for i in range(3)] == [0x11, 0x11, 0x11]  # 4:4:4
    dec = make_codec("grace", {"artifact": art.id, "budget": 0.4})  # the edge's own instance
    out = dec.decode(enc.chunks, 1)
    assert out.shape == img.shape and np.mean(np.abs(out.astype(int) - img)) < 20
    assert dec.decode(enc.chunks, 2) is None  # partial payload: a miss


def test_fast_encode_gives_the_reference_path_bytes(grace_artifact):
    """The codec's encode (one numpy colour pass, Pillow's encoder called directly) writes the bytes of the plain
    Image.frombuffer + Image.save path, for G-YUV and BT.601, 4:4:4 and 4:2:0, at 32 and 224 px."""
    store, art = grace_artifact
    rng = np.random.default_rng(18)
    imgs = [make_image(7, "test", 0, 32)[0], rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            make_image(8, "test", 0, 224)[0]]
    for colour in ("gyuv", "bt601"):
        for sub in ("4:4:4", "4:2:0"):
            c = make_codec("grace", {"artifact": art.id, "budget": 0.3, "colour": colour, "subsampling": sub})
            p = c.profile
            for x in imgs:
                ref = encode_jpeg_reference(x, c.tables, colour=p.colour, optimize=p.optimize, subsampling=sub)
                assert c.encode(x).chunks[0] == ref


def test_budget_trades_bytes_for_loss_and_abbreviated_headers(grace_artifact, synthetic_model):
    store, art = grace_artifact
    imgs = [make_image(i, "test", 0, 32)[0] for i in range(24)]
    sizes = []
    for b in (0.1, 0.4, 0.8):
        c = make_codec("grace", {"artifact": art.id, "budget": b})
        sizes.append(np.mean([c.encode(im).total_bytes for im in imgs]))
    assert sizes[0] > sizes[1] > sizes[2]
    full = make_codec("grace", {"artifact": art.id, "budget": 0.4})
    abbr = make_codec("grace", {"artifact": art.id, "budget": 0.4, "headers": "abbreviated"})
    for im in imgs[:4]:
        ef, ea = full.encode(im), abbr.encode(im)
        assert ea.total_bytes < 0.7 * ef.total_bytes  # DQT/DHT/APP0 stay home
        assert ea.header_bytes < 40 and ea.meta["header_bytes_full"] > 600
        assert np.array_equal(abbr.decode(ea.chunks, 1), make_codec("grace", {
            "artifact": art.id, "budget": 0.4, "headers": "abbreviated", "huffman": "standard"}).decode(ea.chunks, 1))


def test_auto_fit_on_first_use_is_cached(tmp_path, monkeypatch, synthetic_model):
    import time
    monkeypatch.setenv("HILBED_ARTIFACTS", str(tmp_path))
    t0 = time.monotonic()
    c1 = make_codec("grace", {"probe_images": 32})
    first = time.monotonic() - t0
    assert first < 60
    t0 = time.monotonic()
    c2 = make_codec("grace", {"probe_images": 32, "budget": 0.2})
    assert c2.artifact_id == c1.artifact_id and time.monotonic() - t0 < first
    assert (tmp_path / "auto").is_dir()


def test_bad_params_are_refused():
    from hilbed.nodes.codecs import CodecParamsError, validate_codec_params
    with pytest.raises(CodecParamsError):
        validate_codec_params("grace", {"budget": 0})
    with pytest.raises(CodecParamsError):
        validate_codec_params("grace", {"headers": "none"})
    with pytest.raises(CodecParamsError):
        validate_codec_params("grace", {"nonsense": 1})


def test_cifar_probe_on_real_data(shared_data):
    """The ResNet-20 probe on a few CIFAR images gives valid G-YUV weights and decodable streams."""
    from hilbed.nodes.codecs import fitting as F
    ckpt = shared_data / "models" / "resnet20-12fca82f.th"
    x, y, loaded, src = F.prepare(str(shared_data / "cifar10" / "train"), str(ckpt), 16, 32, 0, "cpu")
    out = probe(loaded, x, y, None, keep_ratios=True)
    (w, z1, z2) = theorem2(out["ratio_bg"], out["ratio_rg"])
    assert sum(w) == pytest.approx(1.0) and z1 > 0 and z2 > 0
    assert out["s_abs"][0, 0, 0] > out["s_abs"][0, 7, 7]  # energy compaction


def test_clients_need_no_torch_for_grace_and_autojpeg(tmp_path):
    """GRACE and AutoJPEG artifacts are plain numbers: a client encodes and decodes with numpy + Pillow only."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path
    rng = np.random.default_rng(0)
    stats = {k: {a: rng.uniform(0.1, 5, (3, 64)).tolist() for a in ("g_abs", "s_abs", "s_max")}
             for k in ("gyuv", "bt601", "rgb")}
    store = ArtifactStore(tmp_path)
    g = store.put("grace", {"probe.json": json.dumps({"weights_gyuv": [0.3, 0.45, 0.25], **stats}).encode()}, {})
    a = store.put("autojpeg", {"params.json": json.dumps({"tables": rng.integers(1, 60, (3, 64)).tolist(),
                                                          "weights": [0.3, 0.55, 0.15]}).encode()}, {"ratio": 0.1})
    code = textwrap.dedent(f"""
        import os, sys
        sys.modules["torch"] = None
        os.environ["HILBED_ARTIFACTS"] = {str(tmp_path)!r}
        from hilbed.nodes.codecs import make_codec
        from hilbed.nodes.workload.synthetic import make_image
        img = make_image(0, "test", 0, 32)[0]
        for name, p in (("grace", {{"artifact": {g.id!r}}}), ("autojpeg", {{"artifact": {a.id!r}}}),
                        ("grace", {{"artifact": {g.id!r}, "headers": "abbreviated"}})):
            c = make_codec(name, p)
            e = c.encode(img)
            assert make_codec(name, p).decode(e.chunks, 1).shape == img.shape
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parents[3]))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
