"""PNC: progressive neural compression (Wang et al., "Progressive Neural
Compression for Adaptive Image Offloading under Timing Constraints").

An asymmetric autoencoder. The client runs a 2-layer convolutional encoder
(here in plain numpy, so a Raspberry Pi needs no torch); its M latent
channels are squashed to [0, 1], quantised to ``bits`` (6) bits and entropy
coded channel by channel with static per-channel canonical Huffman codes
learnt at fit time. Channels go out in importance order (channel 0 first) as
one bit stream cut into ``block_bytes`` (64) blocks, one chunk per block, so a
link that stops at the deadline cuts at block granularity. The edge decodes
every channel whose symbols all arrived, zeroes the rest and runs the 5-layer
decoder, which was trained for exactly that: stochastic tail-drop zeroes the
last L of M channels at every training step (L uniform), so early channels
carry the most information. Stage 1 trains for reconstruction, stage 2
distils the frozen target classifier (KL between its outputs on the original
and on the reconstruction), so accuracy rather than pixels is optimised.

Wire format (no header: the artifact fixes image size and latent shape):
``bits(ch0) | bits(ch1) | ... | zero padding to a byte``; each channel is
``h*w`` Huffman codewords in raster order. Only numpy is needed to encode;
decoding imports torch.
"""

from __future__ import annotations

import heapq
import io
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np

from .artifacts import Artifact, ArtifactStore
from .base import Codec, CodecParamsError, Encoded, Param

MAX_CODE_BITS = 16
KIND = "pnc"


# -------------------------------------------------------------- geometry ---

@dataclass(frozen=True)
class PncArch:
    """Shape of the autoencoder; fixed by the artifact."""

    size: int = 32          # input is size x size RGB
    stride: int = 4         # encoder down-sampling: 4 (CIFAR-like) or 8 (224 px inputs)
    enc_width: int = 32     # channels of the encoder's hidden layer
    channels: int = 16      # latent channels M (the unit of progressiveness)
    dec_width: int = 64     # widest decoder layer
    bits: int = 6           # quantisation of each latent value

    @property
    def latent_hw(self) -> int:
        return self.size // self.stride

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def conv1(self) -> tuple[int, int, int]:
        """(kernel, stride, padding) of the first encoder layer; the second is (3, 2, 1).

        kernel = stride + 1 (3x3/2 at 32 px, 5x5/4 at 224 px): overlapping, yet
        small enough that the Pi's im2col stays cheap.
        """
        s = self.stride // 2
        return s + 1, s, s // 2

    def check(self) -> PncArch:
        if self.stride not in (4, 8):
            raise ValueError(f"stride must be 4 or 8, got {self.stride}")
        if self.size % self.stride:
            raise ValueError(f"size {self.size} must be a multiple of the stride {self.stride}")
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be 2..8, got {self.bits}")
        return self


def default_arch(size: int) -> PncArch:
    """CIFAR-sized inputs: 8x8x16 latents; ImageNet-style 224 px: 28x28x10 (stride 8)."""
    if size <= 64:
        return PncArch(size=size, stride=4, enc_width=32, channels=16, dec_width=64)
    return PncArch(size=size, stride=8, enc_width=16, channels=10, dec_width=96)


# ------------------------------------------------- numpy encoder forward ---

def _gather_index(h: int, w: int, c: int, k: int, stride: int, pad: int) -> tuple[np.ndarray, int, int]:
    """im2col as one gather: indices into a padded HxWxC image, rows = output positions,
    columns in torch's (C, k, k) weight order."""
    wp = w + 2 * pad
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    oy, ox = np.meshgrid(np.arange(ho) * stride, np.arange(wo) * stride, indexing="ij")
    cc, ky, kx = np.meshgrid(np.arange(c), np.arange(k), np.arange(k), indexing="ij")
    idx = ((oy[..., None, None, None] + ky) * wp + (ox[..., None, None, None] + kx)) * c + cc
    return idx.reshape(ho * wo, c * k * k).astype(np.intp), ho, wo


_BLAS_LIMITED = False


