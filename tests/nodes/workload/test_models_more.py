"""Model specs beyond the defaults (TorchScript, ONNX, module:, torchvision), their checks and plug-in registries.

Every model is tiny and built in the test; nothing is downloaded (torchvision
is replaced by a stand-in module, since the real one need not import here).
"""

from __future__ import annotations

import hashlib
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from hilbed.nodes import plugins
from hilbed.nodes.codecs import CODECS, Param, register_codec, validate_codec_params
from hilbed.nodes.codecs.base import Codec, CodecParamsError, Encoded
from hilbed.nodes.workload import model_specs
from hilbed.nodes.workload.models import load_model


class Tiny(nn.Module):
    """Global pooling: accepts any image size."""

    def __init__(self, n: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, n)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


class Fixed32(nn.Module):
    """A flattening head: only 32x32 inputs fit."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture
def registries():
    """Plug-in registries restored after the test, so registrations do not leak."""
    saved = [(d, dict(d)) for d in (CODECS, model_specs.MODEL_PREFIXES, model_specs.MODEL_LOADERS)]
    yield
    for d, s in saved:
        d.clear()
        d.update(s)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images(n=3, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ------------------------------------------------------------ torchscript ---

def test_torchscript_facts_and_predictions(tmp_path):
    torch.manual_seed(0)
    net = Tiny(7).eval()
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    m = load_model(f"torchscript:{path}", "cpu", 32)
    assert m.facts["sha256"] == _sha(path) and m.facts["sha256_of"] == "file"
    assert m.facts["input_size"] == 32 and m.facts["num_classes"] == 7 and len(m.classes) == 7
    from hilbed.nodes.workload.models import to_tensor
    x = _images()
    want = torch.softmax(net(to_tensor(x)), 1).detach().numpy()
    assert np.allclose(m.predict(x), want, atol=1e-5)


def test_wrong_input_size_is_one_clear_line_before_the_run(tmp_path):
    path = tmp_path / "fixed.pt"
    torch.jit.save(torch.jit.script(Fixed32().eval()), str(path))
    assert load_model(f"torchscript:{path}", "cpu", 32).facts["num_classes"] == 10
    with pytest.raises(ValueError) as e:
        load_model(f"torchscript:{path}", "cpu", 64)
    msg = str(e.value)
    assert "\n" not in msg and "1x3x64x64" in msg and "image_size 64" in msg


def test_missing_or_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_model(f"torchscript:{tmp_path / 'nope.pt'}", "cpu", 32)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_model(f"torchscript:{tmp_path / 'junk.pt'}", "cpu", 32)


def test_class_count_differing_from_the_dataset_names_both_numbers(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny(1000).eval()), str(path))
    with pytest.raises(ValueError) as e:
        load_model(f"torchscript:{path}", "cpu", 32, expect_classes=10, dataset="synthetic")
    assert "1000 classes" in str(e.value) and "synthetic has 10" in str(e.value)
    assert load_model(f"torchscript:{path}", "cpu", 32, expect_classes=1000).facts["num_classes"] == 1000


# ------------------------------------------------------------------ onnx ---

def _export_onnx(net, path, size=32):
    pytest.importorskip("onnx")
    torch.onnx.export(net, (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})


def test_onnx_runs_on_cpu_and_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    net = Fixed32().eval()
    path = tmp_path / "fixed.onnx"
    _export_onnx(net, path)
    m = load_model(f"onnx:{path}", "cpu", 32)
    assert m.facts["onnx_providers"] == ["CPUExecutionProvider"] and str(m.device) == "cpu"
    assert m.facts["sha256"] == _sha(path) and m.facts["num_classes"] == 10 and m.facts["input_size"] == 32
    from hilbed.nodes.workload.models import to_tensor
    x = _images(4)
    want = torch.softmax(net(to_tensor(x)), 1).detach().numpy()
    assert np.allclose(m.predict(x), want, atol=1e-4)


def test_onnx_static_input_size_mismatch_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "fixed.onnx"
    _export_onnx(Fixed32().eval(), path)
    with pytest.raises(ValueError) as e:
        load_model(f"onnx:{path}", "cpu", 48)
    assert "[N, 3, 48, 48]" in str(e.value) and "32" in str(e.value)


# ---------------------------------------------------------------- module: ---

def test_module_callable_with_preprocessing(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch, torch.nn as nn\n"
        "class T(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); torch.manual_seed(3); self.fc = nn.Linear(3, 3)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.mean(dim=(2, 3)))\n"
        "def build():\n"
        "    return T(), {'classes': ('a', 'b', 'c'), 'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)}\n"
        "def liar():\n"
        "    return T(), {'classes': ('a', 'b')}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert model_specs.check_model_spec("module:mymodels:build") == "module:mymodels:build"
    a = load_model("module:mymodels:build", "cpu", 24)
    b = load_model("module:mymodels:build", "cpu", 24)
    assert a.classes == ("a", "b", "c") and a.mean == (0.5, 0.5, 0.5)
    assert a.facts["sha256_of"] == "state_dict" and a.facts["sha256"] == b.facts["sha256"]
    assert a.facts["input_size"] == 24
    with pytest.raises(ValueError, match="outputs 3 classes but declares 2"):
        load_model("module:mymodels:liar", "cpu", 24)
    with pytest.raises(ValueError, match="cannot import mymodels:nothing"):
        load_model("module:mymodels:nothing", "cpu", 24)


def test_spec_checks_without_torch_names():
    with pytest.raises(ValueError, match="module:PKG.MOD:CALLABLE"):
        model_specs.check_model_spec("module:justonepart")
    with pytest.raises(ValueError) as e:
        model_specs.check_model_spec("keras:foo")
    assert "onnx:PATH" in str(e.value) and "torchscript:PATH" in str(e.value)


# ------------------------------------------------------------ torchvision ---

@pytest.fixture
def fake_torchvision(monkeypatch, tmp_path):
    """A stand-in for torchvision.models: one ``tinynet`` with 1000 ImageNet-style categories."""
    url = "https://example.invalid/tinynet-abc123.pth"
    weights = SimpleNamespace(DEFAULT=SimpleNamespace(url=url, meta={"categories": [f"c{i}" for i in range(1000)]}))
    models = types.ModuleType("torchvision.models")

    def get_model_weights(name):
        if name != "tinynet":
            raise ValueError(name)
        return weights

    models.get_model_weights = get_model_weights
    models.get_model = lambda name, weights=None: Tiny(1000)
    tv = types.ModuleType("torchvision")
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home" / "hub" / "checkpoints" / "tinynet-abc123.pth"


def test_torchvision_weights_from_file_or_cache_never_download(tmp_path, fake_torchvision):
    with pytest.raises(ValueError, match="not in the torchvision cache"):
        load_model("torchvision:tinynet", "cpu", 32)
    torch.manual_seed(2)
    sd = Tiny(1000).state_dict()
    f = tmp_path / "w.pth"
    torch.save(sd, f)
    m = load_model(f"torchvision:tinynet@{f}", "cpu", 32)
    assert m.classes[:2] == ("c0", "c1") and m.facts["num_classes"] == 1000 and m.facts["sha256"] == _sha(f)
    fake_torchvision.parent.mkdir(parents=True)
    torch.save(sd, fake_torchvision)
    assert load_model("torchvision:tinynet", "cpu", 32).facts["sha256"] == _sha(fake_torchvision)
    with pytest.raises(ValueError, match="1000 classes but dataset synthetic has 10"):
        load_model("torchvision:tinynet", "cpu", 32, expect_classes=10, dataset="synthetic")
    torch.save(Tiny(10).state_dict(), f)
    with pytest.raises(ValueError, match="does not fit tinynet"):
        load_model(f"torchvision:tinynet@{f}", "cpu", 32)
    with pytest.raises(ValueError, match="unknown torchvision model"):
        load_model("torchvision:nonet", "cpu", 32)


# ------------------------------------------------------ plug-in registries ---

def _plugin_loader(arg, *, size, device, progress=None):
    return Tiny(10), {"facts": {"arg": arg}}


def test_register_model_loader_serves_its_prefix_and_refuses_a_taken_one(registries):
    model_specs.register_model_loader("toy", f"{__name__}:_plugin_loader", "toy:ARG, a test model")
    assert model_specs.check_model_spec("toy:x") == "toy:x"
    m = load_model("toy:hello", "cpu", 16)
    assert m.facts["arg"] == "hello" and m.facts["num_classes"] == 10
    with pytest.raises(ValueError, match="exists already"):
        model_specs.register_model_loader("onnx", _plugin_loader, "mine")
    with pytest.raises(ValueError, match="exists already"):
        model_specs.register_model_loader("toy", _plugin_loader, "another")


def _failing_loader(arg, *, size, device, progress=None):
    raise RuntimeError("weights server down\nsecond line")


def test_a_failing_plugin_loader_is_one_line_naming_the_spec(registries):
    model_specs.register_model_loader("flaky", _failing_loader, "flaky:, always fails")
    with pytest.raises(ValueError) as e:
        load_model("flaky:x", "cpu", 32)
    assert str(e.value) == "model flaky:x: its loader failed: RuntimeError: weights server down"


class _Gray(Codec):
    name = "test-gray"
    params_spec = {"quality": Param(int, 50, 1, 100)}

    def encode(self, image):
        return Encoded([image.mean(2).astype(np.uint8).tobytes()])

    def decode(self, chunks, total):
        return None


def test_register_codec_validates_like_a_builtin_and_refuses_taken_names(registries):
    register_codec(_Gray)
    assert validate_codec_params("test-gray", {"quality": 10}) == {"quality": 10}
    with pytest.raises(CodecParamsError):
        validate_codec_params("test-gray", {"quality": 500})
    clash = type("Clash", (_Gray,), {"name": "jpeg"})
    with pytest.raises(ValueError, match="exists already"):
        register_codec(clash)
    lazy_clash = type("Clash", (_Gray,), {"name": "grace"})
    with pytest.raises(ValueError, match="exists already"):
        register_codec(lazy_clash)


class _EP:
    """An entry point as importlib.metadata gives it (name, value, group, dist, load)."""

    def __init__(self, group, name, value, obj=None, error=None, dist="pkg-a"):
        self.group, self.name, self.value = group, name, value
        self.dist = SimpleNamespace(metadata={"Name": dist}, version="1.2")
        self._obj, self._error = obj, error

    def load(self):
        if self._error:
            raise self._error
        return self._obj


def test_entry_points_register_once_and_a_broken_one_names_its_package(registries, monkeypatch):
    calls = []

    def register():
        calls.append(1)
        model_specs.register_model_loader("ep-toy", _plugin_loader, "ep-toy:, from an entry point")

    eps = {"hilbed.codecs": [_EP("hilbed.codecs", "bad", "nope.mod:X", error=ImportError("no module nope"),
                                 dist="broken-pkg"),
                             _EP("hilbed.codecs", "test-gray", "t:_Gray", obj=_Gray)],
           "hilbed.models": [_EP("hilbed.models", "ep-toy", "t:register", obj=register)]}
    import importlib.metadata
    every = SimpleNamespace(select=lambda group: eps.get(group, []))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda: every)
    monkeypatch.setattr(plugins, "_entry_loads", None)
    loads = plugins.load_plugins("", entry_points=True)
    by = {p.name: p for p in loads}
    assert not by["bad"].ok and "broken-pkg 1.2" in by["bad"].error and "ImportError: no module nope" in by["bad"].error
    assert by["test-gray"].ok and by["test-gray"].registered == ("codec test-gray",) and "test-gray" in CODECS
    assert by["ep-toy"].ok and by["ep-toy"].registered == ("model ep-toy",) and by["ep-toy"].source == "pkg-a 1.2"
    assert plugins.load_plugins("", entry_points=True) == loads and calls == [1]  # once per process
    assert plugins.load_plugins("", entry_points=False) == []
