"""ImageFolder datasets (``root/<class>/<image>``), e.g. CIFAR-10 as JPEG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


class ImageFolder:
    """Sorted classes and files; images come back as HxWx3 uint8 at ``size`` (centre crop + resize)."""

    def __init__(self, root: str | Path, size: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: not a directory (expected root/<class>/<image>)")
        self.classes = tuple(sorted(p.name for p in self.root.iterdir() if p.is_dir()))
        if not self.classes:
            raise ValueError(f"{self.root}: no class directories")
        self.items: list[tuple[Path, int]] = []
        for ci, c in enumerate(self.classes):
            for f in sorted((self.root / c).iterdir()):
                if f.suffix.lower() in EXTS:
                    self.items.append((f, ci))
        if not self.items:
            raise ValueError(f"{self.root}: no images")
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.items[i % len(self.items)]
        with Image.open(path) as im:
            im = im.convert("RGB")
            if self.size and im.size != (self.size, self.size):
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                im = im.resize((self.size, self.size), Image.BICUBIC)
            return np.asarray(im), label

    def describe(self) -> str:
        return f"imagefolder({self.root}, {len(self.items)} images, {len(self.classes)} classes)"


class _NumpyOnly:
    """Unpickler for CIFAR's python batches: dicts, lists and numpy arrays, nothing else can be built."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: bytes in protocol 2

    @classmethod
    def load(cls, path: Path):
        import pickle

        class U(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) not in cls.ALLOWED:
                    raise pickle.UnpicklingError(f"{path}: refusing to load {module}.{name}")
                if module.startswith("numpy") and name == "_reconstruct":
                    from numpy._core.multiarray import _reconstruct
                    return _reconstruct
                if module == "_codecs":
                    import codecs
                    return codecs.encode
                return np.ndarray if name == "ndarray" else np.dtype

        with open(path, "rb") as fh:
            return U(fh, encoding="latin1").load()


class CifarBatches:
    """CIFAR-10's python version (``data_batch_*``/``test_batch`` + ``batches.meta``), read with numpy only.

    Clients open datasets without torch; torchvision's ``CIFAR10`` reads the
    same files the same way (rows of 3072 bytes, R then G then B planes).
    """

    def __init__(self, folder: str | Path, files: list[str], size: int | None = None, name: str = "cifar10"):
        self.root = Path(folder)
        xs, ys = [], []
        for f in files:
            d = _NumpyOnly.load(self.root / f)
            xs.append(np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.extend(int(v) for v in d["labels"])
        self.x = np.ascontiguousarray(np.concatenate(xs))
        self.y = np.asarray(ys, np.int64)
        self.classes = tuple(_NumpyOnly.load(self.root / "batches.meta")["label_names"])
        self.size = size
        self.name = name

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        i %= len(self.y)
        img = self.x[i]
        if self.size and self.size != img.shape[0]:
            img = np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.BICUBIC))
        return img, int(self.y[i])

    def describe(self) -> str:
        return f"{self.name}({self.root}, {len(self.y)} images, {len(self.classes)} classes)"
