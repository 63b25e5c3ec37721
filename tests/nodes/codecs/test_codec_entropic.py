"""Entropic student, factorized prior and CR+BQ: the KD loss (torch only), and
with compressai installed (the `neural` extra): entropy-bottleneck round trip
(bytes decode to exactly the latents the decoder was trained on), the
feature-decoding path the edge uses, and one-chunk (non-progressive) misses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from hilbed.nodes.codecs import CodecParamsError, make_codec
from hilbed.nodes.codecs.artifacts import ArtifactStore

# ------------------------------------------------------------------ KD ---

def test_kd_loss_matches_its_definition():
    from hilbed.nodes.codecs.fitting.neural import kd_loss
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    for temp in (1.0, 4.0):
        p_t = F.softmax(t / temp, 1)
        kl = (p_t * (p_t.log() - F.log_softmax(s / temp, 1))).sum(1).mean() * temp ** 2
        assert torch.allclose(kd_loss(s, t, temperature=temp), kl, atol=1e-5)
        assert torch.allclose(kd_loss(s, t, y, alpha=0.5, temperature=temp),
                              0.5 * F.cross_entropy(s, y) + 0.5 * kl, atol=1e-5)
    assert torch.allclose(kd_loss(s, t, y, alpha=1.0), F.cross_entropy(s, y))
    assert kd_loss(t, t).abs() < 1e-6  # matching the teacher costs nothing
    # the gradient moves the student towards the teacher, and never into the teacher
    s2 = s.clone().requires_grad_(True)
    t2 = t.clone().requires_grad_(True)
    kd_loss(s2, t2).backward()
    assert t2.grad is None or torch.all(t2.grad == 0)
    with torch.no_grad():
        stepped = s2 - 1.0 * s2.grad
    assert kd_loss(stepped, t) < kd_loss(s, t)


def test_teacher_split_points_reproduce_the_forward_pass():
    from hilbed.nodes.codecs.fitting.neural import Teacher
    from hilbed.nodes.codecs.nets.common import ResNetTail
    from hilbed.nodes.workload.models import CifarResNet
    torch.manual_seed(0)
    net = CifarResNet(1).eval()
    teacher = Teacher(net)
    x = torch.rand(3, 3, 32, 32)
    f1, _, f3, logits = teacher.features(x)
    assert f1.shape == (3, 16, 32, 32) and f3.shape == (3, 64, 8, 8)
    assert torch.allclose(logits, teacher(x), atol=1e-5)
    assert torch.allclose(ResNetTail(net).eval()(teacher.stage1(x)), logits, atol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())


# -------------------------------------------------- with compressai ---

@pytest.fixture(scope="module")
def compressai():
    return pytest.importorskip("compressai")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from hilbed.nodes.workload.models import CifarResNet
    torch.manual_seed(0)
    ckpt = tmp_path_factory.mktemp("teacher") / "resnet8.th"
    torch.save({"state_dict": CifarResNet(1).state_dict()}, ckpt)
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    mp = pytest.MonkeyPatch()
    mp.setenv("HILBED_ARTIFACTS", str(store.root))
    yield {"teacher": f"cifar-resnet:{ckpt}", "store": store}
    mp.undo()


@pytest.fixture(scope="module")
def data():
    from hilbed.nodes.codecs.fitting.neural import load_images
    return load_images("synthetic:128", 32)


@pytest.fixture(scope="module")
def fitted(compressai, env, data):
    from hilbed.nodes.codecs.fitting import entropic as E
    return {fam: E.FIT_FUNCTIONS[fam](data, env["teacher"], fit=E.PRESETS["tiny"], store=env["store"], limit=128)
            for fam in E.FAMILIES}


def test_params_name_the_right_family():
    with pytest.raises(CodecParamsError):
        make_codec("entropic", {"artifact": "pnc-0123456789ab"})
    with pytest.raises(CodecParamsError):
        make_codec("crbq", {"artifact": "entropic-0123456789ab"})
    with pytest.raises(CodecParamsError, match="artifact"):
        make_codec("factorized", {})  # no auto-fit: a scenario must name the artifact
    from hilbed.nodes.codecs import validate_codec_params
    assert validate_codec_params("factorized", {"artifact": "factorized-0123456789ab"})["artifact"]


def test_first_use_needs_a_resnet_teacher_and_factorized_still_needs_an_artifact():
    from hilbed.nodes.codecs import validate_codec_params
    assert validate_codec_params("entropic", {"fit_beta": 0.02})["fit_model"].startswith("cifar-resnet:")
    assert validate_codec_params("crbq", {"fit_bottleneck": 4})["artifact"] == ""
    for family in ("entropic", "crbq"):
        with pytest.raises(CodecParamsError, match="fit_model"):
            validate_codec_params(family, {"fit_model": "synthetic-cnn"})
    with pytest.raises(CodecParamsError, match="fit_beta"):
        validate_codec_params("entropic", {"fit_beta": -1.0})


def test_entropic_fits_on_first_use_once_and_a_plain_fit_names_the_same_artifact(compressai, env, monkeypatch):
    """A scenario's fit_* params fit in prepare; a second codec (the other node) and `hilbed fit` reuse it."""
    import argparse

    from hilbed.nodes.codecs.fitting import entropic as E
    calls = []
    real = E.FIT_FUNCTIONS["entropic"]

    def counting(data, teacher, **kw):
        calls.append((len(data), kw.get("beta")))
        return real(data, teacher, **kw)
    monkeypatch.setitem(E.FIT_FUNCTIONS, "entropic", counting)
    params = {"fit_dataset": "synthetic", "fit_model": env["teacher"], "fit_preset": "tiny", "fit_beta": 0.05}
    make_codec("entropic", params)  # what the edge's prepare step does
    client = make_codec("entropic", params)
    assert calls == [(256, 0.05)]  # the tiny preset's limit
    aid = client.artifact_id
    assert aid.startswith("entropic-") and env["store"].get(aid).meta
    assert client.decode_features(client.encode(np.zeros((32, 32, 3), np.uint8)).chunks, 1) is not None
    args = argparse.Namespace(fit_family="entropic", dataset="synthetic", model=env["teacher"], preset="tiny",
                              limit=None, seed=0, size=32, beta=0.05, progress=None,
                              **{k: None for k in ("epochs1", "epochs2", "lr1", "lr2", "batch", "lmbda", "latent",
                                                    "hidden", "stride", "layers", "bottleneck", "device", "threads")})
    assert E.fit_main(args, env["store"]).id == aid and len(calls) == 1
    make_codec("entropic", {**params, "fit_beta": 0.1})  # another knob value is another model
    assert calls[-1] == (256, 0.1)


