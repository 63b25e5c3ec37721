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
  itself and hands libjpeg a "YCbCr" image so libjpeg does no conversion;
  the decoder asks libjpeg for raw YCbCr and applies the exact inverse.
* **Quantisation tables verbatim**: Pillow's ``qtables`` (natural order,
  one table per component, clamped to 1..255 so the stream stays baseline),
  4:4:4 so every component keeps its own table at full resolution.

Only numpy and Pillow: this module runs on the client.
"""

from __future__ import annotations

import hashlib
import io
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
        """uint8 RGB (H, W, 3) -> uint8 YUV (offset 128 on U, V), in C through Pillow."""
        im = Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB").convert("RGB", self._pil_matrix())
        return np.asarray(im)

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
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    if colour is None or colour.is_standard():
        return im  # libjpeg converts with BT.601 itself
    # convert in C with the 3x4 matrix, then relabel the planes as YCbCr so libjpeg leaves them alone
    yuv = im.convert("RGB", colour._pil_matrix())
    return Image.frombuffer("YCbCr", yuv.size, yuv.tobytes(), "raw", "YCbCr", 0, 1)


def encode_jpeg(image: np.ndarray, tables=None, quality: int | None = None, colour: ColourTransform | None = None,
                optimize: bool = True, subsampling: str = "4:4:4", _kw: dict | None = None) -> bytes:
    """One full baseline JPEG stream. ``tables``: (C, 64) natural order, used verbatim (clamped 1..255)."""
    kw = _kw if _kw is not None else save_kwargs(tables, quality, optimize, subsampling)
    return _save_jpeg(_to_image(image, colour), **kw)


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

    @property
    def markers(self) -> frozenset[int]:
        return shared_markers(self.optimize)

    def _full(self, image: np.ndarray, optimize: bool | None = None) -> bytes:
        if optimize is None or optimize == self.optimize:
            return encode_jpeg(image, colour=self.colour, _kw=self._kw)
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
