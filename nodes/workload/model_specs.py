"""Model specs a scenario may name (``workload.model``), checked without torch (config validation, clients).

``MODEL_PREFIXES`` maps a spec's prefix (before ``:``, or the whole name) to
what it means; plug-ins add theirs with :func:`register_model_loader` (the
loader and the prefix at once) or :func:`register_model_prefix` (the prefix
only). This module stays torch-free so the controller can validate a
scenario that names a plug-in model without importing torch.
"""

from __future__ import annotations

from typing import Any, Callable

MODEL_PREFIXES: dict[str, str] = {
    "synthetic-cnn": "the small CNN for the synthetic set (trained on first use, cached)",
    "cifar-resnet": "cifar-resnet:PATH, a CIFAR ResNet checkpoint (He et al., option-A shortcuts)",
    "torchscript": "torchscript:PATH, a TorchScript file (torch.jit.save)",
    "onnx": "onnx:PATH, an ONNX file run by onnxruntime (CUDA provider when present, else CPU)",
    "torchvision": "torchvision:NAME[@WEIGHTS], a torchvision classifier; weights from a file or the TORCH_HOME cache",
    "module": "module:PKG.MOD:CALLABLE, a callable returning an nn.Module (or (module, info))",
}

#: plug-in loaders by prefix: a callable or a lazy ``"module:function"`` (see model_loaders.py for the contract)
MODEL_LOADERS: dict[str, Callable[..., Any] | str] = {}


def register_model_prefix(prefix: str, meaning: str) -> None:
    MODEL_PREFIXES[prefix] = meaning


def register_model_loader(prefix: str, fn: Callable[..., Any] | str, meaning: str) -> None:
    """Add a model prefix served by ``fn(arg, size=..., progress=...)``.

    ``fn`` may be ``"module:function"`` so registering on the controller
    does not import torch; the edge resolves it on first use. A prefix that
    exists already is refused (a plug-in must not silently replace a model).
    """
    if not prefix or ":" in prefix or "@" in prefix:
        raise ValueError(f"model prefix {prefix!r}: must be non-empty without ':' or '@'")
    known = MODEL_LOADERS.get(prefix)
    if (prefix in MODEL_PREFIXES and prefix not in MODEL_LOADERS) or (known is not None and known != fn):
        raise ValueError(f"model prefix {prefix!r} exists already")
    MODEL_LOADERS[prefix] = fn
    MODEL_PREFIXES[prefix] = meaning


def unregister_model_loader(prefix: str) -> None:
    if MODEL_LOADERS.pop(prefix, None) is not None:
        MODEL_PREFIXES.pop(prefix, None)


def _shown(prefix: str) -> str:
    first = MODEL_PREFIXES[prefix].split(",")[0]
    return first if first.startswith(prefix + ":") else prefix


def check_model_spec(spec: str) -> str:
    """``spec`` if its prefix is known, else ValueError naming what is allowed."""
    prefix = spec.split(":", 1)[0]
    if prefix in MODEL_PREFIXES and (":" in spec or prefix == spec):
        if prefix == "module" and spec.count(":") < 2:
            raise ValueError(f"model {spec[:60]!r}: write module:PKG.MOD:CALLABLE")
        return spec
    allowed = ", ".join(_shown(p) for p in MODEL_PREFIXES)
    raise ValueError(f"unknown model {spec[:60]!r} (allowed: {allowed})")


def check_class_count(model: str, model_classes: int, dataset: str, dataset_classes: int) -> None:
    """One clear line when a model's output width cannot label a dataset's classes.

    The edge knows the model, the client knows the dataset: whoever holds both
    (the controller after ``load``) calls this before the first trial.
    """
    if model_classes != dataset_classes:
        raise ValueError(f"model {model} has {model_classes} classes but dataset {dataset} has {dataset_classes}: "
                         "they must match")
