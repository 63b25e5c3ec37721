"""Supervised compression (Matsubara et al., "Supervised Compression for
Resource-Constrained Edge Computing Systems") and the two baselines of its
supplement, for CIFAR ResNets: the codecs a client and an edge run.

``entropic``   the entropic student. The client runs an encoder (convolutions
               + GDN) into a learnt entropy bottleneck (compressai's
               ``EntropyBottleneck`` and its rANS coder); the edge decodes the
               latent with convolutions + inverse GDN into the features the
               teacher's first stage (conv1..layer1) would have produced and
               runs the student's copy of the remaining stages.
``factorized`` input compression: Balle et al.'s factorized-prior image codec;
               the edge classifies the decoded pixels with its own model.
``crbq``       channel reduction + bottleneck quantisation: a small head with a
               ``bottleneck``-channel layer, its output quantised to 8 bits
               per image.

``entropic`` and ``crbq`` do not produce pixels: they set
:attr:`~hilbed.nodes.codecs.base.Codec.split_computing` and implement
``decode_features(chunks, total) -> torch.Tensor | None`` and
``predict_features(features) -> probabilities``, which the edge uses instead
of ``decode`` + its model (see docs/neural-codecs.md). The networks are in
:mod:`hilbed.nodes.codecs.nets.entropic`, their training in
:mod:`hilbed.nodes.codecs.fitting.entropic`. Torch and compressai are
imported lazily, so the controller can validate scenario params without them.
"""

from __future__ import annotations

import struct
import threading
from typing import Any, ClassVar

import numpy as np

from hilbed.nodes.codecs.artifacts import Artifact, ArtifactStore
from hilbed.nodes.codecs.base import Codec, CodecParamsError, Encoded, Param
from hilbed.nodes.codecs.first_use import first_use_fitter

FAMILIES = ("entropic", "factorized", "crbq")


# --------------------------------------------------------- artifacts ---

class SplitModel:
    """A fitted artifact of one of the three families, ready to encode/decode (CPU, or CUDA on the edge)."""

    def __init__(self, artifact: Artifact, device: str | None = None):
        import torch

        from hilbed.nodes.codecs.nets.common import load_state, npz_to_arrays
        from hilbed.nodes.codecs.nets.entropic import ARCHS, build_crbq, build_factorized, build_student
        self.artifact = artifact
        self.family = artifact.meta["family"]
        arch_cls = ARCHS[self.family]
        self.arch = arch_cls(**artifact.meta["arch"])
        tail_cfg = artifact.meta.get("tail")
        if self.family == "entropic":
            net = build_student(self.arch, tail_cfg)
        elif self.family == "factorized":
            net = build_factorized(self.arch)
        else:
            net = build_crbq(self.arch, tail_cfg)
        load_state(net, npz_to_arrays(artifact.read_bytes("weights.npz")))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # the client encodes on the CPU; the decoder side moves to the edge's device on first use
        self.net = net.eval()
        self._dec_on: Any = None
        self._lock = threading.Lock()
        self.latent_hw = self.arch.size // {"factorized": 2 ** getattr(self.arch, "layers", 0),
                                            "entropic": getattr(self.arch, "stride", 4), "crbq": 4}[self.family]

    def _decoder_side(self):
        with self._lock:
            if self._dec_on is None:
                import copy
                parts = {k: v for k, v in self.net.items() if k != "encoder"}
                from torch import nn
                self._dec_on = nn.ModuleDict({k: copy.deepcopy(v) for k, v in parts.items()}).to(self.device).eval()
            return self._dec_on

    # -- client side -------------------------------------------------------
    def latent(self, images: np.ndarray):
        import torch

        from hilbed.nodes.codecs.nets.common import to_unit
        with torch.no_grad():
            return self.net["encoder"](to_unit(images))

    def encode(self, images: np.ndarray) -> list[tuple[bytes, int]]:
        """uint8 NHWC -> per image (payload bytes, header bytes inside them)."""
        import torch
        y = self.latent(images)
        if self.family in ("entropic", "factorized"):
            with torch.no_grad():
                return [(s, 0) for s in self.net["eb"].compress(y)]
        return self._quantise_tensor(y)

    # -- edge side ---------------------------------------------------------
    def latent_from_bytes(self, payloads: list[bytes]):
        import torch
        hw = self.latent_hw
        if self.family in ("entropic", "factorized"):
            with torch.no_grad():
                eb = self.net["eb"]
                return eb.decompress(list(payloads), (hw, hw))
        c = self.arch.bottleneck
        rows = []
        for p in payloads:
            lo, scale = struct.unpack("<ee", p[:4])
            q = np.frombuffer(p[4:4 + c * hw * hw], np.uint8).astype(np.float32).reshape(c, hw, hw)
            rows.append(q * np.float32(scale) + np.float32(lo))
        return torch.from_numpy(np.stack(rows))

    def quantised_latent(self, y):
        """What the edge sees for latent ``y`` (the wire round trip, without the coder)."""
        import torch
        with torch.no_grad():
            if self.family in ("entropic", "factorized"):
                return self.net["eb"](y, training=False)[0]
        return self.latent_from_bytes([p for p, _ in self._quantise_tensor(y)])

    @staticmethod
    def _quantise_tensor(y) -> list[tuple[bytes, int]]:
        """crbq: per-image affine 8-bit quantisation (Jacob et al.): float16 min and step, then uint8s."""
        out = []
        for t in y.numpy():
            lo, hi = float(t.min()), float(t.max())
            scale = max((hi - lo) / 255.0, 1e-8)
            lo16, scale16 = np.float16(lo), np.float16(scale)
            q = np.clip(np.rint((t - np.float32(lo16)) / np.float32(scale16)), 0, 255).astype(np.uint8)
            out.append((struct.pack("<ee", lo16, scale16) + q.tobytes(), 4))
        return out

    def features(self, y_hat):
        import torch
        d = self._decoder_side()
        with torch.no_grad():
            return d["decoder"](y_hat.to(self.device))

    def logits_from_features(self, f):
        import torch
        d = self._decoder_side()
        with torch.no_grad():
            return d["tail"](f.to(self.device))

    def pixels(self, y_hat) -> np.ndarray:
        import torch
        x = self.features(y_hat)  # factorized: the decoder's output is the image
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