def single_thread_blas() -> bool:
    """Make numpy's BLAS single-threaded (once per process; not if the user set OPENBLAS_NUM_THREADS).

    The encoder's matmuls are tiny; a multi-threaded OpenBLAS wakes its pool
    for each and, with numpy 1.x on a busy machine, runs 20x slower than one
    thread. The paper measures the encoder with one thread too.
    """
    global _BLAS_LIMITED
    if _BLAS_LIMITED or "OPENBLAS_NUM_THREADS" in os.environ:
        return _BLAS_LIMITED
    _BLAS_LIMITED = True
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        threadpool_limits(1, user_api="blas")
        return True
    import ctypes
    import glob
    base = os.path.dirname(os.path.dirname(np.__file__))
    for path in glob.glob(os.path.join(base, "numpy.libs", "*openblas*")) + glob.glob(os.path.join(base, "scipy_openblas*", "lib", "*.so")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                    "scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(1)
                return True
    return False


class NumpyEncoder:
    """PNC's client-side encoder: conv-ReLU-conv-sigmoid-quantise in numpy (float32, no torch).

    Each convolution is one gather (precomputed im2col indices) and one matmul.
    The input normalisation (x/255 - 0.5) * 4 is folded into the first layer,
    whose padding is the raw value 127.5 that normalises to zero.
    """

    def __init__(self, arch: PncArch, weights: dict[str, np.ndarray]):
        self.arch = arch
        k1, s1, p1 = arch.conv1()
        w1, b1 = weights["encoder.conv1.weight"].astype(np.float64), weights["encoder.conv1.bias"].astype(np.float64)
        w2, b2 = weights["encoder.conv2.weight"], weights["encoder.conv2.bias"]
        self.w1 = np.ascontiguousarray((w1 * (4.0 / 255.0)).reshape(w1.shape[0], -1).T, np.float32)
        self.b1 = (b1 - 2.0 * w1.sum(axis=(1, 2, 3))).astype(np.float32)
        self.w2 = np.ascontiguousarray(w2.reshape(w2.shape[0], -1).T, np.float32)
        self.b2 = b2.astype(np.float32)
        n = arch.size
        self.p1 = p1
        self.idx1, h1, w1_ = _gather_index(n, n, 3, k1, s1, p1)
        self.h1 = h1
        self.idx2, _, _ = _gather_index(h1, w1_, arch.enc_width, 3, 2, 1)
        self.pad0 = np.full((n + 2 * p1, n + 2 * p1, 3), 127.5, np.float32)
        self.pad1 = np.zeros((h1 + 2, w1_ + 2, arch.enc_width), np.float32)

    def symbols(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> (M, h*w) uint8 symbols in 0..2^bits-1."""
        if not _BLAS_LIMITED:
            single_thread_blas()
        p, n = self.p1, self.arch.size
        x = self.pad0.copy()
        x[p:p + n, p:p + n] = image
        h = x.ravel()[self.idx1] @ self.w1
        h += self.b1
        np.maximum(h, 0, out=h)
        y = self.pad1.copy()
        y[1:1 + self.h1, 1:1 + self.h1] = h.reshape(self.h1, self.h1, -1)
        z = y.ravel()[self.idx2] @ self.w2
        z += self.b2
        q = np.rint(self.arch.levels / (1.0 + np.exp(-z)))
        return np.ascontiguousarray(q.T, dtype=np.uint8)


# ------------------------------------------------ canonical Huffman codes ---

def huffman_lengths(freq: np.ndarray, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Code lengths of a Huffman code for ``freq`` (every symbol gets a code), at most ``max_bits`` long.

    Rare symbols are smoothed towards uniform until the longest code fits.
    """
    f = np.asarray(freq, np.float64)
    k = len(f)
    if k == 1:
        return np.ones(1, np.uint8)
    floor = 0.5
    while True:
        w = f + floor
        heap = [(float(w[i]), i, [i]) for i in range(k)]
        heapq.heapify(heap)
        lengths = np.zeros(k, np.int64)
        tie = k
        while len(heap) > 1:
            wa, _, a = heapq.heappop(heap)
            wb, _, b = heapq.heappop(heap)
            lengths[a] += 1
            lengths[b] += 1
            heapq.heappush(heap, (wa + wb, tie, a + b))
            tie += 1
        if lengths.max() <= max_bits:
            return lengths.astype(np.uint8)
        floor = max(floor * 4, f.sum() * 2.0 ** -max_bits)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values (MSB first) for code ``lengths`` (shorter codes first, then by symbol)."""
    lengths = np.asarray(lengths, np.int64)
    order = np.lexsort((np.arange(len(lengths)), lengths))
    codes = np.zeros(len(lengths), np.uint32)
    code, prev = 0, int(lengths[order[0]])
    for sym in order:
        ln = int(lengths[sym])
        code <<= ln - prev
        codes[sym] = code
        code += 1
        prev = ln
    return codes


class ChannelCoder:
    """Static per-channel Huffman coding of (M, n) symbol arrays into one bit stream."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = np.asarray(lengths, np.uint8)  # (M, K)
        m = self.lengths.shape[0]
        codes = np.stack([canonical_codes(self.lengths[c]) for c in range(m)])
        # codes left-aligned in MAX_CODE_BITS bits, ready to be expanded bit by bit
        self.aligned = (codes.astype(np.uint32) << (MAX_CODE_BITS - self.lengths.astype(np.uint32))).astype(np.uint32)
        self.aligned_be = self.aligned.astype(">u2")
        self._masks = np.arange(MAX_CODE_BITS)[None, :] < np.arange(MAX_CODE_BITS + 1)[:, None]  # [len] -> bit mask
        self._rows = np.arange(m)[:, None]
        self._codes = codes
        self._tables: list[tuple[bytes, bytes]] | None = None
        self._lock = threading.Lock()

    def encode(self, symbols: np.ndarray) -> tuple[bytes, np.ndarray]:
        """(M', n) symbols of the first M' channels -> (bytes, cumulative bit count after each channel)."""
        m, n = symbols.shape
        rows = self._rows[:m]
        lens = self.lengths[rows, symbols]                        # (M', n)
        words = self.aligned_be[rows, symbols]                    # (M', n) big-endian, left-aligned
        bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8)).reshape(m, n, MAX_CODE_BITS)
        stream = np.packbits(bits[self._masks[lens]])
        return stream.tobytes(), np.cumsum(lens.sum(1, dtype=np.int64))

    def channel_bits(self, symbols: np.ndarray) -> np.ndarray:
        """Bits of each channel of a (N, M, n) batch of symbol arrays -> (N, M)."""
        m = symbols.shape[1]
        return self.lengths[np.arange(m)[None, :, None], symbols].sum(2, dtype=np.int64)

    def tables(self) -> list[tuple[bytes, bytes]]:
        """Per channel, 2^16-entry lookup tables (symbol, length) indexed by the next 16 bits."""
        with self._lock:
            if self._tables is None:
                out = []
                for c in range(self.lengths.shape[0]):
                    sym = np.zeros(1 << MAX_CODE_BITS, np.uint8)
                    ln = np.zeros(1 << MAX_CODE_BITS, np.uint8)
                    for s, (code, l) in enumerate(zip(self._codes[c], self.lengths[c])):
                        lo = int(code) << (MAX_CODE_BITS - int(l))
                        hi = (int(code) + 1) << (MAX_CODE_BITS - int(l))
                        sym[lo:hi] = s
                        ln[lo:hi] = l
                    out.append((sym.tobytes(), ln.tobytes()))
                self._tables = out
            return self._tables

    def decode(self, data: bytes, n: int, max_channels: int) -> np.ndarray:
        """Symbols of every channel whose ``n`` codewords lie wholly inside ``data`` -> (k, n) uint8."""
        if not data:
            return np.zeros((0, n), np.uint8)
        avail = 8 * len(data)
        bits = np.unpackbits(np.frombuffer(data, np.uint8))
        bits = np.concatenate([bits, np.zeros(MAX_CODE_BITS, np.uint8)])
        weights = (1 << np.arange(MAX_CODE_BITS - 1, -1, -1)).astype(np.int64)
        win = (np.lib.stride_tricks.sliding_window_view(bits, MAX_CODE_BITS)[:avail] @ weights).tolist()
        tables = self.tables()
        out: list[list[int]] = []
        pos = 0
        for c in range(max_channels):
            st, lt = tables[c]
            syms = []
            for _ in range(n):
                if pos >= avail:
                    break
                v = win[pos]
                syms.append(st[v])
                pos += lt[v]
            if len(syms) < n or pos > avail:
                break
            out.append(syms)
        return np.array(out, np.uint8).reshape(len(out), n)


