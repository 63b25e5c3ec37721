"""Target models the edge serves: a small CNN for the synthetic set (trained
on first use and cached), the CIFAR ResNets of He et al. (option-A
shortcuts) loaded from the public checkpoints, and - through
``model_loaders.py`` and plug-ins - TorchScript, ONNX, torchvision and
user-built modules. :func:`load_model` checks every model against the
scenario's image size and records its checksum, input size and class count.

Only the edge and codec fitting import this module (it needs torch).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hilbed.nodes.workload.model_loaders import (
    BUILTIN_LOADERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelParts,
    as_parts,
    resolve,
)
from hilbed.nodes.workload.model_specs import MODEL_LOADERS, MODEL_PREFIXES, check_class_count

from ..paths import cache_dir
from .synthetic import CLASSES as SYNTH_CLASSES
from .synthetic import GENERATOR_VERSION, make_image

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def pick_device(pref: str = "auto") -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


# ------------------------------------------------------------- small CNN ---

class SmallCNN(nn.Module):
    """Four conv layers; the first two keep full resolution so fine texture is seen."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


@dataclass(frozen=True)
class TrainConfig:
    size: int = 32
    seed: int = 0
    n_train: int = 6000
    n_val: int = 1000
    epochs: int = 8
    batch: int = 128
    lr: float = 3e-3
    width: int = 32

    def key(self) -> str:
        blob = json.dumps({**self.__dict__, "gen": GENERATOR_VERSION, "arch": "SmallCNN-v1"}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _stack(split: str, n: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    xs = np.empty((n, size, size, 3), np.uint8)
    ys = np.empty(n, np.int64)
    for i in range(n):
        xs[i], ys[i] = make_image(i, split, seed, size)
    return xs, ys


def to_tensor(batch: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """NHWC uint8 -> normalised NCHW float32."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def train_synthetic_cnn(cfg: TrainConfig, progress: Callable[[str, float], None] | None = None) -> tuple[SmallCNN, dict]:
    """Train the default model; returns it and facts (val accuracy, seconds)."""
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    xtr, ytr = _stack("train", cfg.n_train, cfg.seed, cfg.size)
    xva, yva = _stack("val", cfg.n_val, cfg.seed, cfg.size)
    Xtr, Ytr = to_tensor(xtr), torch.from_numpy(ytr)
    Xva, Yva = to_tensor(xva), torch.from_numpy(yva)
    model = SmallCNN(len(SYNTH_CLASSES), cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * ((cfg.n_train + cfg.batch - 1) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    g = torch.Generator().manual_seed(cfg.seed)
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(cfg.n_train, generator=g)
        for i in range(0, cfg.n_train, cfg.batch):
            idx = perm[i:i + cfg.batch]
            xb = Xtr[idx]
            # flips keep class identity and double the effective data
            if torch.rand(1, generator=g).item() < 0.5:
                xb = xb.flip(3)
            loss = F.cross_entropy(model(xb), Ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if progress:
            progress(f"epoch {epoch + 1}/{cfg.epochs} loss {loss.item():.3f}", step / steps)
    model.eval()
    with torch.no_grad():
        acc = (model(Xva).argmax(1) == Yva).float().mean().item()
    return model, {"val_top1": acc, "train_s": time.monotonic() - t0, "config": cfg.__dict__, "key": cfg.key()}


def synthetic_cnn(cfg: TrainConfig = TrainConfig(), progress: Callable[[str, float], None] | None = None) -> tuple[SmallCNN, dict]:
    """The cached default model, trained on first use (file-locked across processes)."""
    d = cache_dir() / "models"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"synthetic-cnn-{cfg.key()}.pt"
    with open(d / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            blob = torch.load(path, map_location="cpu", weights_only=False)
            model = SmallCNN(len(SYNTH_CLASSES), cfg.width)
            model.load_state_dict(blob["state_dict"])
            model.eval()
            return model, blob["facts"]
        model, facts = train_synthetic_cnn(cfg, progress)
        tmp = path.with_suffix(".tmp")
        torch.save({"state_dict": model.state_dict(), "facts": facts}, tmp)
        os.replace(tmp, path)
        return model, facts


# ------------------------------------------------------------ CIFAR ResNet ---

class _BasicBlock(nn.Module):
    def __init__(self, inp: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or inp != planes) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x
        if self.pad:  # option A: subsample and zero-pad channels
            sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        self.depth = 6 * n + 2

    @staticmethod
    def _stage(inp: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [_BasicBlock(inp, planes, stride)] + [_BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def load_cifar_resnet(path: str | Path) -> tuple[CifarResNet, dict]:
    """Load a CIFAR ResNet checkpoint; depth is inferred from the block count."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    sd = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    sd = {re.sub(r"^module\.", "", k): v for k, v in sd.items()}
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"layer1\.(\d+)\.", k))}
    if not blocks:
        raise ValueError(f"{path}: not a CIFAR ResNet checkpoint (no layer1 blocks)")
    n = max(blocks) + 1
    model = CifarResNet(n, sd["linear.weight"].shape[0])
    model.load_state_dict(sd)
    model.eval()
    return model, {"depth": 6 * n + 2, "best_prec1": blob.get("best_prec1") if isinstance(blob, dict) else None}


# --------------------------------------------------------------- facade ---

