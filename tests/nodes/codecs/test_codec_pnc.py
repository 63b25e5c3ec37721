"""PNC: tail-drop, the per-channel Huffman coder, block packing, partial decode,
the numpy encoder against torch, and a progressive run with a tight deadline.

Runs in the main venv (torch, no compressai). The teacher is a randomly
initialised CIFAR ResNet-8 and the data synthetic, so nothing here needs
../shared/data; the fitted model is tiny, the behaviour is what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hilbed.nodes.codecs import CodecParamsError, make_codec
from hilbed.nodes.codecs.artifacts import ArtifactStore
from hilbed.nodes.codecs.fitting.pnc import huffman_lengths, tail_drop_mask
from hilbed.nodes.codecs.nets.pnc import build_modules
from hilbed.nodes.codecs.pnc import ChannelCoder, PncArch, PncCodec, canonical_codes, load_pnc


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    from hilbed.nodes.workload.models import CifarResNet
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.th"
    torch.save({"state_dict": CifarResNet(1).state_dict(), "best_prec1": 0.0}, path)
    return f"cifar-resnet:{path}"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def fitted(store, teacher_ckpt, monkeypatch_module):
    from hilbed.nodes.codecs.fitting.neural import load_images
    from hilbed.nodes.codecs.fitting.pnc import PRESETS, fit_pnc
    monkeypatch_module.setenv("HILBED_ARTIFACTS", str(store.root))
    data = load_images("synthetic:192", 32)
    art = fit_pnc(data, teacher_ckpt, fit=PRESETS["tiny"], store=store, limit=192)
    return art


@pytest.fixture(scope="module")
def fitted_clf(store, teacher_ckpt, fitted):
    """Stage 3 on top of ``fitted`` (same encoder): the artifact carries a fine-tuned classifier."""
    from hilbed.nodes.codecs.fitting.neural import load_images
    from hilbed.nodes.codecs.fitting.pnc import PRESETS, fit_pnc
    data = load_images("synthetic:192", 32)
    return fit_pnc(data, teacher_ckpt, fit=PRESETS["tiny"], store=store, init=fitted.id, epochs1=0, epochs2=0,
                   classifier_epochs=1, lr3=3e-3)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def images():
    from hilbed.nodes.workload.synthetic import make_image
    return np.stack([make_image(i, "test", 0, 32)[0] for i in range(12)])


# ----------------------------------------------------------- tail-drop ---

def test_tail_drop_keeps_a_prefix_of_channels_uniformly():
    gen = torch.Generator().manual_seed(0)
    mask, keep = tail_drop_mask(6000, 8, gen)
    assert mask.shape == (6000, 8)
    # each row is 1...1 0...0 with keep ones; channel 0 is never dropped
    assert torch.equal(mask.sum(1), keep.float())
    assert torch.all(mask[:, 0] == 1)
    assert torch.all(mask[:, 1:] <= mask[:, :-1])
    counts = torch.bincount(keep, minlength=9)[1:].float()
    assert counts.min() > 0.8 * 6000 / 8 and counts.max() < 1.2 * 6000 / 8  # K uniform on 1..M
    # channel c survives with probability (M - c) / M: earlier channels train more often
    surv = mask.mean(0)
    assert torch.all(surv[:-1] > surv[1:])


def test_decoder_shapes_for_cifar_and_imagenet_sizes():
    for arch in (PncArch(size=32, stride=4), PncArch(size=224, stride=8, enc_width=16, channels=10, dec_width=32)):
        enc, dec = build_modules(arch)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in enc) == 2
        assert sum(isinstance(m, torch.nn.Conv2d) for m in dec) == 5
        z = enc(torch.rand(1, 3, arch.size, arch.size))
        assert z.shape == (1, arch.channels, arch.latent_hw, arch.latent_hw)
        assert dec(torch.sigmoid(z)).shape == (1, 3, arch.size, arch.size)


# -------------------------------------------------------- entropy coder ---

def test_huffman_lengths_are_a_complete_prefix_code_within_16_bits():
    rng = np.random.default_rng(0)
    for freq in (rng.integers(0, 1000, 64), np.r_[10 ** 9, np.ones(63)], np.zeros(64), 2.0 ** -np.arange(64) * 1e30):
        ln = huffman_lengths(freq)
        assert ln.max() <= 16 and ln.min() >= 1
        assert abs(np.sum(2.0 ** -ln.astype(float)) - 1.0) < 1e-9  # Kraft equality: every 16-bit window decodes
        codes = canonical_codes(ln)
        words = {format(int(c), f"0{int(l)}b") for c, l in zip(codes, ln)}
        assert len(words) == 64
        assert not any(a != b and b.startswith(a) for a in words for b in words)


def _coder(seed=0, m=6, k=64):
    rng = np.random.default_rng(seed)
    hist = rng.integers(1, 500, (m, k)) * (rng.random((m, k)) < 0.7)
    return ChannelCoder(np.stack([huffman_lengths(h) for h in hist])), rng


def test_channel_coder_round_trip_and_truncation():
    coder, rng = _coder()
    sym = rng.integers(0, 64, (6, 49)).astype(np.uint8)
    data, cum_bits = coder.encode(sym)
    assert len(data) == (cum_bits[-1] + 7) // 8
    assert np.array_equal(coder.decode(data, 49, 6), sym)
    # any prefix: exactly the channels whose last bit arrived, and they are right
    for nbytes in range(len(data) + 1):
        got = coder.decode(data[:nbytes], 49, 6)
        expect = int((cum_bits <= 8 * nbytes).sum())
        assert got.shape == (expect, 49)
        assert np.array_equal(got, sym[:expect])
    # channel_bits agrees with the encoder's bit counts
    assert np.array_equal(np.cumsum(coder.channel_bits(sym[None])[0]), cum_bits)


# ------------------------------------------------------------ the codec ---

def test_params_are_checked():
    with pytest.raises(CodecParamsError):
        make_codec("pnc", {"artifact": "grace-0123456789ab"})
    with pytest.raises(CodecParamsError):
        make_codec("pnc", {"block_bytes": 0})
    with pytest.raises(CodecParamsError):
        make_codec("pnc", {"fit_preset": "huge"})
    assert PncCodec.progressive and PncCodec.validate({})["block_bytes"] == 64


def test_auto_fit_once_per_settings(store, teacher_ckpt, monkeypatch):
    """No artifact param: the codec fits on first use, and every later instance reuses that fit."""
    monkeypatch.setenv("HILBED_ARTIFACTS", str(store.root))
    params = {"fit_dataset": "synthetic", "fit_model": teacher_ckpt, "fit_preset": "tiny"}
    a = make_codec("pnc", params)
    enc = a.encode(np.zeros((32, 32, 3), np.uint8))
    b = make_codec("pnc", params)
    assert b.artifact_id == a.artifact_id == enc.meta["artifact"]
    assert b.decode(enc.chunks, len(enc.chunks)).shape == (32, 32, 3)


def test_numpy_encoder_matches_torch(fitted, images):
    from hilbed.nodes.codecs.nets.common import load_state, to_unit
    m = load_pnc(fitted.id)
    enc, _ = build_modules(m.arch)
    load_state(enc, m.weights, "encoder.")
    with torch.no_grad():
        ref = torch.round(torch.sigmoid(enc(to_unit(images))) * m.arch.levels).to(torch.int64).numpy()
    ours = np.stack([m.encoder.symbols(im) for im in images]).reshape(ref.shape)
    assert (ours == ref).mean() > 0.999  # float32 rounding may flip a value sitting on a .5 boundary
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_blocks_and_partial_decode(fitted, images, monkeypatch):
    monkeypatch.setenv("HILBED_ARTIFACTS", str(Path(fitted.path).parent))
    c = PncCodec(artifact=fitted.id, block_bytes=64)
    m = c.model
    for im in images[:4]:
        enc = c.encode(im)
        sizes = [len(ch) for ch in enc.chunks]
        assert all(s == 64 for s in sizes[:-1]) and 0 < sizes[-1] <= 64
        assert enc.header_bytes == 0 and enc.meta["channels"] == m.arch.channels
        sym = m.encoder.symbols(im)
        end_bytes = (np.asarray(enc.meta["channel_end_bits"]) + 7) // 8
        assert end_bytes[-1] == enc.total_bytes
        prev = -1
        for k in range(1, len(enc.chunks) + 1):
            got = c.decode_symbols(enc.chunks[:k])
            n_ch = int((end_bytes <= 64 * k).sum())
            assert got.shape[0] == n_ch >= prev  # more blocks never lose channels
            assert np.array_equal(got, sym[:n_ch])
            prev = n_ch
            pix = c.decode(enc.chunks[:k], len(enc.chunks))
            if n_ch == 0:
                assert pix is None
                continue
            # the missing channels are zeroed, exactly as in training
            full = np.zeros((1, m.arch.channels, sym.shape[1]), np.uint8)
            full[0, :n_ch] = sym[:n_ch]
            assert np.array_equal(pix, m.pixels(full, np.array([n_ch]))[0])
            assert pix.shape == (32, 32, 3) and pix.dtype == np.uint8
        assert prev == m.arch.channels


def test_small_blocks_can_miss_and_max_channels_caps_the_rate(fitted, images, monkeypatch):
    monkeypatch.setenv("HILBED_ARTIFACTS", str(Path(fitted.path).parent))
    c8 = PncCodec(artifact=fitted.id, block_bytes=8)
    enc = c8.encode(images[0])
    assert c8.decode(enc.chunks[:1], len(enc.chunks)) is None  # 8 bytes hold no complete channel
    capped = PncCodec(artifact=fitted.id, max_channels=4).encode(images[0])
    assert capped.meta["channels"] == 4 and capped.total_bytes < PncCodec(artifact=fitted.id).encode(images[0]).total_bytes


def test_artifact_records_the_fit(fitted):
    meta = fitted.meta
    assert meta["family"] == "pnc" and meta["arch"]["channels"] == 16 and meta["arch"]["bits"] == 6
    assert meta["fit"]["n_train"] == 192 and meta["fit"]["teacher"].startswith("cifar-resnet:")
    assert len(meta["results"]["train_bytes_per_channel"]) == 16
    assert {"weights.npz", "huffman.npz", "meta.json"} <= {p.name for p in Path(fitted.path).iterdir()}
    # the client side needs numpy only: the encoder weights load without torch
    with np.load(Path(fitted.path) / "weights.npz", allow_pickle=False) as z:
        assert {"encoder.conv1.weight", "encoder.conv2.bias"} <= set(z.files)


# ------------------------------------------- stage 3: the edge classifier ---

def test_plain_fit_carries_no_classifier_and_decodes_to_pixels(fitted, images, monkeypatch):
    """An artifact without the classifier stage (and every older one) behaves as before."""
    monkeypatch.setenv("HILBED_ARTIFACTS", str(Path(fitted.path).parent))
    assert "classifier" not in fitted.meta and not (Path(fitted.path) / "classifier.npz").exists()
    c = PncCodec(artifact=fitted.id)
    assert not c.split_computing and not c.model.has_classifier and c.model.classifier() is None
    enc = c.encode(images[0])
    assert c.decode(enc.chunks, len(enc.chunks)).shape == (32, 32, 3)
    with pytest.raises(NotImplementedError):
        c.decode_features(enc.chunks, len(enc.chunks))


def test_classifier_stage_round_trips_through_the_artifact(fitted, fitted_clf, teacher_ckpt):
    from hilbed.nodes.codecs.nets.common import npz_to_arrays
    from hilbed.nodes.workload.models import load_model
    meta = fitted_clf.meta
    assert meta["classifier"]["arch"] == "cifar-resnet" and meta["classifier"]["blocks"] == 1
    assert meta["classifier"]["classes"] == 10 and len(meta["classifier"]["mean"]) == 3
    assert meta["fit"]["init"] == fitted.id and meta["results"]["stage3"]["steps"] > 0
    assert (Path(fitted_clf.path) / "classifier.npz").exists()
    # the encoder, its Huffman tables and the decoder are those of the artifact it started from
    a, b = load_pnc(fitted.id), load_pnc(fitted_clf.id)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert np.array_equal(a.coder.lengths, b.coder.lengths)
    # the loaded classifier holds exactly the stored weights, and they are fine-tuned (not the teacher's)
    clf = b.classifier()
    stored = npz_to_arrays(fitted_clf.read_bytes("classifier.npz"))
    for k, v in clf.state_dict().items():
        assert np.array_equal(v.cpu().numpy(), stored[k]), k
    teacher = load_model(teacher_ckpt, "cpu", 32).module.state_dict()
    assert not torch.equal(clf.net.conv1.weight.cpu(), teacher["conv1.weight"])


def test_end_to_end_stage_trains_the_encoder_and_continues_the_classifier(fitted_clf, store, teacher_ckpt):
    """``classifier_encoder``: stage 3 also moves the encoder (and so its Huffman statistics); an init artifact
    that carries a classifier is continued from, not restarted from the teacher."""
    from hilbed.nodes.codecs.fitting.neural import load_images
    from hilbed.nodes.codecs.fitting.pnc import PRESETS, fit_pnc
    data = load_images("synthetic:192", 32)
    kw = dict(fit=PRESETS["tiny"], store=store, init=fitted_clf.id, epochs1=0, epochs2=0, lr3=3e-3)
    frozen = fit_pnc(data, teacher_ckpt, classifier_epochs=0.01, seed=5, **kw)   # one step, encoder frozen
    e2e = fit_pnc(data, teacher_ckpt, classifier_epochs=1, classifier_joint=True, classifier_encoder=True, **kw)
    a, f, b = load_pnc(fitted_clf.id), load_pnc(frozen.id), load_pnc(e2e.id)
    enc = [k for k in a.weights if k.startswith("encoder.")]
    assert enc and all(np.array_equal(a.weights[k], f.weights[k]) for k in enc)
    assert not all(np.array_equal(a.weights[k], b.weights[k]) for k in enc)
    assert e2e.meta["fit"]["classifier_encoder"] is True and e2e.meta["fit"]["init"] == fitted_clf.id
    # a few small steps stay near where they started: the init artifact's classifier, not the teacher
    teacher = load_model_state(teacher_ckpt)["conv1.weight"]
    start, short = a.classifier().net.conv1.weight.detach(), f.classifier().net.conv1.weight.detach()
    assert (short - start).abs().max() < (short - teacher).abs().max()


def load_model_state(spec: str) -> dict:
    from hilbed.nodes.workload.models import load_model
    return load_model(spec, "cpu", 32).module.state_dict()


def test_a_preset_shapes_the_latent_and_options_still_win(store, teacher_ckpt):
    from dataclasses import replace

    from hilbed.nodes.codecs.fitting.neural import load_images
    from hilbed.nodes.codecs.fitting.pnc import PRESETS, fit_pnc
    data = load_images("synthetic:64", 32)
    fit = replace(PRESETS["tiny"], epochs1=0.1, epochs2=0, arch=(("channels", 8), ("bits", 4)))
    a = fit_pnc(data, teacher_ckpt, fit=fit, store=store)
    b = fit_pnc(data, teacher_ckpt, fit=fit, store=store, channels=12)
    assert (a.meta["arch"]["channels"], a.meta["arch"]["bits"]) == (8, 4)
    assert (b.meta["arch"]["channels"], b.meta["arch"]["bits"]) == (12, 4)
    assert load_pnc(a.id, store).coder.lengths.shape == (8, 16)   # 4 bits: 16 symbols per channel


def test_the_codecs_fit_preset_choices_are_the_fitters_presets():
    """The runtime codec cannot import the fitter, so it spells the presets out; they must not drift apart."""
    from hilbed.nodes.codecs.fitting.pnc import PRESETS
    from hilbed.nodes.codecs.pnc import PncCodec
    assert set(PncCodec.params_spec["fit_preset"].choices) == set(PRESETS)


def test_codec_with_classifier_is_split_computing(fitted_clf, images, monkeypatch):
    """The edge and eval-codecs read ``split_computing`` from the instance and classify with the artifact's copy."""
    monkeypatch.setenv("HILBED_ARTIFACTS", str(Path(fitted_clf.path).parent))
    c = PncCodec(artifact=fitted_clf.id)
    m = c.model
    assert c.split_computing and not PncCodec.split_computing
    for im in images[:3]:
        enc = c.encode(im)
        for k in range(1, len(enc.chunks) + 1):
            f = c.decode_features(enc.chunks[:k], len(enc.chunks))
            sym = c.decode_symbols(enc.chunks[:k])
            if sym.shape[0] == 0:
                assert f is None
                continue
            p = c.predict_features(f)
            assert p.shape == (1, 10) and abs(float(p.sum()) - 1) < 1e-4
            # the artifact's classifier on the float reconstruction of exactly these channels
            full = np.zeros((1, m.arch.channels, sym.shape[1]), np.uint8)
            full[0, :sym.shape[0]] = sym
            with torch.no_grad():
                ref = torch.softmax(m.classifier()(m.reconstruct(full, np.array([sym.shape[0]]))), 1).cpu().numpy()
            assert np.allclose(p, ref, atol=1e-6)
        # pixels are still there for anyone who asks
        assert c.decode(enc.chunks, len(enc.chunks)).shape == (32, 32, 3)
    assert c.decode_features(PncCodec(artifact=fitted_clf.id, block_bytes=8).encode(images[0]).chunks[:1], 99) is None
    # classifier=false: the edge's own model on pixels, as for an artifact without one
    off = PncCodec(artifact=fitted_clf.id, classifier=False)
    assert not off.split_computing


