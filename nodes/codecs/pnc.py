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
decoder (:mod:`hilbed.nodes.codecs.nets.pnc`), which was trained for exactly
that with stochastic tail-drop (:mod:`hilbed.nodes.codecs.fitting.pnc`).
An artifact fitted with a classifier stage (``--classifier-epochs``) also
carries a fine-tuned copy of the target classifier trained on those
reconstructions; the codec then sets ``split_computing`` and the edge
classifies with that copy (``decode_features`` / ``predict_features``)
instead of its own model. Older artifacts decode to pixels for the edge's
model, as before.

Wire format (no header: the artifact fixes image size and latent shape):
``bits(ch0) | bits(ch1) | ... | zero padding to a byte``; each channel is
``h*w`` Huffman codewords in raster order. Only numpy is needed to encode;
decoding imports torch.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hilbed.nodes.codecs.artifacts import Artifact, ArtifactStore
from hilbed.nodes.codecs.base import Codec, CodecParamsError, Encoded, Param
from hilbed.nodes.codecs.first_use import first_use_fitter

MAX_CODE_BITS = 16
KIND = "pnc"


# ---------------------------------------------------------- geometry ---

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


# --------------------------------------------- numpy encoder forward ---

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


# ------------------------------------------- canonical Huffman codes ---

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


