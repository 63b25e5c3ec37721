"""What fitting the neural codec families shares: data as tensors, the
frozen teacher, the distillation loss, a small training loop and weight
serialisation.

Fit time only (controller-side): what the edge needs to rebuild a network
(the ResNet tail, ``to_unit``, loading weights) is in
:mod:`hilbed.nodes.codecs.nets.common`. Torch is imported at module level.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hilbed.nodes.codecs.nets.common import to_unit
from hilbed.nodes.paths import cache_dir
from hilbed.nodes.workload.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CifarResNet,
    load_model,
    pick_device,
)

Progress = Callable[[str, float], None]


# ------------------------------------------------------------------ data ---

@dataclass
class ImageTensors:
    """A labelled image set held in memory: uint8 NHWC images and int64 labels."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None, seed: int = 0) -> ImageTensors:
        """A class-balanced-in-expectation random subset (all of it when n is None or >= len)."""
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        return ImageTensors(self.x[idx], self.y[idx], self.classes, f"{self.source}[{n}]")


def load_images(spec: str, size: int = 32, limit: int | None = None, seed: int = 0,
                split: str = "train") -> ImageTensors:
    """``imagefolder:PATH``, a plain directory path, a catalog name (``cifar10:fit``) or ``synthetic[:N]``, as
    arrays.

    Folder decodes are cached as ``.npz`` under the hilbed cache, keyed by the
    path, size and the folder's file list, so the 10k CIFAR JPEGs decode once.
    """
    if spec.startswith("synthetic"):
        from hilbed.nodes.workload.synthetic import CLASSES, make_image
        n = int(spec.split(":", 1)[1]) if ":" in spec else (limit or 2000)
        xs = np.empty((n, size, size, 3), np.uint8)
        ys = np.empty(n, np.int64)
        for i in range(n):
            xs[i], ys[i] = make_image(i, split, seed, size)
        return ImageTensors(xs, ys, tuple(CLASSES), spec).subset(limit, seed)
    from hilbed.nodes.workload.imagefolder import ImageFolder
    if spec.startswith("imagefolder:"):
        path = spec.split(":", 1)[1]
    elif Path(spec).is_dir():
        path = spec
    else:  # a catalog name (cifar10:fit): the files in the data root or mirror
        from hilbed.nodes.workload import catalog
        e = catalog.CATALOG.get(spec)
        if e is None or isinstance(e, catalog.WeightsEntry):
            allowed = ", ".join(["synthetic[:N]", "imagefolder:PATH", "a directory", *catalog.dataset_names()])
            raise ValueError(f"unknown dataset {spec!r} (allowed: {allowed})")
        where = catalog.dataset_path(spec)
        if isinstance(e, catalog.CifarEntry):  # binary batches: already arrays, nothing to cache
            from hilbed.nodes.workload.imagefolder import CifarBatches
            cb = CifarBatches(where, [f for f, _ in e.files], size, spec)
            pairs = [cb[i] for i in range(len(cb))]
            x = np.stack([im for im, _ in pairs])
            y = np.array([label for _, label in pairs], np.int64)
            return ImageTensors(x, y, tuple(cb.classes), spec).subset(limit, seed)
        path = str(where)
    ds = ImageFolder(path, size)
    listing = "\n".join(f"{p.relative_to(ds.root)}:{p.stat().st_size}" for p, _ in ds.items)
    key = hashlib.sha256(f"{ds.root.resolve()}|{size}|{listing}".encode()).hexdigest()[:16]
    cache = cache_dir() / "datasets" / f"{ds.root.name}-{size}-{key}.npz"
    if cache.exists():
        with np.load(cache) as z:
            x, y = z["x"], z["y"]
    else:
        x = np.stack([ds[i][0] for i in range(len(ds))])
        y = np.array([label for _, label in ds.items], np.int64)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, cache)
    return ImageTensors(x, y, tuple(ds.classes), str(path)).subset(limit, seed)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip + random crop after ``pad`` reflect padding (per sample), NCHW."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1).to(x.device), x.flip(3), x)
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy.view(n, 1) + torch.arange(h)).to(x.device)
        cols = (dx.view(n, 1) + torch.arange(w)).to(x.device)
        x = xp[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1),
               rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    return x


def batches(n: int, batch: int, gen: torch.Generator | None = None, drop_last: bool = False) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    stop = n - (n % batch if drop_last and n >= batch else 0)
    for i in range(0, stop, batch):
        yield order[i:i + batch]


# --------------------------------------------------------------- teacher ---