def test_eval_codecs_classifies_with_the_artifacts_classifier(fitted_clf, images, monkeypatch):
    """evaluate.py takes the split path: the edge model passed in is never asked (it would raise)."""
    from hilbed.nodes.codecs.fitting.evaluate import Variant, evaluate_variant
    monkeypatch.setenv("HILBED_ARTIFACTS", str(Path(fitted_clf.path).parent))

    class _Refuses:
        classes = tuple(str(i) for i in range(10))

        def predict(self, batch):
            raise AssertionError("the edge's model was used")

    labels = np.zeros(len(images), np.int64)
    row = evaluate_variant(Variant("pnc", {"artifact": fitted_clf.id}), images, labels, _Refuses(), batch=4)
    c = PncCodec(artifact=fitted_clf.id)
    top1 = np.mean([int(np.argmax(c.predict_features(c.decode_features(e.chunks, len(e.chunks)))[0])) == 0
                    for e in map(c.encode, images)])
    assert row["n"] == len(images) and row["top1"] == pytest.approx(top1)


def test_evaluate_pnc_reports_top1_and_top5_per_block(fitted_clf, images, teacher_ckpt, monkeypatch):
    from hilbed.nodes.codecs.fitting.pnc import evaluate_pnc
    monkeypatch.setenv("HILBED_ARTIFACTS", str(Path(fitted_clf.path).parent))
    y = np.arange(len(images)) % 10
    ev = evaluate_pnc(fitted_clf.id, images, y, teacher_ckpt)
    assert ev["classifier"] == "artifact" and len(ev["top1"]) == len(ev["top5"]) == len(ev["blocks"])
    assert all(t1 <= t5 for t1, t5 in zip(ev["top1"], ev["top5"])) and ev["full_top5"] == ev["top5"][-1]
    ev_pix = evaluate_pnc(fitted_clf.id, images, y, teacher_ckpt, use_classifier=False)
    assert ev_pix["classifier"] == teacher_ckpt and ev_pix["blocks"] == ev["blocks"]


