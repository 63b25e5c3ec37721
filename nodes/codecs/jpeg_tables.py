"""JPEG plumbing shared by the DNN-aware JPEG codecs (GRACE, AutoJPEG, AdaCompress).

Three things live here:

* **Pre-shared tables / abbreviated streams** (ITU-T T.81 Annex B.4/B.5).
  With custom tables a 32x32 JPEG carries ~600 bytes of header (three DQT,
  four DHT, APP0) for ~100-300 bytes of entropy-coded data. A codec
  configuration's tables are fixed, so they are shared once, as a
  *tables-only datastream* (SOI, APP0, DQT.., DHT.., EOI), and each image is
  sent as an *abbreviated* stream (SOI, SOF, [DHT], SOS, data, EOI). The edge
  splices the two back into the exact byte-for-byte original full stream and
  decodes it with any JPEG decoder. With ``optimize`` (per-image Huffman
  tables) the DHT segments stay in the image stream; only APP0/DQT are shared.
* **Custom colour transforms**: the RGB->YUV family of GRACE Eq. 1 / AutoJPEG
  Eq. 1, parameterised by (w_r, w_g, w_b) on the simplex. The encoder converts
  itself (one vectorised numpy pass, :func:`rgb_to_yuv8`) and hands libjpeg
  the planes as a "YCbCr" image so libjpeg does no conversion;
  the decoder asks libjpeg for raw YCbCr and applies the exact inverse.
* **The encode path** (:class:`JpegWriter`): everything that depends only on
  the configuration is set up once, and Pillow's C encoder is called directly
  (no ``Image.save``/``Image.frombuffer`` per image), byte for byte what
  :func:`encode_jpeg_reference` (the plain Pillow path) writes.
* **Quantisation tables verbatim**: Pillow's ``qtables`` (natural order,
  one table per component, clamped to 1..255 so the stream stays baseline),
  4:4:4 so every component keeps its own table at full resolution.

Only numpy and Pillow: this module runs on the client.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFile

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
M_SOF0, M_SOF2, M_DHT, M_DQT, M_SOS, M_APP0 = 0xC0, 0xC2, 0xC4, 0xDB, 0xDA, 0xE0
HEADER_MODES = ("full", "abbreviated")
HUFFMAN_MODES = ("auto", "optimized", "standard")


def optimize_for(huffman: str, headers: str) -> bool:
    """Per-image (optimised) Huffman tables? ``auto``: yes with full headers, no when tables are pre-shared.

    A 32x32 image's optimised DHT segments cost ~150 bytes, more than the bits they save, so
    abbreviated streams use libjpeg's standard tables, which are then pre-shared too.
    """
    if huffman == "auto":
        return headers == "full"
    return huffman == "optimized"

#: ITU-T T.81 Annex K tables (natural order), the base of libjpeg's quality scaling
STD_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.int64)
STD_CHROMINANCE = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99], np.int64)

BT601 = (0.299, 0.587, 0.114)


class JpegStreamError(ValueError):
    pass


def ijg_quality_tables(quality: int) -> np.ndarray:
    """libjpeg's tables for ``quality`` (3 x 64, natural order; Cb and Cr share)."""
    q = int(min(max(quality, 1), 100))
    scale = 5000 // q if q < 50 else 200 - 2 * q
    lum = np.clip((STD_LUMINANCE * scale + 50) // 100, 1, 255)
    chm = np.clip((STD_CHROMINANCE * scale + 50) // 100, 1, 255)
    return np.stack([lum, chm, chm])


def clamp_tables(tables) -> np.ndarray:
    """Round and clamp to baseline JPEG's 1..255; shape (C, 64) natural order."""
    t = np.rint(np.asarray(tables, np.float64)).reshape(-1, 64)
    return np.clip(t, 1, 255).astype(np.int64)


# ----------------------------------------------------------- segments ---

@dataclass(frozen=True)
class Segment:
    marker: int
    raw: bytes  # 0xFF, marker, length, payload


def _segments(data: bytes) -> tuple[list[Segment], int]:
    """Marker segments after SOI up to the first SOS or EOI, and that marker's offset."""
    if not data.startswith(SOI):
        raise JpegStreamError("not a JPEG stream (no SOI)")
    segs: list[Segment] = []
    i, n = 2, len(data)
    while i + 2 <= n:
        if data[i] != 0xFF:
            raise JpegStreamError(f"expected a marker at byte {i}")
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m in (M_SOS, 0xD9):
            return segs, i
        if m == 0x01 or 0xD0 <= m <= 0xD7:
            segs.append(Segment(m, data[i:i + 2]))
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2 or i + 2 + length > n:
            raise JpegStreamError(f"truncated segment 0x{m:02X} at byte {i}")
        segs.append(Segment(m, data[i:i + 2 + length]))
        i += 2 + length
    raise JpegStreamError("no SOS or EOI marker (truncated header)")


def parse_header(data: bytes) -> tuple[list[Segment], int]:
    """Marker segments after SOI up to (not including) the first SOS, and SOS's offset."""
    segs, end = _segments(data)
    if data[end + 1] != M_SOS:
        raise JpegStreamError("no SOS marker (a tables-only stream?)")
    return segs, end


def parse_tables(data: bytes) -> list[Segment]:
    """Segments of a tables-only stream (SOI, tables, EOI)."""
    segs, end = _segments(data)
    if data[end + 1] != 0xD9:
        raise JpegStreamError("a tables-only stream must not contain a scan")
    return segs


def shared_markers(optimize: bool) -> frozenset[int]:
    """Segments a configuration pre-shares: APP0 (JFIF), DQT, and DHT unless Huffman tables are per image."""
    return frozenset({M_APP0, M_DQT} if optimize else {M_APP0, M_DQT, M_DHT})


def split_stream(full: bytes, markers: frozenset[int]) -> tuple[bytes, bytes]:
    """Full stream -> (tables-only stream, abbreviated image stream)."""
    segs, sos = parse_header(full)
    shared = [s for s in segs if s.marker in markers]
    kept = [s for s in segs if s.marker not in markers]
    tables = SOI + b"".join(s.raw for s in shared) + EOI
    abbrev = SOI + b"".join(s.raw for s in kept) + full[sos:]
    return tables, abbrev


def join_stream(tables: bytes, abbrev: bytes) -> bytes:
    """Tables-only stream + abbreviated stream -> the full stream.

    APPn and DQT go right after SOI, DHT right before the first SOS, which is
    where libjpeg writes them, so ``join(split(x)) == x`` byte for byte.
    """
    tsegs = parse_tables(tables)
    asegs, sos = parse_header(abbrev)
    front = [s for s in tsegs if s.marker != M_DHT]
    dht = [s for s in tsegs if s.marker == M_DHT]
    return SOI + b"".join(s.raw for s in front) + b"".join(s.raw for s in asegs) + \
        b"".join(s.raw for s in dht) + abbrev[sos:]


def _sos_offset(data: bytes) -> int:
    """Offset of the first SOS marker, walking segment lengths (fast path; -1 if malformed)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return -1
        m = data[i + 1]
        if m == M_SOS:
            return i
        if m == 0xFF:
            i += 1
        elif m == 0x01 or 0xD0 <= m <= 0xD7:
            i += 2
        else:
            i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return -1


def header_bytes(data: bytes) -> int:
    """Bytes that are not entropy-coded data: everything up to the end of the SOS header, plus EOI."""
    sos = _sos_offset(data) if data.startswith(SOI) else -1
    if sos < 0:
        return len(data)
    seg_len = (data[sos + 2] << 8) | data[sos + 3]
    return min(len(data), sos + 2 + seg_len + (2 if data.endswith(EOI) else 0))


def dqt_tables(data: bytes) -> dict[int, np.ndarray]:
    """Quantisation tables in a stream: {table id: (64,) natural order}."""
    from hilbed.nodes.codecs.dct import ZIGZAG
    segs, _ = _segments(data)
    out: dict[int, np.ndarray] = {}
    for s in segs:
        if s.marker != M_DQT:
            continue
        p = s.raw[4:]
        while p:
            pq, tq = p[0] >> 4, p[0] & 15
            size = 128 if pq else 64
            vals = np.frombuffer(p[1:1 + size], ">u2" if pq else "u1").astype(np.int64)
            nat = np.empty(64, np.int64)
            nat[ZIGZAG] = vals
            out[tq] = nat
            p = p[1 + size:]
    return out


# ------------------------------------------------------ colour transform ---

@dataclass(frozen=True)
class ColourTransform:
    """RGB -> YUV with luma weights (w_r, w_g, w_b) on the simplex (GRACE/AutoJPEG Eq. 1).

    Y = w_r R + w_g G + w_b B, U = (B - Y) / (2 (1 - w_b)), V = (R - Y) / (2 (1 - w_r)),
    stored like JPEG's YCbCr: U and V offset by 128 and everything rounded to 8 bits.
    """

    wr: float
    wg: float
    wb: float

    def __post_init__(self):
        w = np.array([self.wr, self.wg, self.wb])
        if np.any(w < 0) or abs(w.sum() - 1) > 1e-6 or self.wr >= 1 or self.wb >= 1:
            raise ValueError(f"colour weights must be >= 0, sum to 1, w_r, w_b < 1: {tuple(w)}")

    @classmethod
    def of(cls, weights) -> "ColourTransform":
        w = np.asarray(weights, np.float64)
        w = w / w.sum()
        return cls(float(w[0]), float(w[1]), float(w[2]))

    @property
    def weights(self) -> tuple[float, float, float]:
        return (self.wr, self.wg, self.wb)

    def is_standard(self, tol: float = 1e-9) -> bool:
        return all(abs(a - b) <= tol for a, b in zip(self.weights, BT601))

    def matrix(self) -> np.ndarray:
        """3x3 Phi of AutoJPEG Eq. 1 (rows Y, U, V)."""
        wr, wg, wb = self.weights
        return np.array([
            [wr, wg, wb],
            [-0.5 * wr / (1 - wb), -0.5 * wg / (1 - wb), 0.5],
            [0.5, -0.5 * wg / (1 - wr), -0.5 * wb / (1 - wr)],
        ])

    def inverse_matrix(self) -> np.ndarray:
        return np.linalg.inv(self.matrix())

    def _pil_matrix(self) -> tuple:
        return _pil_matrix(self.weights)

    def forward(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB (H, W, 3) -> uint8 YUV (offset 128 on U, V): one vectorised numpy pass (:func:`rgb_to_yuv8`)."""
        return rgb_to_yuv8(rgb, self.weights)

    def forward_float(self, rgb: np.ndarray) -> np.ndarray:
        y = np.asarray(rgb, np.float64) @ self.matrix().T
        y[..., 1:] += 128.0
        return y

    def inverse(self, yuv: np.ndarray) -> np.ndarray:
        """uint8/float YUV -> uint8 RGB (uint8 input: in C through Pillow)."""
        if isinstance(yuv, np.ndarray) and yuv.dtype == np.uint8 and yuv.ndim == 3:
            im = Image.fromarray(np.ascontiguousarray(yuv), "RGB").convert("RGB", _pil_inverse(self.weights))
            return np.asarray(im)
        y = np.asarray(yuv, np.float64).copy()
        y[..., 1:] -= 128.0
        rgb = y @ self.inverse_matrix().T
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


_OFFSETS = np.array([0.5, 128.5, 128.5], np.float32)  # Y, U, V (+ 128) offsets; + 0.5 so that truncation rounds half up


@lru_cache(maxsize=64)
def _forward_f32(weights: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(Phi^T, offsets + 0.5) in float32, what :func:`rgb_to_yuv8` multiplies with."""
    m = ColourTransform(*weights).matrix()
    mt = np.ascontiguousarray(m.T, np.float32)
    mt.flags.writeable = False
    return mt, _OFFSETS


_work = threading.local()


def _work_buffers(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-thread float32 input/output and uint8 buffers for ``n`` pixels, reused from image to image, and the
    offsets tiled over ``n`` pixels (read-only).

    Fresh 0.6 MB arrays per 224 px image cost page faults that, on a loaded machine, took longer
    than the arithmetic (measured 4 ms instead of 0.15 ms per image).
    """
    b = getattr(_work, "b", None)
    if b is None or b[0].shape[0] != n:
        off = np.tile(_OFFSETS, n)
        off.flags.writeable = False
        b = (np.empty((n, 3), np.float32), np.empty((n, 3), np.float32), np.empty((n, 3), np.uint8), off)
        _work.b = b
    return b


def _rgb_to_yuv8_into(x: np.ndarray, weights: tuple[float, float, float],
                      _mt: np.ndarray | None = None) -> np.ndarray:
    """:func:`rgb_to_yuv8` into this thread's work buffer (valid until the thread's next call).

    ``_mt``: Phi^T as :func:`_forward_f32` gives it, when the caller has it at hand (saves the lookup).
    """
    if x.dtype != np.uint8:
        x = x.astype(np.uint8)
    n = x.shape[0] * x.shape[1]
    mt = _mt if _mt is not None else _forward_f32(tuple(float(v) for v in weights))[0]
    f, y, u, off = _work_buffers(n)
    np.copyto(f, x.reshape(n, 3), casting="unsafe")
    np.matmul(f, mt, out=y)
    # the offsets as one contiguous add (broadcasting a (3,) row over (N, 3) runs a slow per-row loop)
    flat = y.reshape(-1)
    np.add(flat, off, out=flat)
    np.clip(y, 0.0, 255.0, out=y)
    np.copyto(u, y, casting="unsafe")  # truncation toward zero, after the + 0.5: round half up
    return u.reshape(x.shape[0], x.shape[1], 3)


def rgb_to_yuv8(rgb: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 YUV of weights ``(w_r, w_g, w_b)``, U and V offset by 128.

    One float32 matrix multiply per image (``(H W, 3) @ Phi^T``), the offsets,
    a clip to 0..255 and truncation after adding 0.5, i.e. rounding half up: the
    arithmetic of Pillow's ``convert("RGB", matrix)`` (which the encoder used
    before), so the planes agree with it except, rarely, by one step where a
    float32 sum lands on a rounding tie.
    """
    return _rgb_to_yuv8_into(np.asarray(rgb), weights).copy()


def yuv8_image(yuv: np.ndarray) -> Image.Image:
    """uint8 (H, W, 3) YUV planes as a Pillow "YCbCr" image, which libjpeg then encodes without converting."""
    y = np.ascontiguousarray(yuv, np.uint8)
    return Image.frombuffer("YCbCr", (y.shape[1], y.shape[0]), y, "raw", "YCbCr", 0, 1)


@lru_cache(maxsize=64)
def _pil_matrix(weights: tuple[float, float, float]) -> tuple:
    """Pillow's 12-number affine matrix for ``convert("RGB", matrix)``: Phi plus the 128 offsets of U, V."""
    m = ColourTransform(*weights).matrix()
    off = (0.0, 128.0, 128.0)
    return tuple(float(v) for r in range(3) for v in (*m[r], off[r]))


@lru_cache(maxsize=64)
def _pil_inverse(weights: tuple[float, float, float]) -> tuple:
    """The inverse affine map (YUV with 128 offsets -> RGB) as Pillow's 12-number matrix."""
    inv = ColourTransform(*weights).inverse_matrix()
    off = -inv @ np.array([0.0, 128.0, 128.0])
    return tuple(float(v) for r in range(3) for v in (*inv[r], off[r]))


def project_simplex(v) -> np.ndarray:
    """Euclidean projection onto {w : w >= 0, sum w = 1} (sort-based, exact)."""
    v = np.asarray(v, np.float64).ravel()
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - css / k > 0)[0][-1]
    theta = css[rho] / (rho + 1)
    return np.maximum(v - theta, 0.0)


# ------------------------------------------------------ encode / decode ---

_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
_maxblock_lock = threading.Lock()


def _save_jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    try:
        im.save(buf, format="JPEG", **kw)
    except OSError:
        # libjpeg needs the whole optimised output in one buffer; very fine tables on
        # noisy, large images can outgrow Pillow's guess. Retry with a large buffer.
        with _maxblock_lock:
            prev = ImageFile.MAXBLOCK
            ImageFile.MAXBLOCK = max(prev, 8 * im.size[0] * im.size[1] + 65536)
            try:
                buf = io.BytesIO()
                im.save(buf, format="JPEG", **kw)
            finally:
                ImageFile.MAXBLOCK = prev
    return buf.getvalue()


def save_kwargs(tables=None, quality: int | None = None, optimize: bool = True, subsampling: str = "4:4:4") -> dict:
    """Pillow ``save`` arguments for one configuration (tables as validated int lists, natural order)."""
    kw: dict = {"optimize": optimize, "subsampling": _SUBSAMPLING[subsampling]}
    if tables is not None:
        kw["qtables"] = [[int(v) for v in t] for t in clamp_tables(tables)]
    else:
        kw["quality"] = int(quality if quality is not None else 75)
    return kw


def _to_image(image: np.ndarray, colour: ColourTransform | None) -> Image.Image:
    if colour is None or colour.is_standard():
        return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")  # libjpeg converts (BT.601)
    # one numpy pass RGB -> YUV, handed to libjpeg as YCbCr planes so it converts nothing
    return yuv8_image(_rgb_to_yuv8_into(np.asarray(image), colour.weights))  # frombuffer copies "YCbCr"


def encode_jpeg_reference(image: np.ndarray, tables=None, quality: int | None = None,
                          colour: ColourTransform | None = None, optimize: bool = True,
                          subsampling: str = "4:4:4") -> bytes:
    """:func:`encode_jpeg` the plain way (``Image.fromarray``/``frombuffer`` + ``Image.save``): the reference the
    fast path (:class:`JpegWriter`) is checked against, byte for byte."""
    return _save_jpeg(_to_image(image, colour), **save_kwargs(tables, quality, optimize, subsampling))


# Pillow's JPEG encoder, called directly. ``Image.save`` spends ~15-25 us of Python per call (plugin
# dispatch, re-validating the quantisation tables, a BytesIO that raises on ``fileno()``) and
# ``Image.frombuffer`` ~5-10 us more: at 32 px that is half of what libjpeg itself takes. The
# arguments below are what ``JpegImagePlugin._save`` hands the C encoder for :func:`save_kwargs`'s
# keys (the layout of Pillow 13); each configuration is checked once against ``Image.save`` (same
# bytes on a test image) and falls back to it where the two disagree or the call fails.

def _encoderconfig(kw: dict) -> tuple:
    qtables = kw.get("qtables")
    quality = -1 if qtables is not None else int(kw.get("quality", -1))
    qt = [list(t) for t in qtables] if qtables is not None else None
    # quality, progressive, smooth, optimize, keep_rgb, streamtype, dpi, subsampling,
    # restart_marker_blocks, restart_marker_rows, qtables, comment, extra, exif
    return (quality, False, 0, bool(kw["optimize"]), False, 0, [0, 0], int(kw["subsampling"]), 0, 0, qt, None,
            b"", b"")


def _bufsize(kw: dict, quality: int, w: int, h: int) -> int:
    """The output buffer ``JpegImagePlugin._save`` + ``ImageFile._save`` would use (optimize: the whole stream)."""
    if kw["optimize"]:
        size = 2 * w * h if quality >= 95 or quality == -1 else w * h
    else:
        size = 5
    return max(ImageFile.MAXBLOCK, size, w * 4)


def _core_image(mode: str, arr: np.ndarray, w: int, h: int):
    """(H, W, 3) contiguous uint8 -> a Pillow core image of ``mode`` (what ``Image.frombuffer`` does, minus
    its Python)."""
    im = Image.core.new(mode, (w, h))
    d = Image.core.raw_decoder(mode, mode, 0, 1)
    d.setimage(im, (0, 0, w, h))
    s = d.decode(arr)
    if s[0] >= 0 or s[1] != 0:
        raise ValueError("could not unpack the image data")
    return im


def _encode_core(im, mode: str, config: tuple, bufsize: int, w: int, h: int) -> bytes | None:
    """Pillow's C JPEG encoder on a core image; None if it reports an error (e.g. buffer too small)."""
    enc = Image.core.jpeg_encoder(mode, mode, *config)
    try:
        enc.setimage(im, (0, 0, w, h))
        out = []
        while True:
            _, err, data = enc.encode(bufsize)
            out.append(data)
            if err:
                break
    finally:
        enc.cleanup()
    return b"".join(out) if err > 0 else None


_CHECK = np.random.default_rng(20240618).integers(0, 256, (24, 40, 3), dtype=np.uint8)
_direct_checked: dict[tuple, bool] = {}


class JpegWriter:
    """One configuration's encoder (tables or quality, optimize, subsampling, colour transform), set up once:
    Pillow's encoder arguments, the colour matrix, which path to take. :meth:`encode` gives the bytes of
    :func:`encode_jpeg_reference` for the same arguments."""

    def __init__(self, kw: dict, colour: ColourTransform | None = None):
        self.kw = kw
        self.colour = None if colour is None or colour.is_standard() else colour
        self.mode = "RGB" if self.colour is None else "YCbCr"
        self._mt = _forward_f32(tuple(float(v) for v in self.colour.weights))[0] if self.colour else None
        self.config = _encoderconfig(kw)
        self.direct = self._check()

    def _check(self) -> bool:
        key = (self.mode, repr(self.config))
        ok = _direct_checked.get(key)
        if ok is None:
            try:
                ok = self._direct(_CHECK) == self._reference(_CHECK)
            except Exception:  # noqa: BLE001 - an internal Pillow API that moved: use Image.save
                ok = False
            if not ok and not any(v is False for v in _direct_checked.values()):
                # slower, never wrong: say so once per process (an encode-time benchmark should know)
                logging.getLogger(__name__).warning(
                    "JPEG encode: Pillow %s's C encoder does not match Image.save for %s; using Image.save "
                    "(same bytes, slower)", Image.__version__, self.mode)
            if len(_direct_checked) > 4096:  # fits build many configurations; the check is cheap to redo
                _direct_checked.clear()
            _direct_checked[key] = ok
        return ok

    def _planes(self, x: np.ndarray) -> np.ndarray:
        if self._mt is None:
            return np.ascontiguousarray(x, dtype=np.uint8)
        return _rgb_to_yuv8_into(x, self.colour.weights, self._mt)

    def _direct(self, x: np.ndarray) -> bytes | None:
        h, w = x.shape[0], x.shape[1]
        im = _core_image(self.mode, self._planes(x), w, h)
        return _encode_core(im, self.mode, self.config, _bufsize(self.kw, self.config[0], w, h), w, h)

    def _reference(self, x: np.ndarray) -> bytes:
        return _save_jpeg(_to_image(x, self.colour), **self.kw)

    def encode(self, image: np.ndarray) -> bytes:
        x = np.asarray(image)
        if self.direct and x.ndim == 3 and x.shape[2] == 3:
            try:
                data = self._direct(x)
            except (ValueError, OSError):
                data = None
            if data is not None:
                return data
        return self._reference(x)  # also where libjpeg needed a larger buffer (MAXBLOCK retry)


@lru_cache(maxsize=64)
def _writer(kw_key: tuple, weights: tuple | None) -> JpegWriter:
    return JpegWriter(dict(kw_key), ColourTransform(*weights) if weights else None)


def encode_jpeg(image: np.ndarray, tables=None, quality: int | None = None, colour: ColourTransform | None = None,
                optimize: bool = True, subsampling: str = "4:4:4") -> bytes:
    """One full baseline JPEG stream. ``tables``: (C, 64) natural order, used verbatim (clamped 1..255)."""
    kw = save_kwargs(tables, quality, optimize, subsampling)
    key = tuple((k, tuple(tuple(t) for t in v) if k == "qtables" else v) for k, v in sorted(kw.items()))
    return _writer(key, colour.weights if colour is not None else None).encode(image)


def decode_jpeg(data: bytes, colour: ColourTransform | None = None) -> np.ndarray | None:
    """Full stream -> uint8 RGB; a custom colour transform is inverted exactly."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if colour is None or colour.is_standard():
                return np.asarray(im.convert("RGB"))
            im.draft("YCbCr", None)
            if im.mode != "YCbCr":
                raise JpegStreamError(f"expected a 3-component YCbCr stream, got {im.mode}")
            im.load()
            planes = Image.frombuffer("RGB", im.size, im.tobytes(), "raw", "RGB", 0, 1)  # relabel, no conversion
            return np.asarray(planes.convert("RGB", _pil_inverse(colour.weights)))
    except (OSError, SyntaxError, ValueError):
        return None


_DUMMY = np.full((8, 8, 3), 128, np.uint8)


@dataclass
class JpegProfile:
    """One fixed JPEG configuration: tables (or libjpeg quality), colour transform, header mode.

    ``encode`` gives the bytes to send and how many of them are headers;
    ``decode`` takes those bytes back to RGB. In ``abbreviated`` mode the
    tables-only stream (:attr:`tables_stream`) is what both ends share.
    """

    tables: np.ndarray | None = None
    quality: int | None = None
    colour: ColourTransform | None = None
    optimize: bool = True
    subsampling: str = "4:4:4"
    headers: str = "full"
    _shared: bytes | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.headers not in HEADER_MODES:
            raise ValueError(f"headers must be one of {HEADER_MODES}")
        if self.tables is not None:
            self.tables = clamp_tables(self.tables)
        self._kw = save_kwargs(self.tables, self.quality, self.optimize, self.subsampling)
        self._writer = JpegWriter(self._kw, self.colour)

    @property
    def markers(self) -> frozenset[int]:
        return shared_markers(self.optimize)

    def _full(self, image: np.ndarray, optimize: bool | None = None) -> bytes:
        if optimize is None or optimize == self.optimize:
            return self._writer.encode(image)
        return encode_jpeg(image, self.tables, self.quality, self.colour, optimize, self.subsampling)

    @property
    def tables_stream(self) -> bytes:
        """The tables-only datastream of this configuration (deterministic, computed once)."""
        if self._shared is None:
            # standard Huffman tables come from a non-optimised encode; with optimize they are not shared
            full = self._full(_DUMMY, optimize=False)
            self._shared = split_stream(full, self.markers)[0]
        return self._shared

    @property
    def tables_id(self) -> str:
        return "jpegtables-" + hashlib.sha256(self.tables_stream).hexdigest()[:12]

    def encode(self, image: np.ndarray) -> tuple[bytes, int, int]:
        """-> (bytes to send, their header bytes, header bytes a full stream would have had)."""
        full = self._full(image)
        full_hdr = header_bytes(full)
        if self.headers == "full":
            return full, full_hdr, full_hdr
        shared, abbrev = split_stream(full, self.markers)
        if shared != self.tables_stream:
            raise JpegStreamError("encoder tables differ from the pre-shared tables-only stream")
        return abbrev, header_bytes(abbrev), full_hdr

    def to_full(self, data: bytes) -> bytes:
        return join_stream(self.tables_stream, data) if self.headers == "abbreviated" else data

    def decode(self, data: bytes) -> np.ndarray | None:
        try:
            full = self.to_full(data)
        except JpegStreamError:
            return None
        return decode_jpeg(full, self.colour)


# ------------------------------------------------- Huffman tables (T.81 C, F, K.2) ---
#
# Pre-sharing Huffman tables optimised on a fit set: libjpeg (through Pillow)
# cannot be handed Huffman tables, so the encoder lets libjpeg write its
# standard tables (fast, C) and re-codes the entropy-coded data with the
# shared tables here (pure Python: baseline sequential streams, no restart
# intervals). The decoder needs nothing new: the shared DHT is part of the
# tables-only stream, and the spliced full stream is a normal baseline JPEG.

M_SOF1, M_DRI = 0xC1, 0xDD


@dataclass(frozen=True)
class HuffTable:
    """One Huffman table as in a DHT segment: code counts per length 1..16 and the symbols in code order."""

    bits: tuple[int, ...]
    vals: tuple[int, ...]

    def codes(self) -> dict[int, tuple[int, int]]:
        """symbol -> (code, length), the canonical codes of T.81 Annex C."""
        out, code, k = {}, 0, 0
        for length in range(1, 17):
            for _ in range(self.bits[length - 1]):
                out[self.vals[k]] = (code, length)
                code += 1
                k += 1
            code <<= 1
        return out

    def lookup(self) -> list[tuple[int, int]]:
        """A 16-bit peek table: entry ``v`` is (symbol, length) of the code that prefixes ``v``, (-1, 0) if none."""
        table: list[tuple[int, int]] = [(-1, 0)] * 65536
        for sym, (code, length) in self.codes().items():
            lo = code << (16 - length)
            table[lo:lo + (1 << (16 - length))] = [(sym, length)] * (1 << (16 - length))
        return table


def parse_dht(raw: bytes) -> dict[tuple[int, int], HuffTable]:
    """One DHT segment (marker included) -> {(class 0=DC/1=AC, id): table}."""
    p, out = raw[4:], {}
    while p:
        tc, th = p[0] >> 4, p[0] & 15
        bits = tuple(p[1:17])
        n = sum(bits)
        out[(tc, th)] = HuffTable(bits, tuple(p[17:17 + n]))
        p = p[17 + n:]
    return out


def dht_segment(tables: dict[tuple[int, int], HuffTable]) -> bytes:
    """{(class, id): table} -> one DHT segment, in (class, id) order."""
    body = b"".join(bytes([tc << 4 | th]) + bytes(t.bits) + bytes(t.vals) for (tc, th), t in sorted(tables.items()))
    return bytes([0xFF, M_DHT]) + (len(body) + 2).to_bytes(2, "big") + body


def optimal_table(freq) -> HuffTable:
    """libjpeg's ``jpeg_gen_optimal_table`` (T.81 K.2-K.3): code lengths <= 16, the all-ones code reserved.

    Symbols with zero frequency get no code; an all-zero histogram gets a one-symbol table (symbol 0).
    """
    f = [int(v) for v in freq] + [0] * (257 - len(freq))
    f = f[:256] + [1]  # reserved pseudo-symbol 256: no real code is all ones
    if not any(f[:256]):
        f[0] = 1
    codesize = [0] * 257
    others = [-1] * 257
    while True:
        c1, v = -1, 1 << 62
        for i in range(257):
            if f[i] and f[i] <= v:
                v, c1 = f[i], i
        c2, v = -1, 1 << 62
        for i in range(257):
            if f[i] and f[i] <= v and i != c1:
                v, c2 = f[i], i
        if c2 < 0:
            break
        f[c1] += f[c2]
        f[c2] = 0
        codesize[c1] += 1
        while others[c1] >= 0:
            c1 = others[c1]
            codesize[c1] += 1
        others[c1] = c2
        codesize[c2] += 1
        while others[c2] >= 0:
            c2 = others[c2]
            codesize[c2] += 1
    bits = [0] * 65
    for i in range(257):
        if codesize[i]:
            bits[codesize[i]] += 1
    for i in range(64, 16, -1):
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the reserved code
    vals = [s for length in range(1, 65) for s in range(256) if codesize[s] == length]
    return HuffTable(tuple(bits[1:17]), tuple(vals))


@dataclass
class ScanSymbols:
    """The Huffman-coded symbols of one baseline scan, in stream order.

    ``syms``: (class, table id, symbol, extra bits value, extra bits length) per coded symbol.
    """

    syms: list[tuple[int, int, int, int, int]]
    tables: dict[tuple[int, int], HuffTable]

    def histograms(self) -> dict[tuple[int, int], np.ndarray]:
        out: dict[tuple[int, int], np.ndarray] = {}
        for tc, th, s, _, _ in self.syms:
            out.setdefault((tc, th), np.zeros(256, np.int64))[s] += 1
        return out


def _unstuff(data: bytes) -> bytes:
    return data.replace(b"\xff\x00", b"\xff")


def _scan_layout(full: bytes):
    segs, sos = parse_header(full)
    tables: dict[tuple[int, int], HuffTable] = {}
    comps, size = None, None
    for s in segs:
        if s.marker == M_DHT:
            tables.update(parse_dht(s.raw))
        elif s.marker in (M_SOF0, M_SOF1):
            p = s.raw[4:]
            size = (int.from_bytes(p[3:5], "big"), int.from_bytes(p[1:3], "big"))  # (W, H)
            comps = {p[6 + 3 * k]: (p[7 + 3 * k] >> 4, p[7 + 3 * k] & 15) for k in range(p[5])}
        elif s.marker == M_SOF2 or (0xC3 <= s.marker <= 0xCF and s.marker not in (M_DHT, 0xC8, 0xCC)):
            raise JpegStreamError("only baseline/extended sequential Huffman streams can be re-coded")
        elif s.marker == M_DRI and int.from_bytes(s.raw[4:6], "big"):
            raise JpegStreamError("restart intervals are not supported")
    if comps is None:
        raise JpegStreamError("no SOF0/SOF1 frame header")
    seg_len = int.from_bytes(full[sos + 2:sos + 4], "big")
    p = full[sos + 4:sos + 2 + seg_len]
    scan = [(p[1 + 2 * k], p[2 + 2 * k] >> 4, p[2 + 2 * k] & 15) for k in range(p[0])]
    data_start = sos + 2 + seg_len
    end = full.rfind(EOI)
    if end < data_start:
        raise JpegStreamError("no EOI after the scan")
    return tables, comps, size, scan, data_start, end


def _blocks_per_mcu(comps, size, scan) -> tuple[list[tuple[int, int, int]], int]:
    """[(dc table, ac table, component index)] per block of one MCU, and the number of MCUs."""
    w, h = size
    if len(scan) == 1:
        cid, td, ta = scan[0]
        hmax = max(c[0] for c in comps.values())
        vmax = max(c[1] for c in comps.values())
        hs, vs = comps[cid]
        bw = -(-(-(-w * hs // hmax)) // 8)
        bh = -(-(-(-h * vs // vmax)) // 8)
        return [(td, ta, 0)], bw * bh
    hmax = max(comps[c][0] for c, _, _ in scan)
    vmax = max(comps[c][1] for c, _, _ in scan)
    mcus = -(-w // (8 * hmax)) * -(-h // (8 * vmax))
    order = []
    for k, (cid, td, ta) in enumerate(scan):
        hs, vs = comps[cid]
        order += [(td, ta, k)] * (hs * vs)
    return order, mcus


def scan_symbols(full: bytes) -> ScanSymbols:
    """Huffman-decode a baseline stream's (single) scan into its symbols (pure Python)."""
    tables, comps, size, scan, start, end = _scan_layout(full)
    order, mcus = _blocks_per_mcu(comps, size, scan)
    data = _unstuff(full[start:end])
    nbits = 8 * len(data)
    bitstr = (bin(int.from_bytes(data, "big"))[2:].zfill(nbits) if data else "") + "1" * 32
    looks = {k: t.lookup() for k, t in tables.items()}
    pos = 0
    syms: list[tuple[int, int, int, int, int]] = []
    app = syms.append
    for _ in range(mcus):
        for td, ta, _k in order:
            dc, ac = looks[(0, td)], looks[(1, ta)]
            s, ln = dc[int(bitstr[pos:pos + 16], 2)]
            if ln == 0:
                raise JpegStreamError("bad DC code")
            pos += ln
            app((0, td, s, int(bitstr[pos:pos + s], 2) if s else 0, s))
            pos += s
            k = 1
            while k < 64:
                rs, ln = ac[int(bitstr[pos:pos + 16], 2)]
                if ln == 0:
                    raise JpegStreamError("bad AC code")
                pos += ln
                r, s = rs >> 4, rs & 15
                app((1, ta, rs, int(bitstr[pos:pos + s], 2) if s else 0, s))
                pos += s
                if s == 0:
                    if r != 15:
                        break
                    k += 16
                else:
                    k += r + 1
        if pos > nbits:
            raise JpegStreamError("scan data ends early")
    return ScanSymbols(syms, tables)


def encode_symbols(syms, tables: dict[tuple[int, int], HuffTable]) -> bytes:
    """Symbols -> entropy-coded bytes (1-padded, 0xFF stuffed) with ``tables``."""
    codes = {k: t.codes() for k, t in tables.items()}
    out = bytearray()
    acc, n = 0, 0
    for tc, th, s, v, ln in syms:
        code, cl = codes[(tc, th)][s]
        acc = (acc << (cl + ln)) | (code << ln) | v
        n += cl + ln
        if n >= 32:
            k = n // 8
            n -= 8 * k
            out += (acc >> n).to_bytes(k, "big")
            acc &= (1 << n) - 1
    if n:
        pad = (8 - n % 8) % 8
        acc = (acc << pad) | ((1 << pad) - 1)
        out += acc.to_bytes((n + pad) // 8, "big")
    return bytes(out).replace(b"\xff", b"\xff\x00")


def recode(full: bytes, tables: dict[tuple[int, int], HuffTable]) -> bytes:
    """A baseline stream re-coded with other Huffman tables: its DHT segments replaced, its scan re-coded."""
    ss = scan_symbols(full)
    for k in ss.tables:
        if k not in tables:
            raise JpegStreamError(f"no shared Huffman table for class {k[0]} id {k[1]}")
    segs, sos = parse_header(full)
    _, _, _, _, start, end = _scan_layout(full)
    front = b"".join(s.raw for s in segs if s.marker != M_DHT)
    used = {k: tables[k] for k in ss.tables}
    return SOI + front + dht_segment(used) + full[sos:start] + encode_symbols(ss.syms, used) + full[end:]


def fit_huffman(streams, min_count: int = 1) -> dict[tuple[int, int], HuffTable]:
    """Optimal tables for the symbols of a fit set's baseline streams (any Huffman tables in them).

    Every symbol a table may need gets a code: each possible DC category (0..11) and AC run/size
    symbol is counted at least ``min_count`` times, so an image unlike the fit set still encodes.
    """
    hist: dict[tuple[int, int], np.ndarray] = {}
    for full in streams:
        for k, h in scan_symbols(full).histograms().items():
            hist[k] = hist.get(k, 0) + h
    out = {}
    for (tc, th), h in hist.items():
        h = h.copy()
        if min_count:
            legal = np.zeros(256, bool)
            if tc == 0:
                legal[:12] = True
            else:
                legal[[r << 4 | s for r in range(16) for s in range(1, 11)]] = True
                legal[[0x00, 0xF0]] = True
            h[legal] = np.maximum(h[legal], min_count)
        out[(tc, th)] = optimal_table(h)
    return out


# --------------------------------------- shared Huffman tables: the fast path (numpy) ---
#
# What a codec with ``huffman: shared`` runs per image: libjpeg writes the stream with its standard
# tables, :func:`recode_fast` re-codes the scan with the configuration's shared tables. The decoder
# needs nothing new (the shared DHT is part of the tables-only stream). Same results as
# :func:`scan_symbols` / :func:`encode_symbols` / :func:`recode`, vectorised where numpy can: 16-bit
# peek windows at every bit position in one pass, cached per-table lookup arrays, and the bit packing
# of the re-coded symbols; only the walk from one code to the next stays a Python loop.

_POW16 = (1 << np.arange(15, -1, -1)).astype(np.int64)


@lru_cache(maxsize=256)
def _lookup_np(table: HuffTable) -> tuple[list[int], list[int]]:
    """(symbol, code length) for every 16-bit peek value, as Python lists (fastest to index in the loop)."""
    sym = np.full(65536, -1, np.int64)
    ln = np.zeros(65536, np.int64)
    for s, (code, length) in table.codes().items():
        lo = code << (16 - length)
        sym[lo:lo + (1 << (16 - length))] = s
        ln[lo:lo + (1 << (16 - length))] = length
    return sym.tolist(), ln.tolist()


@lru_cache(maxsize=256)
def _code_arrays(table: HuffTable) -> tuple[np.ndarray, np.ndarray]:
    """(code, length) per symbol 0..255 (length 0: no code)."""
    code = np.zeros(256, np.int64)
    ln = np.zeros(256, np.int64)
    for s, (c, n) in table.codes().items():
        code[s], ln[s] = c, n
    return code, ln


@lru_cache(maxsize=64)
def _scan_plan(header: bytes):
    """Parse a stream's header once per distinct header (a configuration's streams share it)."""
    tables, comps, size, scan, start, _ = _scan_layout(header + EOI)
    order, mcus = _blocks_per_mcu(comps, size, scan)
    return tables, order, mcus, start


def scan_symbols_fast(full: bytes) -> tuple[np.ndarray, dict[tuple[int, int], HuffTable]]:
    """:func:`scan_symbols` as an (N, 5) int array (class, table id, symbol, extra value, extra length) + tables."""
    sos = _sos_offset(full)
    if sos < 0:
        raise JpegStreamError("no SOS marker")
    seg_len = (full[sos + 2] << 8) | full[sos + 3]
    start = sos + 2 + seg_len
    tables, order, mcus, _ = _scan_plan(full[:start])
    end = full.rfind(EOI)
    if end < start:
        raise JpegStreamError("no EOI after the scan")
    data = np.frombuffer(_unstuff(full[start:end]), np.uint8)
    nbits = 8 * len(data)
    bits = np.concatenate([np.unpackbits(data), np.ones(48, np.uint8)]).astype(np.int64)
    win = (np.lib.stride_tricks.sliding_window_view(bits, 16) @ _POW16).tolist()
    looks = {k: _lookup_np(t) for k, t in tables.items()}
    plan = [(looks[(0, td)], looks[(1, ta)], td, ta) for td, ta, _k in order]
    out: list[tuple[int, int, int, int, int]] = []
    app = out.append
    pos = 0
    for _ in range(mcus):
        for (dsym, dlen), (asym, alen), td, ta in plan:
            w = win[pos]
            s, ln = dsym[w], dlen[w]
            if ln == 0:
                raise JpegStreamError("bad DC code")
            pos += ln
            app((0, td, s, (win[pos] >> (16 - s)) if s else 0, s))
            pos += s
            k = 1
            while k < 64:
                w = win[pos]
                rs, ln = asym[w], alen[w]
                if ln == 0:
                    raise JpegStreamError("bad AC code")
                pos += ln
                s = rs & 15
                app((1, ta, rs, (win[pos] >> (16 - s)) if s else 0, s))
                pos += s
                if s == 0:
                    if rs != 0xF0:
                        break
                    k += 16
                else:
                    k += (rs >> 4) + 1
        if pos > nbits:
            raise JpegStreamError("scan data ends early")
    return np.array(out, np.int64).reshape(-1, 5), tables


_BITPOS = np.arange(31, -1, -1, dtype=np.int64)


def encode_symbols_fast(syms: np.ndarray, tables: dict[tuple[int, int], HuffTable]) -> bytes:
    """:func:`encode_symbols` in numpy: every symbol's code and extra bits packed at once."""
    if not len(syms):
        return b""
    code = np.zeros(len(syms), np.int64)
    clen = np.zeros(len(syms), np.int64)
    for (tc, th), t in tables.items():
        sel = (syms[:, 0] == tc) & (syms[:, 1] == th)
        if sel.any():
            c, n = _code_arrays(t)
            code[sel], clen[sel] = c[syms[sel, 2]], n[syms[sel, 2]]
    if np.any(clen == 0):
        raise JpegStreamError("a symbol has no code in the shared Huffman tables")
    ln = syms[:, 4]
    val = (code << ln) | syms[:, 3]
    total = clen + ln  # <= 16 + 11 bits
    shift = total[:, None] - 32 + _BITPOS[None, :]  # bit j of 32, msb first, aligned to the right end
    keep = shift >= 0
    bits = ((val[:, None] >> np.where(keep, shift, 0)) & 1)[np.broadcast_to(keep, shift.shape)]
    pad = (-len(bits)) % 8
    if pad:
        bits = np.concatenate([bits, np.ones(pad, np.int64)])
    return np.packbits(bits.astype(np.uint8)).tobytes().replace(b"\xff", b"\xff\x00")


def recode_fast(full: bytes, tables: dict[tuple[int, int], HuffTable]) -> bytes:
    """:func:`recode`, byte for byte, with :func:`scan_symbols_fast` / :func:`encode_symbols_fast`."""
    syms, own = scan_symbols_fast(full)
    for k in own:
        if k not in tables:
            raise JpegStreamError(f"no shared Huffman table for class {k[0]} id {k[1]}")
    used = {k: tables[k] for k in own}
    return _recoded_header(full, used) + encode_symbols_fast(syms, used) + EOI


def _recoded_header(full: bytes, used: dict[tuple[int, int], HuffTable]) -> bytes:
    sos = _sos_offset(full)
    seg_len = (full[sos + 2] << 8) | full[sos + 3]
    return _recoded_header_cached(full[:sos + 2 + seg_len], tuple(sorted(used.items())))


@lru_cache(maxsize=64)
def _recoded_header_cached(header: bytes, used: tuple) -> bytes:
    segs, sos = parse_header(header + EOI)
    front = b"".join(s.raw for s in segs if s.marker != M_DHT)
    return SOI + front + dht_segment(dict(used)) + header[sos:]


def huffman_to_json(tables: dict[tuple[int, int], HuffTable]) -> list:
    return [[tc, th, list(t.bits), list(t.vals)] for (tc, th), t in sorted(tables.items())]


def huffman_from_json(doc) -> dict[tuple[int, int], HuffTable]:
    return {(int(tc), int(th)): HuffTable(tuple(int(b) for b in bits), tuple(int(v) for v in vals))
            for tc, th, bits, vals in doc}


@dataclass
class SharedHuffmanProfile(JpegProfile):
    """A :class:`JpegProfile` whose Huffman tables are fixed ones (fitted on a fit set) instead of libjpeg's.

    libjpeg writes standard tables (``optimize`` False), :func:`recode_fast` re-codes the scan with
    ``huffman``; abbreviated, the shared DHT goes into the tables-only stream with the DQT. The decoder is
    :class:`JpegProfile`'s: the spliced (or full) stream is a plain baseline JPEG.
    """

    huffman: dict | None = None

    def __post_init__(self):
        self.optimize = False
        super().__post_init__()
        if not self.huffman:
            raise ValueError("SharedHuffmanProfile needs Huffman tables")

    def _full(self, image: np.ndarray, optimize: bool | None = None) -> bytes:
        return recode_fast(super()._full(image, False), self.huffman)

    @property
    def tables_stream(self) -> bytes:
        if self._shared is None:
            self._shared = split_stream(self._full(_DUMMY), self.markers)[0]
        return self._shared

    def standard_stream(self, image: np.ndarray) -> bytes:
        """The stream before re-coding (libjpeg's standard tables), e.g. to fit tables on."""
        return JpegProfile._full(self, image, False)