# ------------------------------------------------------------- artifact ---

class PncModel:
    """A fitted PNC artifact: the numpy encoder, the channel coder, the decoder on demand."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.arch = PncArch(**artifact.meta["arch"]).check()
        with np.load(io.BytesIO(artifact.read_bytes("weights.npz")), allow_pickle=False) as z:
            self.weights = {k: z[k] for k in z.files}
        with np.load(io.BytesIO(artifact.read_bytes("huffman.npz")), allow_pickle=False) as z:
            self.coder = ChannelCoder(z["lengths"])
        self.encoder = NumpyEncoder(self.arch, self.weights)
        self._decoder = None
        self._device = None
        self._lock = threading.Lock()

    def decoder(self):
        """The torch decoder (built on first use; CUDA when present)."""
        with self._lock:
            if self._decoder is None:
                import torch

                from .neural_common import load_state
                _, dec = build_modules(self.arch)
                load_state(dec, self.weights, prefix="decoder.")
                self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
                self._decoder = dec.to(self._device).eval()
            return self._decoder

    def pixels(self, symbols: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """(N, M, h*w) symbols with the first keep[i] channels valid -> (N, H, W, 3) uint8."""
        import torch
        dec = self.decoder()
        a = self.arch
        n = symbols.shape[0]
        y = torch.from_numpy(symbols.astype(np.float32) / a.levels).view(n, a.channels, a.latent_hw, a.latent_hw)
        mask = (torch.arange(a.channels).view(1, -1) < torch.as_tensor(keep).view(-1, 1)).float()
        with torch.no_grad():
            out = dec((y * mask[:, :, None, None]).to(self._device))
        return (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


_MODELS: dict[tuple[str, str], PncModel] = {}
_MODELS_LOCK = threading.Lock()


def load_pnc(artifact_id: str, store: ArtifactStore | None = None) -> PncModel:
    store = store or ArtifactStore()
    key = (str(store.root), artifact_id)
    with _MODELS_LOCK:
        m = _MODELS.get(key)
        if m is None:
            m = _MODELS[key] = PncModel(store.get(artifact_id))
        return m


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image, np.uint8)).resize((size, size), Image.BICUBIC))


class PncCodec(Codec):
    """Progressive neural compression; chunks are ``block_bytes`` blocks of the channel-ordered stream."""

    name = "pnc"
    progressive = True
    client_requires = ("numpy",)  # the encoder is numpy; the edge's decoder needs torch
    params_spec: ClassVar[dict[str, Param]] = {
        "artifact": Param(str, "", doc="fitted model: an id from `hilbed fit pnc` (pnc-<hash>); empty: the "
                                       "artifact for fit_dataset/fit_model/fit_preset, fitted on first use"),
        "block_bytes": Param(int, 64, 8, 65536, doc="bytes per block (= chunk); the paper sends 64-byte blocks"),
        "max_channels": Param(int, 0, 0, 4096, doc="send at most this many latent channels (0 = all)"),
        "fit_dataset": Param(str, "synthetic", doc="auto-fit only: training images (as `hilbed fit --dataset`)"),
        "fit_model": Param(str, "synthetic-cnn", doc="auto-fit only: the target model (as `hilbed fit --model`)"),
        "fit_preset": Param(str, "small", choices=("tiny", "small", "medium", "full"),
                            doc="auto-fit only: training preset"),
        "fit_size": Param(int, 32, 8, 1024, doc="auto-fit only: input resolution"),
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        # Load (or auto-fit) now, not at the first image: a client builds its codec
        # before the stream starts, so loading never eats into a deadline.
        self._model = load_pnc(self.artifact_id)
        self._n_channels = min(self._model.arch.channels, self.params["max_channels"] or self._model.arch.channels)
        self._model.encoder.symbols(np.zeros((self._model.arch.size,) * 2 + (3,), np.uint8))

    @classmethod
    def validate(cls, params: dict[str, Any]) -> dict[str, Any]:
        out = super().validate(params)
        if out["artifact"] and not out["artifact"].startswith(KIND + "-"):
            raise CodecParamsError("artifact", f"not a pnc artifact id: {out['artifact']!r}", "pnc-<hash> from `hilbed fit pnc`")
        return out

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> None:
        """Make sure the artifact exists before any stream starts (fits on first use)."""
        cls(**params)

    @property
    def input_size(self) -> int:
        """The image side the artifact was fitted for (other sizes are resized to it)."""
        return self.model.arch.size

    @property
    def artifact_id(self) -> str:
        """The fitted model's id; with no ``artifact`` param, the auto-fitted one (fitting it now if needed)."""
        aid = self.params["artifact"] or getattr(self, "_auto_id", "")
        if not aid:
            p = self.params
            aid = self._auto_id = auto_artifact(p["fit_dataset"], p["fit_model"], p["fit_preset"], p["fit_size"]).id
        return aid

    @property
    def model(self) -> PncModel:
        return self._model

    def encode(self, image: np.ndarray) -> Encoded:
        model = self._model
        sym = model.encoder.symbols(_resize(image, model.arch.size))[: self._n_channels]
        data, cum_bits = model.coder.encode(sym)
        b = self.params["block_bytes"]
        chunks = [data[i:i + b] for i in range(0, len(data), b)] or [b""]
        return Encoded(chunks, header_bytes=0, meta={"channels": int(sym.shape[0]), "artifact": model.artifact.id,
                                                       "channel_end_bits": cum_bits.tolist()})

    def decode_symbols(self, chunks: list[bytes]) -> np.ndarray:
        """Symbols of the channels complete in the received prefix -> (k, h*w)."""
        model = self._model
        return model.coder.decode(b"".join(chunks), model.arch.latent_hw ** 2, self._n_channels)

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        sym = self.decode_symbols(chunks)
        k = sym.shape[0]
        if k == 0:
            return None  # not even the most important channel arrived: a miss
        a = self.model.arch
        full = np.zeros((1, a.channels, a.latent_hw ** 2), np.uint8)
        full[0, :k] = sym
        return self.model.pixels(full, np.array([k]))[0]

    def fit(self, dataset: Any, model: Any, **params: Any) -> Artifact:
        """Fit on ``dataset`` (an :class:`ImageTensors` or a data spec) towards ``model`` (a model spec)."""
        from .neural_common import ImageTensors, load_images
        data = dataset if isinstance(dataset, ImageTensors) else load_images(str(dataset), params.get("size", 32))
        return fit_pnc(data, model, **params)