def test_classifier_stage_is_skipped_for_a_non_resnet_teacher(store):
    from hilbed.nodes.codecs.fitting.neural import load_images
    from hilbed.nodes.codecs.fitting.pnc import PRESETS, fit_pnc
    data = load_images("synthetic:64", 32)
    art = fit_pnc(data, "synthetic-cnn", fit=PRESETS["tiny"], store=store, limit=64, epochs1=0.1, epochs2=0,
                  classifier_epochs=0.1)
    assert "classifier" not in art.meta and "skipped" in art.meta["results"]["stage3"]
    # a preset that traded stage 2 for stage 3 spends those epochs on stage 2 instead
    assert art.meta["fit"]["epochs2"] == 0.1 and art.meta["results"]["stage2"]["steps"] > 0


# ------------------------------------------------- progressive end to end ---

def _tight_run(art, teacher_ckpt, repo, tmp_path, monkeypatch, n: int):
    """One PNC trial of ``n`` synthetic images on the embedded testbed over a 16 kbit/s trace link, 120 ms apart."""
    from hilbed.orchestrator.run.runner import Runner
    monkeypatch.setenv("HILBED_ARTIFACTS", str(Path(art.path).parent))
    scenario = tmp_path / "pnc-tight.yaml"
    scenario.write_text(f"""
name: pnc-tight
workload: {{dataset: synthetic, model: "{teacher_ckpt}", images_per_trial: {n}, image_size: 32}}
stream: {{period_ms: 120}}
codecs:
  - {{codec: pnc, params: {{artifact: {art.id}}}, label: pnc}}
conditions:
  - {{name: tight, link: {{kind: trace, rate_kbps: 16, delay_ms: 5, packet_bytes: 64}}, jamming: none}}
""")
    return Runner(repo / "testbed.yaml", scenario, results_dir=tmp_path / "runs", quiet=True, make_report=False).execute()