class Teacher(nn.Module):
    """The frozen target classifier, taking [0, 1] NCHW images (it normalises)."""

    def __init__(self, module: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> Teacher:  # BN statistics stay frozen
        super().train(False)
        return self

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.module(self.normalise(x01))

    # CIFAR ResNet split points (the entropic student replaces conv1..layer1)
    def resnet(self) -> CifarResNet:
        if not isinstance(self.module, CifarResNet):
            raise TypeError(f"this codec needs a CIFAR ResNet teacher (cifar-resnet:PATH), got {type(self.module).__name__}")
        return self.module

    def stage1(self, x01: torch.Tensor) -> torch.Tensor:
        """Output of the first residual stage (what the student's decoder must produce)."""
        m = self.resnet()
        return m.layer1(F.relu(m.bn1(m.conv1(self.normalise(x01)))))

    def features(self, x01: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1, layer2, layer3 and the logits."""
        m = self.resnet()
        f1 = m.layer1(F.relu(m.bn1(m.conv1(self.normalise(x01)))))
        f2 = m.layer2(f1)
        f3 = m.layer3(f2)
        return [f1, f2, f3, m.linear(F.adaptive_avg_pool2d(f3, 1).flatten(1))]


def load_teacher(spec: str, device: torch.device | str = "cpu", size: int = 32) -> Teacher:
    """``cifar-resnet:PATH`` or ``synthetic-cnn`` (the edge's model spec), frozen, on ``device``."""
    lm = load_model(spec, "cpu", size)
    return Teacher(lm.module, lm.mean, lm.std).to(device)


# ------------------------------------------------------------------ loss ---

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
            alpha: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """Hinton distillation: ``alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``.

    Without labels (or with ``alpha == 0``) it is the pure distillation term, as
    PNC's second stage uses; the entropic student uses alpha 0.5, T 1 (Eq. S4).
    """
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits.detach() / t, 1),
                  reduction="batchmean", log_target=True) * (t * t)
    if labels is None or alpha == 0:
        return kl
    return alpha * F.cross_entropy(student_logits, labels) + (1 - alpha) * kl


# ------------------------------------------------------------- training ---

def set_threads(n: int | None) -> None:
    """Keep CPU training polite on shared machines (default 1 thread, ``HILBED_TORCH_THREADS`` overrides)."""
    n = n or int(os.environ.get("HILBED_TORCH_THREADS", "1"))
    torch.set_num_threads(max(1, n))


def device_for(pref: str = "auto") -> torch.device:
    return pick_device(pref)


@dataclass
class Schedule:
    """Step decay: ``lr`` times ``gamma`` at each fraction in ``milestones`` of the run."""

    lr: float
    milestones: tuple[float, ...] = (0.6, 0.85)
    gamma: float = 0.1

    def at(self, frac: float) -> float:
        return self.lr * self.gamma ** sum(frac >= m for m in self.milestones)


def train_loop(step: Callable[[torch.Tensor, float], dict], n: int, batch: int, epochs: float,
               optimizers: list[tuple[torch.optim.Optimizer, Schedule]], seed: int = 0,
               progress: Progress | None = None, what: str = "train", max_steps: int | None = None) -> dict:
    """Run ``step(indices, frac) -> {loss terms}`` over shuffled batches for ``epochs`` (may be fractional).

    Returns the mean of every loss term over the last 10% of steps and the wall time.
    """
    gen = torch.Generator().manual_seed(seed)
    per_epoch = max(1, math.ceil(n / batch))
    total = max(1, round(epochs * per_epoch))
    if max_steps:
        total = min(total, max_steps)
    t0 = time.monotonic()
    k = 0
    tail: list[dict] = []
    last_report = 0.0
    while k < total:
        for idx in batches(n, batch, gen, drop_last=n > batch):
            frac = k / total
            for opt, sched in optimizers:
                for g in opt.param_groups:
                    g["lr"] = sched.at(frac) * g.get("lr_scale", 1.0)
            terms = step(idx, frac)
            k += 1
            if k > total * 0.9:
                tail.append(terms)
            if progress and (time.monotonic() - last_report > 5 or k == total):
                last_report = time.monotonic()
                progress(f"{what} step {k}/{total} " + " ".join(f"{a} {b:.4g}" for a, b in terms.items()), k / total)
            if k >= total:
                break
    out = {key: float(np.mean([t[key] for t in tail])) for key in (tail[0] if tail else {})}
    out.update(steps=total, seconds=round(time.monotonic() - t0, 1))
    return out


def print_progress(prefix: str = "") -> Progress:
    def show(msg: str, frac: float) -> None:
        print(f"{prefix}[{100 * frac:5.1f}%] {msg}", flush=True)
    return show


@torch.no_grad()
def top1(predict: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, y: np.ndarray, batch: int = 250,
         device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``predict(x01 NCHW) -> logits`` over uint8 NHWC ``x``."""
    correct = 0
    for i in range(0, len(x), batch):
        logits = predict(to_unit(x[i:i + batch], device))
        correct += int((logits.argmax(1).cpu().numpy() == y[i:i + batch]).sum())
    return correct / max(1, len(x))


# ------------------------------------------------------------ artifacts ---

def state_to_npz(state: dict[str, torch.Tensor]) -> bytes:
    """A state dict as ``.npz`` bytes: no pickle, readable with numpy alone (a Pi reads the encoder)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().cpu().numpy() for k, v in state.items()})
    return buf.getvalue()


def json_safe(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def resolve_model_spec(spec: str) -> str:
    """``cifar-resnet:PATH`` with PATH made absolute (so artifacts record where the teacher came from); a
    catalog weights name (``cifar-resnet:cifar10-resnet20``) stays a name, resolved by the data catalog."""
    if spec.startswith("cifar-resnet:"):
        from hilbed.nodes.workload.catalog import CATALOG
        ref = spec.split(":", 1)[1]
        if ref in CATALOG:
            return spec
        return "cifar-resnet:" + str(Path(ref).expanduser().resolve())
    return spec


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
