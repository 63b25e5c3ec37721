"""AutoJPEG: smoothed rounding, the size estimator (Eq. 3-9) against Pillow, ADMM, the adaptive codec."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hilbed.nodes.codecs import make_codec  # noqa: E402
from hilbed.nodes.codecs.artifacts import ArtifactStore  # noqa: E402
from hilbed.nodes.codecs.fitting.autojpeg import (  # noqa: E402
    colour_matrix_t,
    diff_jpeg,
    estimate_bits,
    estimate_bits_np,
    fit_autojpeg,
    fit_constraint,
    smooth_round,
)
from hilbed.nodes.codecs.jpeg_tables import (  # noqa: E402
    BT601,
    ColourTransform,
    JpegProfile,
    encode_jpeg_reference,
    ijg_quality_tables,
)
from hilbed.nodes.workload.synthetic import make_image  # noqa: E402


def test_smooth_round_forward_exact_backward_tanh_t5():
    x = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.49, -0.6, 2.5], requires_grad=True)
    y = smooth_round(x)
    assert y.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 3.0]  # R(x) = A(x - 0.5 - K) + K
    y.sum().backward()
    k = np.floor(x.detach().numpy())
    want = 2.5 * (1 - np.tanh(5 * (x.detach().numpy() - 0.5 - k)) ** 2)
    assert np.allclose(x.grad.numpy(), want, atol=1e-6)
    assert x.grad[2].item() == pytest.approx(2.5)           # steepest at the step
    assert x.grad[0].item() == pytest.approx(2.5 / np.cosh(2.5) ** 2, rel=1e-5)


def test_size_estimator_hand_computed_and_straight_through():
    z = torch.tensor([[0.0, 0.4, -0.4, 0.6, 3.0, -3.2, 7.6]], requires_grad=True)
    h = estimate_bits(z)
    # magnitude bits V: 0, 0, 0, 1 (|1|), 2 (|3|), 2 (|3|), 4 (|8|); M = 9 per non-zero
    assert h.item() == pytest.approx((0 + 0 + 0 + 1 + 2 + 2 + 4) + 9 * 4)
    h.backward()
    zz = z.detach().numpy()[0]
    want = (1 / np.log(2)) * ((zz + 0.5 > 0.5) / (zz + 0.5 + 1e-30) * 1.0 - (-zz + 0.5 > 0.5) / (-zz + 0.5 + 1e-30))
    want = want + 9 * np.sign(zz)
    assert np.allclose(z.grad.numpy()[0], want, atol=1e-5)  # gradient of the surrogate (no floors, L1)


def test_estimator_upper_bounds_real_pillow_sizes():
    """Stated tolerance: the RLE-bit estimate is an upper bound of the entropy-coded payload for >= 95 % of
    images and 1.3x-2.6x of it on average (Huffman coding is what it leaves out), correlation > 0.9."""
    imgs = [make_image(i, "test", 0, 32)[0] for i in range(60)]
    for q in (20, 50, 80):
        t = ijg_quality_tables(q)
        est = np.array([estimate_bits_np(im, t) for im in imgs]) / 8
        prof = JpegProfile(tables=t, colour=None, optimize=True, subsampling="4:4:4")
        pay = np.array([(lambda r: len(r[0]) - r[1])(prof.encode(im)) for im in imgs])
        ratio = est / pay
        assert np.mean(est >= pay) >= 0.95
        assert 1.3 <= ratio.mean() <= 2.6
        assert np.corrcoef(est, pay)[0, 1] > 0.9


def test_differentiable_jpeg_matches_the_real_codec():
    w = (0.25, 0.55, 0.20)
    assert np.allclose(colour_matrix_t(torch.tensor(w, dtype=torch.float64)).numpy(),
                       ColourTransform(*w).matrix(), atol=1e-12)
    imgs = np.stack([make_image(i, "test", 0, 32)[0] for i in range(8)])
    tables = ijg_quality_tables(40)
    x = torch.tensor(imgs, dtype=torch.float32).permute(0, 3, 1, 2)
    rec, z = diff_jpeg(x, torch.tensor(tables, dtype=torch.float32).view(3, 8, 8), torch.tensor(w), (32, 32))
    prof = JpegProfile(tables=tables, colour=ColourTransform(*w), optimize=True)
    real = np.stack([prof.decode(prof.encode(im)[0]) for im in imgs]).astype(float)
    ours = rec.detach().permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - real).mean() < 1.5   # libjpeg's integer DCT and 8-bit YUV rounding aside
    assert z.shape == (8, 3, 4, 4, 8, 8)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, synthetic_model):
    from hilbed.nodes.codecs import fitting as F
    F.set_threads(1)
    root = tmp_path_factory.mktemp("autojpeg-store")
    store = ArtifactStore(root)
    x, y, loaded, src = F.prepare("synthetic", "synthetic-cnn", 256, 32, 0, "cpu")
    arts = fit_autojpeg(x, y, loaded, src.meta(), store, [0.05, 0.12], steps=60, min_steps=40, batch=16,
                        measure_n=32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HILBED_ARTIFACTS", str(root))
        yield store, arts, (x, y, loaded)


def test_admm_meets_the_constraint_and_keeps_q_and_w_feasible(fitted):
    store, arts, (x, y, loaded) = fitted
    res = fit_constraint(x, y, loaded, 0.08, steps=100, min_steps=100, batch=8, lr_w=1e-2)
    C = res["C_bits"]
    assert res["final"]["bits"] <= 1.25 * C            # the size constraint (estimator bits) is met
    assert res["tables"].min() >= 1 and res["tables"].max() <= 255
    w = np.array(res["weights"])
    assert w.min() > 0 and w.sum() == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(w, BT601, atol=1e-6)         # the colour weights did move (projected gradient)
    small, big = (json.loads(a.read_bytes("params.json")) for a in arts)
    assert np.mean(small["tables"]) > np.mean(big["tables"])  # a tighter constraint -> coarser tables
    assert arts[0].meta["sizes"]["optimized"]["payload_mean"] < arts[1].meta["sizes"]["optimized"]["payload_mean"]


def test_finetune_moves_the_model_at_lr_1e4(fitted):
    _, _, (x, y, loaded) = fitted
    before = [p.detach().clone() for p in loaded.module.parameters()]
    res = fit_constraint(x, y, loaded, 0.1, steps=3, min_steps=3, batch=8, finetune=True)
    after = list(res["state_dict"].values())
    assert any(not torch.equal(a, b) for a, b in zip(before, [t for t in after if t.dtype.is_floating_point]))
    assert all(torch.equal(a, b) for a, b in zip(before, loaded.module.parameters()))  # the served model untouched


def test_fast_encode_gives_the_reference_path_bytes(fitted):
    """Each level's encode (learnt colour weights: one numpy pass, Pillow's encoder called directly) writes the
    bytes of the plain Image.frombuffer + Image.save path."""
    store, arts, _ = fitted
    rng = np.random.default_rng(18)
    imgs = [make_image(9, "test", 0, 32)[0], rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            make_image(10, "test", 0, 224)[0]]
    for a in arts:
        c = make_codec("autojpeg", {"artifact": a.id})
        lv = c.levels[0]
        for x in imgs:
            ref = encode_jpeg_reference(x, lv.tables, colour=lv.colour, optimize=lv.profile.optimize)
            assert c.encode(x).chunks[0] == ref


def test_codec_picks_the_set_that_fits_bandwidth_x_deadline(fitted):
    store, arts, _ = fitted
    ids = [a.id for a in arts]
    img = make_image(3, "test", 0, 32)[0]
    edge = make_codec("autojpeg", {"artifacts": ids, "headers": "abbreviated"})
    small_bytes = edge.levels[0].expected_bytes
    big_bytes = edge.levels[1].expected_bytes
    assert small_bytes < big_bytes
    # budget = kbps * 1000 / 8 * deadline_s * margin
    roomy = make_codec("autojpeg", {"artifacts": ids, "headers": "abbreviated", "bandwidth_kbps": 250.0,
                                    "deadline_ms": 100.0})
    tight = make_codec("autojpeg", {"artifacts": ids, "headers": "abbreviated",
                                    "bandwidth_kbps": (small_bytes + 2) * 8 / 1000 / 0.1 / 0.8 + 0.01,
                                    "deadline_ms": 100.0})
    e1, e2 = roomy.encode(img), tight.encode(img)
    assert e1.meta["level"] == 1 and e2.meta["level"] == 0
    assert e1.chunks[0][0] == 1 and e2.chunks[0][0] == 0          # the in-band set index
    for e in (e1, e2):
        out = edge.decode(e.chunks, 1)                              # a separate (edge) instance decodes both
        assert out is not None and np.mean(np.abs(out.astype(int) - img)) < 40
    # unknown bandwidth: learnt from replies (t_tx_start/end), deadline from the client hook
    auto = make_codec("autojpeg", {"artifacts": ids})
    assert auto.pick() == 1                                         # no estimate yet: best quality
    auto.set_stream(deadline_ms=100.0, period_ms=100.0)
    slow_ns = int(e1.total_bytes * 8 / 2000 * 1e9)                # ~2 kbit/s
    for _ in range(10):
        auto.feedback(img, e1, {"t_tx_start_ns": 1, "t_tx_end_ns": 1 + slow_ns, "tx_bytes_delivered": e1.total_bytes})
    assert auto.budget_bytes() < small_bytes and auto.pick() == 0


def test_auto_fit_when_no_artifact(tmp_path, monkeypatch, synthetic_model):
    import time
    monkeypatch.setenv("HILBED_ARTIFACTS", str(tmp_path))
    t0 = time.monotonic()
    c = make_codec("autojpeg", {"ratios": [0.06, 0.12], "fit_steps": 20})
    assert time.monotonic() - t0 < 60
    assert len(c.levels) == 2 and all(lv.artifact.id.startswith("autojpeg-") for lv in c.levels)
    img = make_image(1, "test", 0, 32)[0]
    e = c.encode(img)
    assert make_codec("autojpeg", {"ratios": [0.06, 0.12], "fit_steps": 20}).decode(e.chunks, 1) is not None