@pytest.mark.slow
def test_tight_deadline_gives_partial_but_correct_decodes(fitted, teacher_ckpt, repo, tmp_path, monkeypatch):
    """Embedded testbed, 16 kbit/s trace link, 120 ms deadline: some blocks arrive, never all."""
    import pandas as pd

    n = 6
    out = _tight_run(fitted, teacher_ckpt, repo, tmp_path, monkeypatch, n)
    assert out.state == "complete" and out.records == n
    recs = [json.loads(line) for line in (out.run_dir / "trials.jsonl").read_text().splitlines()]
    assert len(recs) == n
    codec = PncCodec(artifact=fitted.id)
    from hilbed.nodes.workload import open_dataset
    from hilbed.nodes.workload.models import load_model
    ds = open_dataset("synthetic", 32, 0)
    model = load_model(teacher_ckpt, "cpu", 32)
    partial = 0
    for r in recs:
        assert r["error"] is None
        assert 0 < r["chunks_delivered"] < r["chunks_total"]  # the deadline cut the stream
        assert not r["deadline_met"]
        assert 64 * r["chunks_delivered"] <= r["bytes_delivered"] < 64 * (r["chunks_delivered"] + 1)
        partial += 1
        # what the edge classified is what this prefix decodes to
        enc = codec.encode(ds[r["image_index"]][0])
        assert r["bytes_total"] == enc.total_bytes and r["chunks_total"] == len(enc.chunks)
        pix = codec.decode(enc.chunks[:r["chunks_delivered"]], len(enc.chunks))
        if pix is None:
            assert not r["decoded"]
            continue
        assert r["decoded"]
        assert r["top5"][0] == int(np.argmax(model.predict(pix[None])[0]))
    assert partial == n
    df = pd.read_parquet(out.run_dir / "results.parquet")
    assert len(df) == n


