"""Model specs a scenario may name (``workload.model``), checked without torch (config validation, clients).

``MODEL_PREFIXES`` maps a spec's prefix (before ``:``, or the whole name) to
what it means; plug-ins add theirs with :func:`register_model_prefix`.
"""

from __future__ import annotations

MODEL_PREFIXES: dict[str, str] = {
    "synthetic-cnn": "the small CNN for the synthetic set (trained on first use, cached)",
    "cifar-resnet": "cifar-resnet:PATH, a CIFAR ResNet checkpoint (He et al., option-A shortcuts)",
}


def register_model_prefix(prefix: str, meaning: str) -> None:
    MODEL_PREFIXES[prefix] = meaning


def check_model_spec(spec: str) -> str:
    """``spec`` if its prefix is known, else ValueError naming what is allowed."""
    prefix = spec.split(":", 1)[0]
    if prefix in MODEL_PREFIXES and (":" in spec or prefix == spec):
        return spec
    allowed = ", ".join(p if ":" not in MODEL_PREFIXES[p].split(",")[0] else MODEL_PREFIXES[p].split(",")[0]
                        for p in MODEL_PREFIXES)
    raise ValueError(f"unknown model {spec[:60]!r} (allowed: {allowed})")
