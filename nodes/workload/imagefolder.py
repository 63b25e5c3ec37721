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