@pytest.mark.slow
def test_edge_classifies_partial_prefixes_with_the_artifacts_classifier(fitted_clf, teacher_ckpt, repo, tmp_path,
                                                                        monkeypatch):
    """Embedded testbed, tight deadline: the edge takes the split path (decode_features + predict_features)."""
    n = 4
    out = _tight_run(fitted_clf, teacher_ckpt, repo, tmp_path, monkeypatch, n)
    assert out.state == "complete" and out.records == n
    # the client encodes with one torch thread (a spinning pool on a shared host costs tens of ms per image)
    assert json.loads((out.run_dir / "manifest.json").read_text())["client_compute_threads"] == {"client-1": 1}
    recs = [json.loads(line) for line in (out.run_dir / "trials.jsonl").read_text().splitlines()]
    codec = PncCodec(artifact=fitted_clf.id)
    from hilbed.nodes.workload import open_dataset
    ds = open_dataset("synthetic", 32, 0)
    decoded = 0
    for r in recs:
        assert r["error"] is None
        enc = codec.encode(ds[r["image_index"]][0])
        f = codec.decode_features(enc.chunks[:r["chunks_delivered"]], len(enc.chunks))
        assert r["decoded"] == (f is not None)
        assert r["classified_by"] == ("codec" if f is not None else None)  # the record says whose prediction
        if f is not None:
            decoded += 1
            p = codec.predict_features(f)[0]
            assert r["top5"] == [int(i) for i in np.argsort(-p)[:5]]
    assert decoded > 0
