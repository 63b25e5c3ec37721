"""Dataset specs a scenario may name (``workload.dataset``), checked without torch (config validation, clients).

``DATASET_PREFIXES`` maps a spec's prefix (before ``:``, or the whole name) to
what it means; plug-ins add theirs with :func:`register_dataset_prefix`.
"""

from __future__ import annotations

DATASET_PREFIXES: dict[str, str] = {
    "synthetic": "synthetic",
    "imagefolder": "imagefolder:PATH",
}


def register_dataset_prefix(prefix: str, shown: str) -> None:
    DATASET_PREFIXES[prefix] = shown


def check_dataset_spec(spec: str) -> str:
    """``spec`` if its prefix is known, else ValueError naming what is allowed."""
    prefix = spec.split(":", 1)[0]
    if prefix in DATASET_PREFIXES and (":" in spec) == (":" in DATASET_PREFIXES[prefix]):
        return spec
    raise ValueError(f"unknown dataset {spec[:60]!r} (allowed: {', '.join(DATASET_PREFIXES.values())})")
