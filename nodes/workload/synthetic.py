"""A deterministic synthetic labelled image set, the default workload.

Ten classes = five shapes x two fine textures. Shape survives heavy JPEG
quantisation, texture (1-2 pixel periods) does not, so lowering JPEG quality
really costs accuracy, as it does on natural images, while the set needs no
download and every image is a pure function of (seed, split, index).
"""

from __future__ import annotations

import numpy as np

SHAPES = ("disk", "square", "triangle", "cross", "ring")
TEXTURES = ("checker", "stripes")
CLASSES = tuple(f"{s}-{t}" for s in SHAPES for t in TEXTURES)
GENERATOR_VERSION = 1
_SPLITS = {"train": 1, "val": 2, "test": 3}


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - cx, y - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if shape == "disk":
        return dx * dx + dy * dy <= r * r
    if shape == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return (np.abs(u) <= r * 0.85) & (np.abs(v) <= r * 0.85)
    if shape == "cross":
        w = r * 0.38
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if shape == "triangle":
        # equilateral triangle pointing "up" in the rotated frame
        return (v <= r * 0.6) & (v >= -r + 1.73 * np.abs(u) * 0.95)
    raise ValueError(shape)


def _texture(texture: str, size: int, phase: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    if texture == "checker":
        t = ((x + y + phase) % 2).astype(np.float32)
    else:  # vertical or horizontal stripes of period 2 or 3 pixels
        period = int(rng.integers(2, 4))
        axis = x if rng.random() < 0.5 else y
        t = (((axis + phase) % period) < period / 2).astype(np.float32)
    return t * 2.0 - 1.0


def make_image(index: int, split: str = "test", seed: int = 0, size: int = 32) -> tuple[np.ndarray, int]:
    """Image ``index`` of ``split`` as (HxWx3 uint8 RGB, label)."""
    rng = np.random.default_rng([seed, _SPLITS.get(split, 9), index, GENERATOR_VERSION])
    label = int(rng.integers(0, len(CLASSES)))
    shape, texture = SHAPES[label // 2], TEXTURES[label % 2]
    scale = size / 32.0
    r = float(rng.uniform(8.0, 13.0)) * scale
    cx = size / 2 + float(rng.uniform(-4, 4)) * scale
    cy = size / 2 + float(rng.uniform(-4, 4)) * scale
    mask = _shape_mask(shape, size, cx, cy, r, float(rng.uniform(-0.4, 0.4)))
    # background: a smooth colour gradient
    bg0, bg1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    g = np.linspace(0, 1, size, dtype=np.float32)
    grad = g[None, :, None] if rng.random() < 0.5 else g[:, None, None]
    img = bg0 + (bg1 - bg0) * grad
    img = np.broadcast_to(img, (size, size, 3)).copy()
    # foreground colour clearly apart from the local background in luminance
    fg = rng.uniform(20, 235, 3)
    lum = lambda c: 0.299 * c[..., 0] + 0.587 * c[..., 1] + 0.114 * c[..., 2]  # noqa: E731
    if abs(lum(fg) - lum((bg0 + bg1) / 2)) < 50:
        fg = np.clip(255 - fg, 0, 255)
    amp = float(rng.uniform(22, 45))
    tex = _texture(texture, size, int(rng.integers(0, 2)), rng)
    fg_img = fg[None, None, :] + amp * tex[..., None]
    img[mask] = fg_img[mask]
    img += rng.normal(0, 4.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), label


class SyntheticDataset:
    """Indexable dataset of :func:`make_image`; ``len`` is fixed by the caller."""

    classes = CLASSES

    def __init__(self, n: int, split: str = "test", seed: int = 0, size: int = 32):
        self.n, self.split, self.seed, self.size = n, split, seed, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return make_image(i, self.split, self.seed, self.size)

    def describe(self) -> str:
        return f"synthetic(split={self.split}, seed={self.seed}, size={self.size}, n={self.n})"
