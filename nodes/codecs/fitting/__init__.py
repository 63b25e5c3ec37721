"""Controller-side codec tooling: fitting, evaluation and the ``hilbed fit`` plug-ins.

Everything here may import torch (inside functions at this level, at module
level in the family modules); the runtime codecs in :mod:`hilbed.nodes.codecs`
import from here only inside a function that fits on first use.

This module is the dataset / model plumbing for fits and offline evaluation.
A fit needs images (uint8 NHWC + labels) from a dataset spec, the target
model (torch module + its input normalisation), a place to put artifacts and
a way to report progress. The same specs as scenarios are accepted:
``synthetic`` | ``imagefolder:PATH`` | a plain directory path, and
``synthetic-cnn`` | ``cifar-resnet:PATH`` | a plain ``*.th``/``*.pt`` path.

It also holds the *fit protocol* registry (see docs/codecs.md): for a codec
module ``hilbed.nodes.codecs.X`` named in :data:`hilbed.nodes.codecs.LAZY_CODECS`,
``hilbed.nodes.codecs.fitting.X`` is its ``hilbed fit`` family when it defines
``fit_cli`` and ``fit_main`` (discovered without importing it); and
:func:`auto_artifact`, which fits once per settings key (file-locked across
processes) for codecs whose params name no artifact.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hilbed.nodes.codecs.artifacts import Artifact, ArtifactStore

Progress = Callable[[str, float], None]


def _quiet(msg: str, frac: float) -> None:
    pass


# ------------------------------------------------------------- datasets ---

def dataset_spec(spec: str) -> str:
    """Normalise: a plain existing directory means ``imagefolder:DIR``; catalog names (cifar10:fit) stay."""
    from hilbed.nodes.workload.dataset_specs import check_dataset_spec
    if Path(spec).is_dir():
        return f"imagefolder:{Path(spec).resolve()}"
    try:
        return check_dataset_spec(spec)
    except ValueError as exc:
        raise ValueError(f"{exc} or a directory") from None


def open_dataset(spec: str, size: int = 32, split: str = "train", n: int = 2000, seed: int = 0):
    """An indexable dataset with ``len`` and ``classes`` (synthetic: ``n`` images of ``split``)."""
    spec = dataset_spec(spec)
    if spec == "synthetic":
        from hilbed.nodes.workload.synthetic import SyntheticDataset
        return SyntheticDataset(n, split, seed, size)
    if spec.startswith("imagefolder:"):
        from hilbed.nodes.workload.imagefolder import ImageFolder
        return ImageFolder(spec.split(":", 1)[1], size)
    from hilbed.nodes.workload import open_dataset as open_named  # catalog names: files in the data root/mirror
    return open_named(spec, size, seed)


def load_images(ds, n: int | None = None, seed: int = 0, shuffle: bool = True,
                progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` images (a seeded random subset when ``shuffle``) as uint8 NHWC and int64 labels."""
    total = len(ds)
    idx = np.arange(total)
    if shuffle:
        idx = np.random.default_rng(seed).permutation(total)
    if n is not None:
        idx = idx[:min(n, total)]
    first = ds[int(idx[0])][0]
    xs = np.empty((len(idx), *first.shape), np.uint8)
    ys = np.empty(len(idx), np.int64)
    for k, i in enumerate(idx):
        xs[k], ys[k] = ds[int(i)]
        if progress and k % 256 == 0:
            progress(f"loading images {k}/{len(idx)}", k / len(idx))
    return xs, ys


# --------------------------------------------------------------- models ---

def model_spec(spec: str) -> str:
    if spec == "synthetic-cnn" or spec.startswith("cifar-resnet:"):
        return spec
    if Path(spec).is_file():
        return f"cifar-resnet:{Path(spec).resolve()}"
    raise ValueError(f"unknown model {spec!r} (allowed: synthetic-cnn, cifar-resnet:PATH, or a checkpoint file)")


def load_target(spec: str, device: str = "cpu", size: int = 32, progress: Progress | None = None):
    """The target classifier as :class:`hilbed.nodes.workload.models.LoadedModel` (eval mode)."""
    from hilbed.nodes.workload.models import load_model
    return load_model(model_spec(spec), device, size, progress)


def model_fingerprint(spec: str) -> str:
    """Ties an artifact to the exact model it was fitted for."""
    spec = model_spec(spec)
    if spec.startswith("cifar-resnet:"):
        from hilbed.nodes.workload.catalog import weights_path
        path = weights_path(spec.split(":", 1)[1])
        h = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return f"cifar-resnet:{path.name}:{h}"
    from hilbed.nodes.workload.models import TrainConfig
    return f"synthetic-cnn:{TrainConfig().key()}"


