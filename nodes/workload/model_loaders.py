"""Model loaders by spec prefix: the built-in ones and the contract plug-ins follow.

A loader is ``fn(arg, *, size, device, progress)`` where ``arg`` is the spec
after ``PREFIX:`` (empty for a bare name). It returns an ``nn.Module``, a
``(module, info)`` pair or a :class:`ModelParts`; ``info`` may hold
``classes`` (names, or a count), ``mean``/``std`` (preprocessing of 0..1
RGB), ``facts`` and ``weights`` (a file whose sha256 the manifest records).
:func:`hilbed.nodes.workload.models.load_model` then checks the result
against the scenario's image size, so a mismatch fails before the run.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelParts:
    """What a loader hands back; ``predict`` replaces the torch path (ONNX)."""

    module: nn.Module | None
    classes: tuple[str, ...] | int | None = None
    facts: dict = field(default_factory=dict)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    weights: str | Path | None = None
    predict: Callable[[np.ndarray], np.ndarray] | None = None
    device: torch.device | None = None


def as_parts(out: Any) -> ModelParts:
    """Accept the three return shapes a loader may use."""
    if isinstance(out, ModelParts):
        return out
    if isinstance(out, nn.Module):
        return ModelParts(out)
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module) and isinstance(out[1], dict):
        info = dict(out[1])
        unknown = set(info) - {"classes", "mean", "std", "facts", "weights"}
        if unknown:
            raise ValueError(f"model info has unknown keys {sorted(unknown)} (allowed: classes, mean, std, facts, weights)")
        return ModelParts(out[0], info.get("classes"), dict(info.get("facts") or {}),
                          tuple(info.get("mean", IMAGENET_MEAN)), tuple(info.get("std", IMAGENET_STD)),
                          info.get("weights"))
    raise ValueError(f"a model loader returned {type(out).__name__}; expected an nn.Module, (module, info) or ModelParts")


def resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    """``"pkg.mod:attr"`` -> the object (plug-ins register loaders lazily by name)."""
    if callable(target):
        return target
    mod, _, attr = target.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _existing(path: str, spec: str) -> Path:
    p = Path(path).expanduser()
    if not path or not p.is_file():
        raise ValueError(f"model {spec}: weights file {path!r} not found")
    return p


# ---------------------------------------------------------------- loaders ---

def load_torchscript(arg: str, *, size: int, device: torch.device, progress=None) -> ModelParts:
    p = _existing(arg, f"torchscript:{arg}")
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated upstream but TorchScript files are still common
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:
        raise ValueError(f"model torchscript:{arg}: not a TorchScript file ({type(exc).__name__})") from None
    return ModelParts(module, weights=p)


def load_onnx(arg: str, *, size: int, device: torch.device, progress=None) -> ModelParts:
    """onnxruntime with the CUDA provider when the device allows it and it is there, else CPU."""
    p = _existing(arg, f"onnx:{arg}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ValueError(f"model onnx:{arg} needs onnxruntime (pip install 'hilbed[onnx]'): {exc}") from None
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    try:
        sess = ort.InferenceSession(str(p), providers=providers)
    except Exception as exc:
        raise ValueError(f"model onnx:{arg}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None
    inp = sess.get_inputs()[0]
    shape = list(inp.shape)
    if len(shape) != 4:
        raise ValueError(f"model onnx:{arg}: input {inp.name!r} has shape {shape}; expected N x 3 x H x W")
    want = [None, 3, size, size]
    for axis, (have, need) in enumerate(zip(shape, want)):
        if need is not None and isinstance(have, int) and have != need:
            raise ValueError(f"model onnx:{arg} takes input {shape} but the scenario's image_size needs "
                             f"[N, 3, {size}, {size}] (axis {axis}: {have} != {need})")
    used = sess.get_providers()
    fixed_batch = shape[0] if isinstance(shape[0], int) else None
    parts = ModelParts(None, weights=p, device=torch.device("cuda" if used[0].startswith("CUDA") else "cpu"),
                       facts={"onnx_providers": used, "onnx_input": inp.name})

    def predict(batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, np.float32).transpose(0, 3, 1, 2) / 255.0
        x = ((x - np.asarray(parts.mean, np.float32).reshape(1, 3, 1, 1))
             / np.asarray(parts.std, np.float32).reshape(1, 3, 1, 1)).astype(np.float32)
        outs = [sess.run(None, {inp.name: x[i:i + 1]})[0] for i in range(len(x))] if fixed_batch == 1 \
            else [sess.run(None, {inp.name: x})[0]]
        logits = np.concatenate(outs).astype(np.float64)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    parts.predict = predict
    return parts


def load_module(arg: str, *, size: int, device: torch.device, progress=None) -> ModelParts:
    """``module:PKG.MOD:CALLABLE``: the callable builds the model (called without arguments)."""
    mod, sep, attr = arg.rpartition(":")
    if not sep or not mod or not attr:
        raise ValueError(f"model module:{arg}: write module:PKG.MOD:CALLABLE")
    try:
        fn = resolve(f"{mod}:{attr}")
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model module:{arg}: cannot import {mod}:{attr} ({type(exc).__name__}: {exc})") from None
    return as_parts(fn())


def load_torchvision(arg: str, *, size: int, device: torch.device, progress=None) -> ModelParts:
    """``torchvision:NAME[@FILE]``: weights from FILE or, without one, the TORCH_HOME cache; never downloads."""
    name, _, wfile = arg.partition("@")
    try:
        import torchvision.models as tvm
    except Exception as exc:  # a torchvision built for another torch fails at import with RuntimeError
        raise ValueError(f"model torchvision:{arg} needs a torchvision matching torch {torch.__version__} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    try:
        weights_enum = tvm.get_model_weights(name)
    except Exception:
        raise ValueError(f"model torchvision:{arg}: unknown torchvision model {name!r}") from None
    default = getattr(weights_enum, "DEFAULT", None)
    if wfile:
        path = _existing(wfile, f"torchvision:{arg}")
    else:
        if default is None:
            raise ValueError(f"model torchvision:{arg}: no default weights; give torchvision:{name}@FILE")
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(default.url).name
        if not path.is_file():
            raise ValueError(f"model torchvision:{arg}: weights {path.name} are not in the torchvision cache "
                             f"({path.parent}); download them once or give torchvision:{name}@FILE")
    categories = tuple((default.meta or {}).get("categories") or ()) if default is not None else ()
    module = tvm.get_model(name, weights=None)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    try:
        module.load_state_dict(sd)
    except RuntimeError as exc:
        raise ValueError(f"model torchvision:{arg}: {path.name} does not fit {name} "
                         f"({str(exc).splitlines()[0][:200]})") from None
    return ModelParts(module, categories or None, {"torchvision": name}, weights=path)


#: built-in prefixed loaders (synthetic-cnn and cifar-resnet live in models.py next to their networks)
BUILTIN_LOADERS: dict[str, Callable[..., ModelParts]] = {
    "torchscript": load_torchscript,
    "onnx": load_onnx,
    "module": load_module,
    "torchvision": load_torchvision,
}