_MODELS: dict[tuple[str, str], SplitModel] = {}
_LOCK = threading.Lock()


def load_split(artifact_id: str, store: ArtifactStore | None = None) -> SplitModel:
    store = store or ArtifactStore()
    key = (str(store.root), artifact_id)
    with _LOCK:
        m = _MODELS.get(key)
        if m is None:
            m = _MODELS[key] = SplitModel(store.get(artifact_id))
        return m


# ------------------------------------------------------------ codecs ---

class _SplitCodec(Codec):
    """One chunk: the entropy-coded (or 8-bit) latent; a partial payload is a miss."""

    family = ""
    #: the fit knob a scenario sets for first-use fitting (``fit_<knob>``); "": the family has no first-use path
    fit_knob: ClassVar[str] = ""

    def __init__(self, **params: Any):
        super().__init__(**params)
        # Load torch, compressai and the weights now and run one image through, so
        # that a client's first image does not pay seconds of start-up.
        self._artifact_id = ""  # the first-use artifact's id once resolved (fingerprinting the teacher costs a hash)
        self._model = load_split(self.artifact_id)
        self.encode(np.zeros((self._model.arch.size,) * 2 + (3,), np.uint8))

    @property
    def artifact_id(self) -> str:
        """The ``artifact`` param, or the artifact fitted on first use for the ``fit_*`` params."""
        if self.params["artifact"]:
            return self.params["artifact"]
        if not self._artifact_id:
            p = self.params
            self._artifact_id = first_use_fitter(self.family)(self.family, p["fit_dataset"], p["fit_model"],
                                                              p["fit_preset"], p["fit_size"],
                                                              p[f"fit_{self.fit_knob}"]).id
        return self._artifact_id

    @classmethod
    def prepare(cls, params: dict[str, Any]) -> None:
        """Fit on first use before any stream starts (minutes: a fit never runs inside a trial)."""
        if not params.get("artifact"):
            cls(**params)

    @property
    def input_size(self) -> int:
        return self._model.arch.size

    @classmethod
    def validate(cls, params: dict[str, Any]) -> dict[str, Any]:
        out = super().validate(params)
        if not out["artifact"] and cls.fit_knob:
            if not out["fit_model"].startswith("cifar-resnet:"):
                raise CodecParamsError("fit_model", f"{out['fit_model']!r} cannot teach a student (fitting on first "
                                       "use, no artifact named)", "cifar-resnet:NAME, or name an artifact")
            return out
        if not out["artifact"].startswith(cls.family + "-"):
            raise CodecParamsError("artifact", f"expected a {cls.family} artifact id, got {out['artifact']!r}",
                                   f"{cls.family}-<hash> from `hilbed fit {cls.family}`")
        return out

    @property
    def model(self) -> SplitModel:
        return self._model

    def encode(self, image: np.ndarray) -> Encoded:
        from hilbed.nodes.codecs.pnc import _resize
        m = self.model
        data, hdr = m.encode(_resize(image, m.arch.size)[None])[0]
        return Encoded([data], header_bytes=hdr)

    def _latent(self, chunks: list[bytes], total_chunks: int):
        if not chunks or len(chunks) < total_chunks:
            return None
        return self.model.latent_from_bytes([b"".join(chunks)])


