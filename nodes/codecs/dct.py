"""Block DCT / IDCT (8x8, JPEG's orthonormal DCT-II) in numpy and torch.

JPEG's forward DCT, F(u,v) = 1/4 C(u) C(v) sum f(x,y) cos(..) cos(..), is the
orthonormal 2-D DCT-II, so coefficients computed here on level-shifted pixels
(0..255 minus 128) are in the same units as libjpeg's and can be divided by a
quantisation table directly. Planes whose sides are not multiples of 8 are
padded by repeating the last row/column, as libjpeg does.

Layout: a plane (..., H, W) becomes coefficients (..., H/8, W/8, 8, 8) with the
last two axes (u = vertical frequency, v = horizontal frequency), i.e. natural
(row-major) order, the order Pillow's ``qtables`` take.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

BLOCK = 8

#: zig-zag scan: ZIGZAG[k] = natural (row-major) index of the k-th coefficient
ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
], dtype=np.int64)


@lru_cache(maxsize=8)
def dct_matrix(n: int = BLOCK) -> np.ndarray:
    """Orthonormal DCT-II matrix C (n x n): coefficients = C @ block @ C.T."""
    c = np.empty((n, n), np.float64)
    for u in range(n):
        a = math.sqrt(1.0 / n) if u == 0 else math.sqrt(2.0 / n)
        for x in range(n):
            c[u, x] = a * math.cos((2 * x + 1) * u * math.pi / (2 * n))
    return c


def padded_size(h: int, w: int, n: int = BLOCK) -> tuple[int, int]:
    return (h + n - 1) // n * n, (w + n - 1) // n * n


# ------------------------------------------------------------------ numpy ---

def pad_plane(x: np.ndarray, n: int = BLOCK) -> np.ndarray:
    """Pad the last two axes to multiples of n by edge replication."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w, n)
    if (ph, pw) == (h, w):
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(0, ph - h), (0, pw - w)]
    return np.pad(x, pad, mode="edge")


def block_dct(x: np.ndarray, n: int = BLOCK) -> np.ndarray:
    """(..., H, W) -> (..., H/n, W/n, n, n) orthonormal block DCT (float64)."""
    x = pad_plane(np.asarray(x, np.float64), n)
    *lead, h, w = x.shape
    b = x.reshape(*lead, h // n, n, w // n, n).swapaxes(-3, -2)  # (..., hb, wb, n, n)
    c = dct_matrix(n)
    return c @ b @ c.T


def block_idct(s: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Inverse of :func:`block_dct`; ``size`` crops the padding away."""
    s = np.asarray(s, np.float64)
    n = s.shape[-1]
    c = dct_matrix(n)
    b = c.T @ s @ c
    *lead, hb, wb, _, _ = b.shape
    x = b.swapaxes(-3, -2).reshape(*lead, hb * n, wb * n)
    if size is not None:
        x = x[..., :size[0], :size[1]]
    return x


# ------------------------------------------------------------------ torch ---

def _torch():
    import torch
    return torch


def dct_matrix_t(n: int = BLOCK, dtype=None, device=None):
    torch = _torch()
    return torch.as_tensor(dct_matrix(n), dtype=dtype or torch.float32, device=device)


def pad_plane_t(x, n: int = BLOCK):
    """Torch (N, C, H, W) padded to multiples of n by edge replication."""
    import torch.nn.functional as F
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w, n)
    if (ph, pw) == (h, w):
        return x
    return F.pad(x, (0, pw - w, 0, ph - h), mode="replicate")


def block_dct_t(x, n: int = BLOCK):
    """Differentiable (N, C, H, W) -> (N, C, H/n, W/n, n, n)."""
    x = pad_plane_t(x, n)
    nb, ch, h, w = x.shape
    b = x.reshape(nb, ch, h // n, n, w // n, n).transpose(3, 4)
    c = dct_matrix_t(n, x.dtype, x.device)
    return c @ b @ c.T


def block_idct_t(s, size: tuple[int, int] | None = None):
    """Differentiable inverse of :func:`block_dct_t`."""
    n = s.shape[-1]
    c = dct_matrix_t(n, s.dtype, s.device)
    b = c.T @ s @ c
    nb, ch, hb, wb, _, _ = b.shape
    x = b.transpose(3, 4).reshape(nb, ch, hb * n, wb * n)
    if size is not None:
        x = x[..., :size[0], :size[1]]
    return x