# ---------------------------------------------------------- artifact ---

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
        #: architecture of the fine-tuned classifier the artifact carries (None: it carries none)
        self.classifier_config: dict | None = artifact.meta.get("classifier")
        self._decoder = None
        self._classifier = None
        self._device = None
        self._lock = threading.Lock()

    @property
    def has_classifier(self) -> bool:
        return self.classifier_config is not None

    def decoder(self):
        """The torch decoder (built on first use; CUDA when present)."""
        with self._lock:
            if self._decoder is None:
                import torch

                from hilbed.nodes.codecs.nets.common import load_state
                from hilbed.nodes.codecs.nets.pnc import build_modules
                _, dec = build_modules(self.arch)
                load_state(dec, self.weights, prefix="decoder.")
                self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
                self._decoder = dec.to(self._device).eval()
            return self._decoder

    def classifier(self):
        """The artifact's fine-tuned classifier (:class:`~hilbed.nodes.codecs.nets.pnc.EdgeClassifier`), built on
        first use on the decoder's device; None when the artifact carries none."""
        if self.classifier_config is None:
            return None
        self.decoder()  # picks the device
        with self._lock:
            if self._classifier is None:
                from hilbed.nodes.codecs.nets.common import load_state, npz_to_arrays
                from hilbed.nodes.codecs.nets.pnc import build_classifier
                clf = build_classifier(self.classifier_config)
                load_state(clf, npz_to_arrays(self.artifact.read_bytes("classifier.npz")))
                self._classifier = clf.to(self._device).eval()
            return self._classifier

    def reconstruct(self, symbols: np.ndarray, keep: np.ndarray):
        """(N, M, h*w) symbols with the first keep[i] channels valid -> the decoder's (N, 3, H, W) float output in
        [0, 1], on the decoder's device (the missing channels are zeroed, as in training)."""
        import torch
        dec = self.decoder()
        a = self.arch
        n = symbols.shape[0]
        y = torch.from_numpy(symbols.astype(np.float32) / a.levels).view(n, a.channels, a.latent_hw, a.latent_hw)
        mask = (torch.arange(a.channels).view(1, -1) < torch.as_tensor(keep).view(-1, 1)).float()
        with torch.no_grad():
            return dec((y * mask[:, :, None, None]).to(self._device))

    def pixels(self, symbols: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """(N, M, h*w) symbols with the first keep[i] channels valid -> (N, H, W, 3) uint8."""
        import torch
        out = self.reconstruct(symbols, keep)
        return (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def probabilities(self, recon) -> np.ndarray:
        """Class probabilities (N, classes) of the artifact's classifier on :meth:`reconstruct` output."""
        import torch
        clf = self.classifier()
        if clf is None:
            raise ValueError(f"{self.artifact.id} carries no classifier (fitted without --classifier-epochs)")
        with torch.no_grad():
            return torch.softmax(clf(recon.to(self._device).clamp(0, 1)), 1).float().cpu().numpy()


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


# ------------------------------------------------------------- codec ---

class PncCodec(Codec):
    """Progressive neural compression; chunks are ``block_bytes`` blocks of the channel-ordered stream."""

    name = "pnc"
    progressive = True
    params_spec: ClassVar[dict[str, Param]] = {
        "artifact": Param(str, "", doc="fitted model: an id from `hilbed fit pnc` (pnc-<hash>); empty: the "
                                       "artifact for fit_dataset/fit_model/fit_preset, fitted on first use"),
        "block_bytes": Param(int, 64, 8, 65536, doc="bytes per block (= chunk); the paper sends 64-byte blocks"),
        "max_channels": Param(int, 0, 0, 4096, doc="send at most this many latent channels (0 = all)"),
        "fit_dataset": Param(str, "synthetic", doc="auto-fit only: training images (as `hilbed fit --dataset`)"),
        "fit_model": Param(str, "synthetic-cnn", doc="auto-fit only: the target model (as `hilbed fit --model`)"),
        "fit_preset": Param(str, "small", choices=("tiny", "small", "medium", "large", "full"),
                            doc="auto-fit only: training preset"),
        "fit_size": Param(int, 32, 8, 1024, doc="auto-fit only: input resolution"),
        "classifier": Param(bool, True, doc="when the artifact carries a fine-tuned classifier (fitted with "
                                            "--classifier-epochs), the edge classifies with it (split computing); "
                                            "false: decode to pixels for the edge's own model"),
    }

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._auto_id = ""  # the auto-fitted artifact's id, when no ``artifact`` param names one
        # Load (or auto-fit) now, not at the first image: a client builds its codec
        # before the stream starts, so loading never eats into a deadline.
        self._model = load_pnc(self.artifact_id)
        self._n_channels = min(self._model.arch.channels, self.params["max_channels"] or self._model.arch.channels)
        # An artifact with a fine-tuned classifier makes this instance a split-computing codec: the edge
        # (and `hilbed eval-codecs`) read the flag from the instance and call decode_features/predict_features.
        self.split_computing = bool(self._model.has_classifier and self.params["classifier"])
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
        aid = self.params["artifact"] or self._auto_id
        if not aid:
            p = self.params
            aid = self._auto_id = first_use_fitter("pnc")(p["fit_dataset"], p["fit_model"], p["fit_preset"], p["fit_size"]).id
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

    def _received(self, chunks: list[bytes]) -> tuple[np.ndarray, int] | None:
        """(1, M, h*w) symbols with the complete channels filled in, and their count; None: none complete."""
        sym = self.decode_symbols(chunks)
        k = sym.shape[0]
        if k == 0:
            return None  # not even the most important channel arrived: a miss
        a = self.model.arch
        full = np.zeros((1, a.channels, a.latent_hw ** 2), np.uint8)
        full[0, :k] = sym
        return full, k

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        got = self._received(chunks)
        if got is None:
            return None
        full, k = got
        return self.model.pixels(full, np.array([k]))[0]

    def decode_features(self, chunks: list[bytes], total_chunks: int):
        """The decoder's float reconstruction (1, 3, H, W) of the received prefix, for the artifact's classifier;
        None when no channel is complete (a miss)."""
        if not self.split_computing:
            raise NotImplementedError("this pnc artifact carries no classifier (or classifier=false): use decode")
        got = self._received(chunks)
        if got is None:
            return None
        full, k = got
        return self.model.reconstruct(full, np.array([k]))

    def predict_features(self, features) -> np.ndarray:
        """Class probabilities (1, classes) of the artifact's fine-tuned classifier."""
        return self.model.probabilities(features)
