"""AdaCompress's learnt descriptor: the numpy CNN forward, its fit, and artifacts with and without it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hilbed.nodes.codecs import make_codec
from hilbed.nodes.codecs.adacompress import extract_features
from hilbed.nodes.codecs.artifacts import ArtifactStore
from hilbed.nodes.codecs.fitting.adacompress import (
    OfflineEnv,
    descriptor_targets,
    fit_adacompress,
    pretrain,
    train_descriptor,
)
from hilbed.nodes.codecs.nets.adacompress import N_FEATURES, QUALITIES, DescriptorCNN, Hyper, torch_descriptor
from hilbed.nodes.workload.synthetic import make_image

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("shape", [(5, 32, 32), (2, 31, 45), (1, 224, 224)])
def test_numpy_forward_matches_torch(shape):
    torch = pytest.importorskip("torch")
    net = torch_descriptor(seed=3)
    with torch.no_grad():                       # non-trivial biases, so every term of the forward is exercised
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cnn = DescriptorCNN.from_torch(net)
    x = np.random.default_rng(0).integers(0, 256, (*shape, 3)).astype(np.uint8)
    with torch.no_grad():
        ref = net(torch.from_numpy(DescriptorCNN.prep(x))).numpy()
    out = cnn.forward(x)
    assert out.shape == (shape[0], len(QUALITIES)) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    again = DescriptorCNN.from_json(json.loads(json.dumps(cnn.to_json())))
    np.testing.assert_allclose(again.forward(x), out, atol=1e-6, rtol=0)
    np.testing.assert_allclose(cnn.forward(x[0]), out[:1], atol=1e-6, rtol=0)   # one (H, W, 3) image


def test_descriptor_learns_what_the_model_tolerates():
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (384, 16, 16, 3)).astype(np.uint8)
    bright = imgs.mean(axis=(1, 2, 3)) > 127.5          # a made-up model: bright images survive every quality
    y = np.where(bright[:, None], 1.0, (np.arange(10) >= 7)[None].astype(float)).astype(np.float32)
    imgs[bright] = np.clip(imgs[bright].astype(int) + 60, 0, 255).astype(np.uint8)
    cnn, st = train_descriptor(imgs, y, epochs=25, val_frac=0.25)
    assert st["params"] < 10000 and st["val_bce"] < 0.5 * st["val_bce_prior"]


class _FakeModel:
    """Class 1 for bright images, 0 for dark ones (no torch)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        b = x.reshape(len(x), -1).mean(1) / 255.0
        p = np.zeros((len(x), 10))
        p[:, 1], p[:, 0] = b, 1 - b
        p[:, 2:] = 1e-3
        return p


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A version-1 artifact (block-DCT agent, as fitted before the CNN) and a CNN one, in one store."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("ada-desc")
    store = ArtifactStore(root)
    imgs = np.stack([make_image(i, "train", 0, 32)[0] for i in range(96)])
    labels = np.arange(96) % 10
    cnn_art = fit_adacompress(imgs, labels, _FakeModel(), {}, store, Hyper(), 200, "top1", "upload", "full",
                              descriptor="cnn", cnn_epochs=2)
    env = OfflineEnv(np.stack([extract_features(im) for im in imgs[:32]]), np.ones((32, 10)), np.ones(32),
                     np.zeros((32, 10, 5), np.int64), np.zeros((32, 5), np.int64), labels[:32])
    agent, stats = pretrain(env, Hyper(), steps=100)
    old = {"version": 1, "agent": agent.to_json(), "hyper": {}, "metric": "top1", "reference": "upload",
           "headers": "full"}                           # exactly the pre-CNN layout: no "descriptor" key
    old_art = store.put("adacompress", {"agent.json": json.dumps(old).encode()}, {"pretrain": stats})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HILBED_ARTIFACTS", str(root))
        yield {"old": old_art, "cnn": cnn_art, "root": root}


def test_old_artifacts_load_with_the_block_dct_descriptor(stores):
    c = make_codec("adacompress", {"artifact": stores["old"].id, "p0": 1.0})
    img = make_image(3, "test", 0, 32)[0]
    assert c.cnn is None and c.features(img).shape == (N_FEATURES,)
    assert np.array_equal(c.features(img), extract_features(img))
    e = c.encode(img)
    c.feedback(img, e, {"top5": [1, 2, 3, 4, 5], "extra_top5": [[1, 2, 3, 4, 5]]}, 1)
    assert e.meta["quality"] in QUALITIES and c.summary()["descriptor"] == "dct"


def test_cnn_artifact_carries_its_descriptor(stores):
    art = stores["cnn"]
    d = json.loads(art.read_bytes("agent.json"))
    assert d["version"] == 2 and d["descriptor"]["kind"] == "cnn"
    assert art.meta["descriptor"] == "cnn" and art.meta["descriptor_fit"]["params"] < 10000
    c = make_codec("adacompress", {"artifact": art.id, "p0": 1.0})
    img = make_image(3, "test", 0, 32)[0]
    f = c.features(img)
    assert c.cnn is not None and f.shape == (N_FEATURES + len(QUALITIES),) and f.dtype == np.float32
    np.testing.assert_array_equal(f[N_FEATURES:], c.cnn.forward(img)[0])
    for _ in range(3):
        e = c.encode(img)
        c.feedback(img, e, {"top5": [1, 2, 3, 4, 5], "extra_top5": [[1, 2, 3, 4, 5]]}, 1)
    assert c.summary()["descriptor"] == "cnn" and len(c.learner.memory) == 3
    assert c.learner.memory[0][0].shape == (N_FEATURES + len(QUALITIES),)


def test_descriptor_targets_follow_the_reward_metric():
    env = OfflineEnv(np.zeros((2, 3)), np.ones((2, 10)), np.ones(2), np.zeros((2, 10, 5), np.int64),
                     np.array([[0, 1, 2, 3, 4], [5, 1, 2, 3, 4]]), np.array([0, 0]))
    env.top5[1, 7:, 0] = 5
    t = descriptor_targets(env)
    assert t.shape == (2, 10) and t[0].all() and t[1, 7:].all() and not t[1, :7].any()
    assert descriptor_targets(env, reference="label")[1].sum() == 7    # against the label: the q5..q65 replies agree


def test_cnn_client_side_needs_no_torch(stores):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any torch import fails
        import os
        os.environ["HILBED_ARTIFACTS"] = {str(stores["root"])!r}
        from hilbed.nodes.codecs import make_codec
        from hilbed.nodes.workload.synthetic import make_image
        img = make_image(0, "test", 0, 32)[0]
        c = make_codec("adacompress", {{"artifact": {stores["cnn"].id!r}, "p0": 1.0}})
        assert c.cnn is not None
        e = c.encode(img)
        c.feedback(img, e, {{"top5": [1, 2, 3, 4, 5], "extra_top5": [[1, 2, 3, 4, 5]]}}, 1)
        print("ok", e.meta["quality"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