# -------------------------------------------------------------- training ---

def build_modules(arch: PncArch):
    """(encoder, decoder) as torch modules; the encoder ends before the sigmoid.

    Decoder: 5 layers, conv -> (nearest x2 upsample + conv) per factor of 2 of
    the stride -> 3x3 convs -> conv to RGB + sigmoid.
    """
    from collections import OrderedDict

    from torch import nn

    k1, s1, p1 = arch.conv1()
    encoder = nn.Sequential(OrderedDict(
        norm=_Affine(4.0, -2.0),
        conv1=nn.Conv2d(3, arch.enc_width, k1, s1, p1), act1=nn.ReLU(),
        conv2=nn.Conv2d(arch.enc_width, arch.channels, 3, 2, 1),
    ))
    ups = {4: 2, 8: 3}[arch.stride]
    d = arch.dec_width
    widths = [d] + [max(16, d // (2 ** i)) for i in range(1, ups + 1)]
    layers: list[tuple[str, nn.Module]] = [("conv0", nn.Conv2d(arch.channels, widths[0], 3, 1, 1)), ("act0", nn.ReLU())]
    for i in range(ups):
        layers += [(f"up{i + 1}", nn.Upsample(scale_factor=2, mode="nearest")),
                   (f"conv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1)), (f"act{i + 1}", nn.ReLU())]
    for i in range(ups + 1, 4):
        layers += [(f"conv{i}", nn.Conv2d(widths[-1], widths[-1], 3, 1, 1)), (f"act{i}", nn.ReLU())]
    layers += [("conv4", nn.Conv2d(widths[-1], 3, 3, 1, 1)), ("out", nn.Sigmoid())]
    decoder = nn.Sequential(OrderedDict(layers))
    return encoder, decoder


def _Affine(scale: float, shift: float):
    from torch import nn

    class Affine(nn.Module):
        """x * scale + shift (input normalisation without parameters)."""

        def forward(self, x):
            return x * scale + shift

    return Affine()


def tail_drop_mask(n: int, channels: int, gen=None, min_keep: int = 1):
    """Stochastic tail-drop: per sample keep the first K channels, K uniform in min_keep..M (zero the last L = M-K)."""
    import torch
    keep = torch.randint(min_keep, channels + 1, (n,), generator=gen)
    return (torch.arange(channels).view(1, -1) < keep.view(-1, 1)).float(), keep


def quantise_ste(z01, levels: int):
    """Round to ``levels`` steps in the forward pass, identity gradient (straight-through)."""
    import torch
    q = torch.round(z01 * levels) / levels
    return z01 + (q - z01).detach()


@dataclass(frozen=True)
class PncFit:
    """Training settings. ``small`` trains in a few CPU minutes; ``full`` is for a GPU."""

    epochs1: float = 4.0      # stage 1: reconstruction with tail-drop
    epochs2: float = 3.0      # stage 2: distillation towards the classifier
    batch: int = 64
    lr1: float = 2e-3
    lr2: float = 5e-4
    recon_weight: float = 1.0  # stage 2 keeps a pixel term so reconstructions stay images
    feature_weight: float = 1.0  # stage 2 also matches the teacher's layer1..3 outputs (CIFAR ResNets): the
                                 # soft labels alone give too weak a signal for a few CPU epochs
    temperature: float = 1.0
    augment: bool = True
    limit: int | None = None   # use at most this many training images
    seed: int = 0
    device: str = "auto"
    threads: int = 1


PRESETS = {
    "tiny": PncFit(epochs1=0.5, epochs2=0.5, batch=32, limit=256),   # tests: seconds
    "small": PncFit(),                                               # CPU demo: ~5 min on 2 cores
    "medium": PncFit(epochs1=8, epochs2=8),                          # CPU: ~11 min, the measured model
    "full": PncFit(epochs1=40, epochs2=40, batch=128, lr1=1e-3, lr2=2e-4),  # GPU
}


def fit_pnc(data, teacher_spec: str, arch: PncArch | None = None, fit: PncFit | None = None,
            store: ArtifactStore | None = None, progress=None, **overrides: Any) -> Artifact:
    """Two-stage PNC training on ``data`` (ImageTensors) towards the frozen ``teacher_spec`` classifier."""
    import torch
    import torch.nn.functional as F

    from .neural_common import (
        Schedule,
        augment,
        device_for,
        json_safe,
        kd_loss,
        load_teacher,
        resolve_model_spec,
        set_threads,
        state_to_npz,
        to_unit,
        train_loop,
    )

    size = int(data.x.shape[1])
    arch = (arch or default_arch(size))
    arch = replace(arch, **{k: v for k, v in overrides.items() if k in PncArch.__dataclass_fields__ and v is not None})
    arch = replace(arch, size=size).check()
    fit = fit or PRESETS["small"]
    fit = replace(fit, **{k: v for k, v in overrides.items() if k in PncFit.__dataclass_fields__ and v is not None})
    set_threads(fit.threads)
    torch.manual_seed(fit.seed)
    data = data.subset(fit.limit, fit.seed)
    dev = device_for(fit.device)
    teacher_spec = resolve_model_spec(teacher_spec)
    teacher = load_teacher(teacher_spec, dev, size)
    enc, dec = build_modules(arch)
    enc, dec = enc.to(dev), dec.to(dev)
    x_all = torch.from_numpy(data.x)
    gen = torch.Generator().manual_seed(fit.seed + 1)
    levels = arch.levels
    t0 = time.monotonic()

    def forward(idx, stage: int):
        x = to_unit(x_all[idx], dev)
        if fit.augment:
            x = augment(x, gen)
        z = torch.sigmoid(enc(x))
        q = quantise_ste(z, levels)
        mask, _ = tail_drop_mask(len(idx), arch.channels, gen)
        rec = dec(q * mask.to(dev)[:, :, None, None])
        return x, rec

    params = list(enc.parameters()) + list(dec.parameters())
    opt1 = torch.optim.Adam(params, lr=fit.lr1)

    def step1(idx, frac):
        x, rec = forward(idx, 1)
        loss = F.mse_loss(rec, x)
        opt1.zero_grad(set_to_none=True)
        loss.backward()
        opt1.step()
        return {"mse": loss.item()}

    enc.train(); dec.train()
    r1 = train_loop(step1, len(data), fit.batch, fit.epochs1, [(opt1, Schedule(fit.lr1))], fit.seed,
                    progress, "pnc stage 1 (reconstruction + tail-drop)") if fit.epochs1 > 0 else {}

    opt2 = torch.optim.Adam(params, lr=fit.lr2)

    from ..workload.models import CifarResNet
    staged = isinstance(teacher.module, CifarResNet) and fit.feature_weight > 0

    def outputs(x):
        return teacher.features(x) if staged else [teacher(x)]

    def step2(idx, frac):
        x, rec = forward(idx, 2)
        with torch.no_grad():
            target = outputs(x)
        got = outputs(rec)
        kd = kd_loss(got[-1], target[-1], temperature=fit.temperature)
        feat = sum(F.mse_loss(a, b) for a, b in zip(got[:-1], target[:-1])) if staged else torch.zeros(())
        mse = F.mse_loss(rec, x)
        loss = kd + fit.feature_weight * feat + fit.recon_weight * mse
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt2.step()
        return {"kd": kd.item(), "feat": float(feat.detach()), "mse": mse.item()}

    r2 = train_loop(step2, len(data), fit.batch, fit.epochs2, [(opt2, Schedule(fit.lr2))], fit.seed + 2,
                    progress, "pnc stage 2 (distillation)") if fit.epochs2 > 0 else {}
    enc.eval(); dec.eval()

    # per-channel symbol statistics over the training images -> static Huffman codes
    hist = np.zeros((arch.channels, levels + 1), np.int64)
    with torch.no_grad():
        for i in range(0, len(data), 500):
            z = torch.sigmoid(enc(to_unit(x_all[i:i + 500], dev)))
            s = torch.round(z * levels).to(torch.int64).cpu().numpy()  # (N, M, h, w)
            for c in range(arch.channels):
                hist[c] += np.bincount(s[:, c].ravel(), minlength=levels + 1)
    lengths = np.stack([huffman_lengths(hist[c]) for c in range(arch.channels)])
    p = hist / hist.sum(1, keepdims=True)
    mean_bits = (p * lengths).sum(1) * arch.latent_hw ** 2
    entropy_bits = -(p * np.log2(np.where(p > 0, p, 1))).sum(1) * arch.latent_hw ** 2

    state = {**{f"encoder.{k}": v for k, v in enc.state_dict().items()},
             **{f"decoder.{k}": v for k, v in dec.state_dict().items()}}
    buf = io.BytesIO()
    np.savez(buf, lengths=lengths, histogram=hist)
    files = {"weights.npz": state_to_npz(state), "huffman.npz": buf.getvalue()}
    meta = json_safe({
        "family": "pnc", "arch": asdict(arch),
        "fit": {**asdict(fit), "teacher": teacher_spec, "data": data.source, "n_train": len(data),
                "device": str(dev), "torch": torch.__version__},
        "results": {"stage1": r1, "stage2": r2, "fit_seconds": round(time.monotonic() - t0, 1),
                    "train_bytes_per_channel": (mean_bits / 8).round(2).tolist(),
                    "train_bytes_per_image": round(float(mean_bits.sum() / 8), 1),
                    "train_entropy_bytes_per_image": round(float(entropy_bits.sum() / 8), 1)},
    })
    return (store or ArtifactStore()).put(KIND, files, meta)


# ------------------------------------------------------------ evaluation ---

def evaluate_pnc(artifact_id: str, x: np.ndarray, y: np.ndarray, model_spec: str, block_bytes: int = 64,
                 store: ArtifactStore | None = None, batch: int = 250) -> dict:
    """Accuracy of ``model_spec`` on PNC reconstructions as a function of blocks received.

    Emulates the wire exactly: per image, the channels decodable from the first
    b blocks are those whose last bit lies within ``b * block_bytes`` bytes.
    Returns ``{"blocks": [...], "mean_bytes": [...], "top1": [...], "full_top1", "mean_total_bytes"}``.
    """
    import torch

    from ..workload.models import load_model
    m = load_pnc(artifact_id, store)
    clf = load_model(model_spec, "auto", m.arch.size)
    sym = np.stack([m.encoder.symbols(im) for im in x])                 # (N, M, n)
    end_bits = np.cumsum(m.coder.channel_bits(sym), 1)                  # (N, M)
    total_bytes = (end_bits[:, -1] + 7) // 8
    n_blocks = (total_bytes + block_bytes - 1) // block_bytes
    out = {"blocks": [], "mean_bytes": [], "top1": [], "mean_channels": []}
    for b in range(1, int(n_blocks.max()) + 1):
        avail = np.minimum(b * block_bytes, total_bytes)
        keep = (end_bits <= 8 * avail[:, None]).sum(1)
        correct = 0
        for i in range(0, len(x), batch):
            k = keep[i:i + batch]
            pix = m.pixels(sym[i:i + batch], k)
            p = clf.predict(pix).argmax(1)
            ok = (p == y[i:i + batch]) & (k > 0)   # no complete channel = a miss
            correct += int(ok.sum())
        out["blocks"].append(b)
        out["mean_bytes"].append(float(avail.mean()))
        out["mean_channels"].append(float(keep.mean()))
        out["top1"].append(correct / len(x))
    out["mean_total_bytes"] = float(total_bytes.mean())
    out["full_top1"] = out["top1"][-1]
    del torch
    return out


# ------------------------------------------------------- `hilbed fit pnc` ---

FIT_HELP = "train PNC (tail-drop autoencoder + distillation) for the target model; one artifact serves every deadline"
_ARCH_ARGS = ("channels", "stride", "enc_width", "dec_width", "bits")
_FIT_ARGS = ("epochs1", "epochs2", "lr1", "lr2", "recon_weight", "feature_weight", "batch")


def auto_settings(dataset: str, model: str, preset: str, size: int) -> dict:
    """What names an auto-fitted PNC artifact (scenario params ``fit_*`` and a plain `hilbed fit pnc`)."""
    from . import fit as F
    return {"dataset": F.dataset_spec(dataset), "model": F.model_fingerprint(model), "preset": preset,
            "size": size, "seed": 0, "v": 1}


def auto_artifact(dataset: str, model: str, preset: str, size: int, store: ArtifactStore | None = None,
                  progress=None) -> Artifact:
    """The PNC artifact for these settings, fitted on first use (file-locked: a client and an edge fit once)."""
    from . import fit as F

    def build(st: ArtifactStore) -> Artifact:
        from .neural_common import load_images
        data = load_images(F.dataset_spec(dataset), size, PRESETS[preset].limit, 0)
        return fit_pnc(data, F.model_spec(model), fit=PRESETS[preset], store=st, progress=progress)
    return F.auto_artifact(KIND, auto_settings(dataset, model, preset, size), build, store)


def fit_cli(parser) -> None:
    """Arguments of ``hilbed fit pnc`` beyond the common ones (dataset, model, size, seed, device, threads)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small",
                        help="tiny (tests, seconds), small (~5 CPU minutes), medium (~11), full (GPU); default small")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    parser.add_argument("--epochs1", type=float, default=None, help="stage 1 (reconstruction + tail-drop) epochs")
    parser.add_argument("--epochs2", type=float, default=None, help="stage 2 (distillation) epochs")
    parser.add_argument("--lr1", type=float, default=None)
    parser.add_argument("--lr2", type=float, default=None)
    parser.add_argument("--recon-weight", type=float, default=None, help="pixel MSE weight in stage 2")
    parser.add_argument("--feature-weight", type=float, default=None,
                        help="weight of the teacher-feature matching term in stage 2 (0: soft labels only)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--channels", type=int, default=None, help="latent channels M (default 16 at 32 px, 10 at 224)")
    parser.add_argument("--stride", type=int, choices=(4, 8), default=None, help="encoder down-sampling")
    parser.add_argument("--enc-width", type=int, default=None)
    parser.add_argument("--dec-width", type=int, default=None)
    parser.add_argument("--bits", type=int, default=None, help="quantisation bits per latent value (default 6)")
    parser.add_argument("--eval", default=None, metavar="DATASET",
                        help="after fitting, report top-1 against received blocks on this dataset (e.g. the dev split)")


def fit_main(args, store: ArtifactStore) -> Artifact:
    """``hilbed fit pnc``: with only --preset it is the artifact scenarios name by ``fit_*`` params."""
    from . import fit as F
    from .neural_common import load_images
    progress = getattr(args, "progress", None)
    size = int(getattr(args, "size", 32) or 32)
    overrides = {k: getattr(args, k, None) for k in _ARCH_ARGS + _FIT_ARGS}
    for k in ("device", "threads"):
        if getattr(args, k, None) is not None:
            overrides[k] = getattr(args, k)
    seed = int(getattr(args, "seed", 0) or 0)
    plain = all(getattr(args, k, None) is None for k in _ARCH_ARGS + _FIT_ARGS) and args.limit is None and seed == 0
    if plain:
        art = auto_artifact(args.dataset, args.model, args.preset, size, store, progress)
    else:
        preset = PRESETS[args.preset]
        limit = args.limit if args.limit is not None else preset.limit
        data = load_images(F.dataset_spec(args.dataset), size, limit, seed)
        art = fit_pnc(data, F.model_spec(args.model), fit=preset, store=store, progress=progress,
                      limit=limit, seed=seed, **overrides)
    summary = {"bytes_per_image_train": art.meta["results"]["train_bytes_per_image"],
               "bytes_per_channel_train": art.meta["results"]["train_bytes_per_channel"]}
    if getattr(args, "eval", None):
        dev = load_images(F.dataset_spec(args.eval), size)
        ev = evaluate_pnc(art.id, dev.x, dev.y, F.model_spec(args.model), store=store)
        summary["eval"] = {"dataset": args.eval, "blocks": ev["blocks"], "mean_bytes": ev["mean_bytes"],
                           "top1": ev["top1"]}
    args.summary = summary
    return art
