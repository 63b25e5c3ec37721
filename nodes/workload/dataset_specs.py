"""Dataset specs a scenario may name (``workload.dataset``), checked without torch (config validation, clients).

``DATASET_PREFIXES`` maps a spec's prefix (before ``:``, or the whole name) to
what it means; plug-ins add theirs with :func:`register_dataset_prefix`.
"""

from __future__ import annotations

DATASET_PREFIXES: dict[str, str] = {
    "synthetic": "synthetic",
    "imagefolder": "imagefolder:PATH",
    "cifar10": "cifar10:SPLIT",
}

#: names after a catalog prefix (kept here, not imported from catalog.py, so validation stays import-light;
#: tests/nodes/workload/test_catalog.py checks the two agree)
DATASET_NAMES: dict[str, tuple[str, ...]] = {"cifar10": ("test", "train", "dev", "fit")}


def register_dataset_prefix(prefix: str, shown: str) -> None:
    DATASET_PREFIXES[prefix] = shown


def check_dataset_spec(spec: str) -> str:
    """``spec`` if its prefix is known, else ValueError naming what is allowed."""
    prefix, _, rest = spec.partition(":")
    if prefix in DATASET_NAMES:
        if rest in DATASET_NAMES[prefix]:
            return spec
        allowed = ", ".join(f"{prefix}:{n}" for n in DATASET_NAMES[prefix])
        raise ValueError(f"unknown dataset {spec[:60]!r} (allowed: {allowed})")
    if prefix in DATASET_PREFIXES and (":" in spec) == (":" in DATASET_PREFIXES[prefix]):
        return spec
    raise ValueError(f"unknown dataset {spec[:60]!r} (allowed: {', '.join(DATASET_PREFIXES.values())})")
