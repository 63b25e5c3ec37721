"""Datasets and target models. ``open_dataset`` is torch-free (clients use it)."""

from __future__ import annotations

from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import SyntheticDataset


class _Endless:
    """Synthetic images are a pure function of their index: any index is valid."""

    def __init__(self, ds: SyntheticDataset):
        self.ds = ds
        self.classes = ds.classes

    def __getitem__(self, i: int):
        from .synthetic import make_image
        return make_image(i, self.ds.split, self.ds.seed, self.ds.size)

    def describe(self) -> str:
        return self.ds.describe().replace(f", n={self.ds.n}", "")


class _Shuffled:
    """An ImageFolder in a seeded order: files are sorted by class, so index k..k+n would be one class."""

    def __init__(self, ds, seed: int):
        import numpy as np
        self.ds = ds
        self.classes = ds.classes
        self.order = np.random.default_rng(seed).permutation(len(ds))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.ds[int(self.order[i % len(self.order)])]

    def describe(self) -> str:
        return self.ds.describe() + f" (seeded order {self.order[:3].tolist()}...)"


def open_dataset(spec: str, size: int = 32, seed: int = 0, split: str = "test"):
    """A dataset by spec, in a seeded order: ``synthetic``, ``imagefolder:PATH`` or a catalog name.

    Catalog names (``cifar10:test``, ...) are read from the data root or the
    mirror (:mod:`hilbed.nodes.workload.catalog`); a missing one raises
    ``DatasetMissing`` whose one-line message names the fetch command.
    """
    if spec == "synthetic":
        return _Endless(SyntheticDataset(0, split, seed, size))
    if spec.startswith("imagefolder:"):
        from .imagefolder import ImageFolder
        return _Shuffled(ImageFolder(spec.split(":", 1)[1], size), seed)
    from . import catalog
    e = catalog.CATALOG.get(spec)
    if e is None or isinstance(e, catalog.WeightsEntry):
        allowed = ", ".join(["synthetic", "imagefolder:PATH", *catalog.dataset_names()])
        raise ValueError(f"unknown dataset {spec!r} (allowed: {allowed})")
    where = catalog.dataset_path(spec)
    if isinstance(e, catalog.CifarEntry):
        from .imagefolder import CifarBatches
        return _Shuffled(CifarBatches(where, [f for f, _ in e.files], size, spec), seed)
    from .imagefolder import ImageFolder
    return _Shuffled(ImageFolder(where, size), seed)


__all__ = ["open_dataset", "SyntheticDataset", "SYNTHETIC_CLASSES"]