@dataclass
class LoadedModel:
    """A ready-to-serve classifier: uint8 NHWC batch in, probabilities out."""

    name: str
    module: nn.Module | None
    device: torch.device
    classes: tuple[str, ...]
    facts: dict
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    predict_fn: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def amp_applies(self) -> bool:
        """Whether ``predict(amp=True)`` changes anything: a torch module on CUDA (autocast float16 there only)."""
        return self.predict_fn is None and self.module is not None and self.device.type == "cuda"

    @torch.no_grad()
    def predict(self, batch: np.ndarray, amp: bool = False) -> np.ndarray:
        """Probabilities for an NHWC uint8 batch.

        ``amp``: run the module under ``torch.autocast`` (float16) when :attr:`amp_applies`;
        elsewhere (CPU, ``predict_fn`` models) it is ignored and the edge reports so.
        Probabilities are returned as float32 either way.
        """
        if self.predict_fn is not None:
            return self.predict_fn(batch)
        x = to_tensor(batch, self.mean, self.std).to(self.device)
        if amp and self.amp_applies:
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                logits = self.module(x)
            return torch.softmax(logits.float(), 1).cpu().numpy()
        return torch.softmax(self.module(x), 1).float().cpu().numpy()


def load_synthetic_file(path: str | Path, size: int) -> tuple[SmallCNN, dict]:
    """The default model from a file provisioning pushed (``synthetic-cnn:FILE``): the node does not train it.

    Refused (one line) when the file was trained for other settings than this scenario's image size."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"model synthetic-cnn:{path}: weights file not found (run `hilbed provision` with the "
                         "scenario to push it)")
    blob = torch.load(p, map_location="cpu", weights_only=False)
    facts = dict(blob.get("facts") or {}) if isinstance(blob, dict) else {}
    want = TrainConfig(size=size)
    if facts.get("key") not in (None, want.key()):
        raise ValueError(f"model synthetic-cnn:{path} was trained with other settings (key {facts.get('key')}, "
                         f"image_size {(facts.get('config') or {}).get('size')}); image_size {size} needs key "
                         f"{want.key()}")
    model = SmallCNN(len(SYNTH_CLASSES), int((facts.get("config") or {}).get("width", want.width)))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, facts


def _load_synthetic(arg: str, *, size: int, device, progress=None) -> ModelParts:
    if arg:  # a pushed copy of the controller's cached model
        module, facts = load_synthetic_file(arg, size)
        return ModelParts(module, SYNTH_CLASSES, facts, weights=Path(arg).expanduser())
    module, facts = synthetic_cnn(TrainConfig(size=size), progress)
    return ModelParts(module, SYNTH_CLASSES, dict(facts))


def _load_cifar(arg: str, *, size: int, device, progress=None) -> ModelParts:
    """``cifar-resnet:PATH`` or ``cifar-resnet:NAME`` (a catalog name such as cifar10-resnet20)."""
    from hilbed.nodes.workload.catalog import weights_path
    path = str(weights_path(arg))
    module, facts = load_cifar_resnet(path)
    return ModelParts(module, CIFAR_CLASSES, facts, weights=path)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_state_dict(module: nn.Module) -> str:
    """Weights checksum independent of file format: names, dtypes, shapes and bytes in key order."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _loader(prefix: str):
    if prefix == "synthetic-cnn":
        return _load_synthetic
    if prefix == "cifar-resnet":
        return _load_cifar
    if prefix in BUILTIN_LOADERS:
        return BUILTIN_LOADERS[prefix]
    if prefix in MODEL_LOADERS:
        try:
            return resolve(MODEL_LOADERS[prefix])
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"model prefix {prefix!r}: its loader {MODEL_LOADERS[prefix]!r} cannot be imported "
                             f"({type(exc).__name__}: {exc})") from None
    return None


def load_model(spec: str, device: str = "auto", size: int = 32,
               progress: Callable[[str, float], None] | None = None, *,
               expect_classes: int | None = None, dataset: str = "the dataset") -> LoadedModel:
    """Load ``spec`` and prove it serves (1, 3, size, size) images before any trial.

    ValueError (one line) when the model rejects that input, its output width
    differs from its class names, or ``expect_classes`` (the dataset's count)
    differs. ``facts`` gains ``sha256`` (weights file, else state_dict bytes),
    ``input_size`` and ``num_classes`` for the manifest.
    """
    dev = pick_device(device)
    prefix, _, arg = spec.partition(":")
    fn = _loader(prefix)
    if fn is None:
        allowed = ", ".join(MODEL_PREFIXES)
        raise ValueError(f"unknown model {spec!r} (allowed: {allowed})")
    try:
        parts = as_parts(fn(arg, size=size, device=dev, progress=progress))
    except ValueError:
        raise
    except Exception as exc:  # a plug-in's loader failing must still reach the controller as one line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"model {spec}: its loader failed: {type(exc).__name__}: {first}") from exc
    module = parts.module.to(dev).eval() if parts.module is not None else None
    facts = dict(parts.facts)
    if parts.weights is not None:
        facts["sha256"], facts["sha256_of"] = sha256_file(parts.weights), "file"
    elif module is not None:
        facts["sha256"], facts["sha256_of"] = sha256_state_dict(module), "state_dict"
    named = parts.classes if isinstance(parts.classes, tuple) and parts.classes else None
    model = LoadedModel(spec, module, parts.device or dev, named or (), facts,
                        tuple(parts.mean), tuple(parts.std), parts.predict)
    try:
        out = model.predict(np.zeros((1, size, size, 3), np.uint8))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"model {spec} does not accept a 1x3x{size}x{size} input (image_size {size}): "
                         f"{type(exc).__name__}: {first}") from None
    if out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(f"model {spec} returned shape {tuple(out.shape)} for one image; expected (1, classes)")
    width = int(out.shape[1])
    declared = len(named) if named else parts.classes if isinstance(parts.classes, int) else None
    if declared is not None and declared != width:
        raise ValueError(f"model {spec} outputs {width} classes but declares {declared}")
    if expect_classes is not None:
        check_class_count(spec, width, dataset, expect_classes)
    if not named:
        model.classes = tuple(str(i) for i in range(width))
    facts.update(input_size=size, num_classes=width)
    return model