def normaliser(loaded) -> Callable:
    """x (N, 3, H, W) float in 0..255 -> the model's normalised input (differentiable)."""
    import torch
    mean = torch.tensor(loaded.mean, dtype=torch.float32, device=loaded.device).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std, dtype=torch.float32, device=loaded.device).view(1, 3, 1, 1)

    def f(x):
        return (x / 255.0 - mean) / std
    return f


def to_nchw(batch: np.ndarray, device=None):
    """uint8 NHWC -> float32 NCHW in 0..255."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().to(device)


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def set_threads(n: int | None = None) -> int:
    """Fits and evaluations share small machines: one thread unless told otherwise (HILBED_FIT_THREADS).

    Sets torch's intra-op and inter-op pools and the OpenMP/MKL/BLAS variables
    (read by subprocesses, and by this one when torch is not imported yet).
    Call it before any work. Returns the number used.
    """
    n = max(1, int(n or os.environ.get("HILBED_FIT_THREADS", "1")))
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    import torch
    torch.set_num_threads(n)
    try:  # allowed once, before the inter-op pool has run anything
        if torch.get_num_interop_threads() != n:
            torch.set_num_interop_threads(n)
    except RuntimeError:
        pass
    return n


# ---------------------------------------------------------- fit context ---

@dataclass
class FitSource:
    """What a fit ran on, recorded in every artifact's meta."""

    dataset: str
    model: str
    model_fingerprint: str
    n_images: int
    size: int
    seed: int

    def meta(self) -> dict:
        return {"dataset": self.dataset, "model": self.model, "model_fingerprint": self.model_fingerprint,
                "n_images": self.n_images, "image_size": self.size, "seed": self.seed}


def prepare(dataset: str, model: str, n: int, size: int = 32, seed: int = 0, device: str = "cpu",
            progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, Any, FitSource]:
    """Images, labels, target model and a :class:`FitSource` for a fit."""
    progress = progress or _quiet
    ds = open_dataset(dataset, size, "train", n, seed)
    x, y = load_images(ds, n, seed, progress=progress)
    loaded = load_target(model, device, size, progress)
    src = FitSource(dataset_spec(dataset), model_spec(model), model_fingerprint(model), len(x), size, seed)
    return x, y, loaded, src


# --------------------------------------------------------- fit registry ---

def fitting_module_name(codec_module: str) -> str:
    """``hilbed.nodes.codecs.X`` (a runtime codec module) -> ``hilbed.nodes.codecs.fitting.X``."""
    return f"{__name__}.{codec_module.rsplit('.', 1)[-1]}"


def fit_families() -> dict[str, str]:
    """``hilbed fit`` families: codec name -> its fitting module, for modules that exist (not imported here)."""
    from hilbed.nodes.codecs import LAZY_CODECS
    out = {}
    for name, target in LAZY_CODECS.items():
        mod = fitting_module_name(target.split(":")[0])
        if importlib.util.find_spec(mod) is not None:
            out[name] = mod
    return out


def fit_module(name: str):
    """The module of family ``name`` if it implements the fit protocol, else None."""
    fams = fit_families()
    if name not in fams:
        return None
    m = importlib.import_module(fams[name])
    if callable(getattr(m, "fit_cli", None)) and callable(getattr(m, "fit_main", None)):
        return m
    return None


# -------------------------------------------------------- auto artifact ---

def settings_key(kind: str, settings: dict) -> str:
    blob = json.dumps({"kind": kind, **settings}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def auto_artifact(kind: str, settings: dict, build: Callable[[ArtifactStore], Artifact],
                  store: ArtifactStore | None = None) -> Artifact:
    """The artifact fitted for ``settings``, fitting it on first use.

    The index ``<store>/auto/<key>`` maps settings to the content-hashed id; a
    file lock makes concurrent processes (a client and an edge on one
    machine) fit once and share the result.
    """
    store = store or ArtifactStore()
    key = settings_key(kind, settings)
    d = store.root / "auto"
    d.mkdir(parents=True, exist_ok=True)
    index = d / key
    with open(d / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if index.exists():
            aid = index.read_text().strip()
            try:
                return store.get(aid)
            except FileNotFoundError:
                pass
        art = build(store)
        tmp = index.with_suffix(".tmp")
        tmp.write_text(art.id + "\n")
        os.replace(tmp, index)
        return art


def resolve_store(root: str | os.PathLike | None = None) -> ArtifactStore:
    return ArtifactStore(root) if root else ArtifactStore()