@pytest.mark.parametrize("family", ["entropic", "factorized"])
def test_entropy_bottleneck_bytes_decode_to_the_same_latents(fitted, data, family):
    from hilbed.nodes.codecs.entropic import load_split
    m = load_split(fitted[family].id)
    y = m.latent(data.x[:8])
    payloads = [p for p, _ in m.encode(data.x[:8])]
    assert all(isinstance(p, bytes) and len(p) > 0 for p in payloads)
    decoded = m.latent_from_bytes(payloads)
    # exactly the rounded latents the decoder saw in stage 2 / evaluation
    assert torch.equal(decoded, m.quantised_latent(y))
    medians = m.net["eb"].quantiles[:, 0, 1].detach().view(1, -1, 1, 1)
    assert torch.allclose(decoded - medians, torch.round(decoded - medians), atol=1e-5)  # integers + medians
    # the CDF tables travel in the artifact: a reloaded model decodes the same bytes
    from hilbed.nodes.codecs.entropic import SplitModel
    again = SplitModel(fitted[family])
    assert torch.equal(again.latent_from_bytes(payloads), decoded)


def test_entropic_codec_decodes_features_for_the_edge(fitted, data):
    c = make_codec("entropic", {"artifact": fitted["entropic"].id})
    enc = c.encode(data.x[0])
    assert len(enc.chunks) == 1 and enc.header_bytes == 0 and not c.progressive
    f = c.decode_features(enc.chunks, 1)
    assert f.shape == (1, 16, 32, 32)
    p = c.predict_features(f)
    assert p.shape == (1, 10) and math.isclose(float(p.sum()), 1.0, rel_tol=1e-5)
    assert c.decode_features([], 1) is None  # nothing arrived: a miss
    with pytest.raises(NotImplementedError):
        c.decode(enc.chunks, 1)