class _FeatureCodec(_SplitCodec):
    """Split computing: the edge gets features for the student's later stages, not pixels."""

    split_computing = True

    def decode_features(self, chunks: list[bytes], total_chunks: int):
        """Decoded features (1, C, H, W) torch tensor on the edge's device, or None (a miss)."""
        y = self._latent(chunks, total_chunks)
        return None if y is None else self.model.features(y)

    def predict_features(self, features) -> np.ndarray:
        """Class probabilities (N, classes) from :meth:`decode_features` output."""
        import torch
        return torch.softmax(self.model.logits_from_features(features), 1).float().cpu().numpy()

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        raise NotImplementedError(f"{self.name} decodes to features, not pixels: use decode_features/predict_features")


def _first_use_params(family: str, knob: str, knob_param: Param) -> dict[str, Param]:
    """``artifact`` plus the ``fit_*`` params that name the model fitted on first use when it is empty."""
    return {
        "artifact": Param(str, "", doc=f"{family}-<hash> from `hilbed fit {family}`; empty: the artifact for the "
                                       "fit_* params, fitted on first use (in the edge's prepare step, minutes)"),
        "fit_dataset": Param(str, "cifar10:fit", doc="first use only: training images (as `hilbed fit --dataset`)"),
        "fit_model": Param(str, "cifar-resnet:cifar10-resnet20",
                           doc="first use only: the teacher, a CIFAR ResNet (as `hilbed fit --model`)"),
        "fit_preset": Param(str, "small", choices=("tiny", "small", "medium", "full"),
                            doc="first use only: training preset (docs/neural-codecs.md)"),
        "fit_size": Param(int, 32, 8, 1024, doc="first use only: input resolution"),
        f"fit_{knob}": knob_param,
    }


class EntropicStudentCodec(_FeatureCodec):
    name = "entropic"
    family = "entropic"
    fit_knob = "beta"
    params_spec: ClassVar[dict[str, Param]] = _first_use_params(
        "entropic", "beta", Param(float, 0.01, 1e-5, 10.0,
                                  doc="first use only: the rate weight (as `hilbed fit entropic --beta`)"))


class CrBqCodec(_FeatureCodec):
    name = "crbq"
    family = "crbq"
    fit_knob = "bottleneck"
    params_spec: ClassVar[dict[str, Param]] = _first_use_params(
        "crbq", "bottleneck", Param(int, 2, 1, 256,
                                    doc="first use only: bottleneck channels (as `hilbed fit crbq --bottleneck`)"))


class FactorizedPriorCodec(_SplitCodec):
    name = "factorized"
    family = "factorized"
    params_spec: ClassVar[dict[str, Param]] = {"artifact": Param(str, "", doc="factorized-<hash> from `hilbed fit factorized` (one per lambda)")}

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        y = self._latent(chunks, total_chunks)
        return None if y is None else self.model.pixels(y)[0]