def test_factorized_codec_decodes_pixels(fitted, data):
    c = make_codec("factorized", {"artifact": fitted["factorized"].id})
    enc = c.encode(data.x[1])
    pix = c.decode(enc.chunks, 1)
    assert pix.shape == (32, 32, 3) and pix.dtype == np.uint8
    assert c.decode(enc.chunks, 2) is None  # a partial payload of a one-chunk codec is a miss


def test_crbq_is_an_8bit_bottleneck(fitted, data):
    from hilbed.nodes.codecs.entropic import load_split
    art = fitted["crbq"]
    c = make_codec("crbq", {"artifact": art.id})
    enc = c.encode(data.x[2])
    width = art.meta["arch"]["bottleneck"]
    assert enc.total_bytes == 4 + width * 8 * 8 and enc.header_bytes == 4
    m = load_split(art.id)
    y = m.latent(data.x[2:3])
    back = m.latent_from_bytes(enc.chunks)
    step = float((y.max() - y.min()) / 255)
    assert (back - y).abs().max() <= 0.5 * step + 1e-2 * (float(y.abs().max()) + 1)  # float16 range + rounding
    assert c.predict_features(c.decode_features(enc.chunks, 1)).shape == (1, 10)


def test_stage2_freezes_the_encoder(fitted, env, data):
    """The artifact's encoder is stage 1's: fine-tuning touched only decoder and tail."""
    from hilbed.nodes.codecs.entropic import load_split
    from hilbed.nodes.codecs.fitting import entropic as E
    art = E.fit_entropic(data, env["teacher"], fit=E.PRESETS["tiny"], store=env["store"], limit=128, epochs2=0.0)
    a = load_split(art.id)
    b = load_split(fitted["entropic"].id)
    for (n1, p1), (_, p2) in zip(a.net["encoder"].state_dict().items(), b.net["encoder"].state_dict().items()):
        assert torch.equal(p1, p2), n1
    assert not all(torch.equal(p1, p2) for p1, p2 in zip(a.net["tail"].state_dict().values(),
                                                          b.net["tail"].state_dict().values()))


@pytest.mark.slow
def test_entropic_student_end_to_end_on_the_embedded_testbed(fitted, env, repo, tmp_path, monkeypatch):
    """The edge classifies with the student's own later stages (decode_features + predict_features)."""
    import inspect
    import json

    from hilbed.nodes.edge import EdgeAgent
    if "decode_features" not in inspect.getsource(EdgeAgent._process):
        pytest.skip("nodes/edge.py predates split-computing codecs (decode_features)")
    from hilbed.orchestrator.run.runner import Runner
    monkeypatch.setenv("HILBED_ARTIFACTS", str(env["store"].root))
    aid = fitted["entropic"].id
    scenario = tmp_path / "entropic.yaml"
    scenario.write_text(f"""
name: entropic-e2e
workload: {{dataset: synthetic, model: "{env['teacher']}", images_per_trial: 3, image_size: 32}}
stream: {{period_ms: 2000}}
codecs:
  - {{codec: entropic, params: {{artifact: {aid}}}, label: student}}
conditions:
  - {{name: fast, link: {{kind: trace, rate_kbps: 2000, delay_ms: 2}}, jamming: none}}
""")
    out = Runner(repo / "testbed.yaml", scenario, results_dir=tmp_path / "runs", quiet=True, make_report=False).execute()
    assert out.state == "complete" and out.records == 3
    recs = [json.loads(line) for line in (out.run_dir / "trials.jsonl").read_text().splitlines()]
    c = make_codec("entropic", {"artifact": aid})
    from hilbed.nodes.workload import open_dataset
    ds = open_dataset("synthetic", 32, 0)
    for r in recs:
        assert r["error"] is None and r["decoded"] and r["deadline_met"]
        enc = c.encode(ds[r["image_index"]][0])
        p = c.predict_features(c.decode_features(enc.chunks, 1))[0]
        assert r["top5"][0] == int(np.argmax(p)) and r["bytes_total"] == enc.total_bytes
