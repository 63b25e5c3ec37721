"""GRACE: gradient-driven, DNN-aware JPEG (Xie & Kim, MobiCom 2019).

Offline (edge/server, torch): probe the target model's gradient of its NLL loss
with respect to 8x8 block-DCT coefficients (autograd through the inverse DCT,
§4.3 / Fig. 4) on a small probe set; the mean gradient amplitude |g_n| per
frequency bin is the model's spectral sensitivity, the mean coefficient
amplitude |s_n| bounds useful quantisation steps (q_n <= 2|s_n|, Eq. 2).
Theorem 2 gives the G-YUV luma weights from the medians of g_B/g_G and
g_R/g_G over all RGB DCT coefficients; the probe is then repeated in G-YUV
(Algorithm 2, lines 6-8).

Online (client, numpy + Pillow): Algorithm 1 / Theorem 1 turns a per-block
loss budget B into d_n (water-filling under d_n <= theta_n = |g_n||s_n|) and
q_n = 2 d_n / |g_n|. The 3 x 64 tables are used verbatim (rounded, clamped to
1..255), 4:4:4, with the custom colour transform, so a stock JPEG decoder
reads the stream; the edge applies the matching inverse transform.

The artifact holds the probe statistics, not the tables, so one fit serves
the whole rate-accuracy curve: ``budget`` (B as a fraction of sum(theta), the
budget beyond which nothing changes) or an absolute ``B`` picks the point.
The 3 x 64 bins of Y, U and V share one budget per (colour) block.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from .artifacts import Artifact, ArtifactStore
from .base import Codec, CodecParamsError, Encoded, Param
from .jpeg_tables import BT601, HEADER_MODES, HUFFMAN_MODES, optimize_for, ColourTransform, JpegProfile

KIND = "grace"


# ------------------------------------------------------------ the maths ---

def theorem1(theta: np.ndarray, B: float) -> tuple[np.ndarray, int]:
    """Optimal per-bin loss allowances d (Theorem 1 / Algorithm 1) and K.

    Maximise prod d_n s.t. sum d_n <= B, 0 < d_n <= theta_n. With theta sorted
    in descending order, K is the largest k with theta_k >= (B - sum_{i>k}
    theta_i) / k > 0; bins after K take their cap theta_n, the first K share the
    rest equally. K = 0 means the budget covers every cap (d = theta).
    """
    theta = np.asarray(theta, np.float64)
    flat = theta.ravel()
    n = flat.size
    order = np.argsort(-flat, kind="stable")
    th = flat[order]
    tail = np.concatenate([np.cumsum(th[::-1])[::-1][1:], [0.0]])  # tail[k-1] = sum_{i>k} th_i
    d_sorted = th.copy()
    K = 0
    for k in range(n, 0, -1):
        d = (B - tail[k - 1]) / k
        if d > 0 and th[k - 1] >= d:
            K = k
            d_sorted[:k] = d
            break
    out = np.empty_like(flat)
    out[order] = d_sorted
    return out.reshape(theta.shape), K


def quant_tables(g_abs: np.ndarray, s_abs: np.ndarray, B: float) -> np.ndarray:
    """q_n = 2 d_n / |g_n| (unclamped floats, shape of the inputs)."""
    g = np.asarray(g_abs, np.float64)
    theta = g * np.asarray(s_abs, np.float64)
    d, _ = theorem1(theta, B)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(g > 0, 2.0 * d / g, np.inf)
    return q


def theorem2(ratio_bg: np.ndarray, ratio_rg: np.ndarray) -> tuple[tuple[float, float, float], float, float]:
    """G-YUV weights from medians z1 = med(g_B/g_G), z2 = med(g_R/g_G) (Theorem 2).

    W_R = z2 / (1 + z1 + z2), W_G = 1 / (1 + z1 + z2), W_B = z1 / (1 + z1 + z2).
    A negative median (colour channels pulling the loss in opposite ways) has
    no valid colour space; it is clipped to 0.01 and reported in the meta.
    """
    z1 = float(np.median(ratio_bg))
    z2 = float(np.median(ratio_rg))
    c1, c2 = max(z1, 0.01), max(z2, 0.01)
    s = 1.0 + c1 + c2
    return (c2 / s, 1.0 / s, c1 / s), z1, z2


# --------------------------------------------------------------- probing ---

def probe(loaded, images: np.ndarray, labels: np.ndarray, colour: ColourTransform | None = None,
          batch: int = 32, keep_ratios: bool = False, progress=None) -> dict:
    """Mean |dL/ds| and |s| per (channel, u, v) over images and blocks.

    ``colour`` None probes the RGB planes; otherwise the YUV planes of that
    transform (Y level-shifted by 128, U and V centred), mapped back to RGB
    by the exact linear inverse before the model. With ``keep_ratios`` it also
    returns g_B/g_G and g_R/g_G of every coefficient (for Theorem 2).
    """
    import torch
    import torch.nn.functional as F

    from .dct import block_dct_t, block_idct_t
    from .fit import normaliser, to_nchw

    model = loaded.module.eval()
    norm = normaliser(loaded)
    dev = loaded.device
    if colour is not None:
        phi = torch.tensor(colour.matrix(), dtype=torch.float32, device=dev)
        phi_inv = torch.tensor(colour.inverse_matrix(), dtype=torch.float32, device=dev)
    shift = torch.tensor([128.0, 0.0, 0.0] if colour is not None else [128.0] * 3, device=dev).view(1, 3, 1, 1)
    g_sum = torch.zeros(3, 8, 8, dtype=torch.float64)
    s_sum = torch.zeros(3, 8, 8, dtype=torch.float64)
    smax_sum = torch.zeros(3, 8, 8, dtype=torch.float64)
    count = 0
    n_img = 0
    r_bg, r_rg = [], []
    size = images.shape[1:3]
    for i in range(0, len(images), batch):
        x = to_nchw(images[i:i + batch], dev)
        y = torch.as_tensor(labels[i:i + batch], device=dev)
        planes = torch.einsum("ij,njhw->nihw", phi, x) if colour is not None else x
        s = block_dct_t(planes - shift).detach().requires_grad_(True)
        rec = block_idct_t(s, size) + shift
        rgb = torch.einsum("ij,njhw->nihw", phi_inv, rec) if colour is not None else rec
        loss = F.cross_entropy(model(norm(rgb)), y, reduction="sum")  # each image's own NLL
        (g,) = torch.autograd.grad(loss, s)
        g_sum += g.abs().sum(dim=(0, 2, 3)).double().cpu()
        s_abs = s.detach().abs()
        s_sum += s_abs.sum(dim=(0, 2, 3)).double().cpu()
        smax_sum += s_abs.amax(dim=(2, 3)).sum(dim=0).double().cpu()  # per-image max over blocks
        count += g.shape[0] * g.shape[2] * g.shape[3]
        n_img += g.shape[0]
        if keep_ratios:
            gg = g[:, 1]
            ok = gg.abs() > 1e-12
            r_bg.append((g[:, 2][ok] / gg[ok]).cpu().numpy())
            r_rg.append((g[:, 0][ok] / gg[ok]).cpu().numpy())
        if progress:
            progress(f"probing {'YUV' if colour is not None else 'RGB'} gradients", min(1.0, (i + batch) / len(images)))
    out = {"g_abs": (g_sum / count).numpy(), "s_abs": (s_sum / count).numpy(), "s_max": (smax_sum / n_img).numpy(),
           "blocks": count}
    if keep_ratios:
        out["ratio_bg"] = np.concatenate(r_bg) if r_bg else np.zeros(0)
        out["ratio_rg"] = np.concatenate(r_rg) if r_rg else np.zeros(0)
    return out


def fit_grace(images: np.ndarray, labels: np.ndarray, loaded, source_meta: dict, store: ArtifactStore,
              progress=None) -> Artifact:
    """Algorithm 2 up to the tables: probe RGB -> G-YUV weights -> probe G-YUV (and BT.601 for ablation)."""
    rgb = probe(loaded, images, labels, None, keep_ratios=True, progress=progress)
    weights, z1, z2 = theorem2(rgb["ratio_bg"], rgb["ratio_rg"])
    gyuv = ColourTransform.of(weights)
    yuv = probe(loaded, images, labels, gyuv, progress=progress)
    std = probe(loaded, images, labels, ColourTransform(*BT601), progress=progress)

    def r(a):
        return [[round(float(v), 10) for v in row.ravel()] for row in a]
    data = {
        "version": 1,
        "weights_gyuv": [round(w, 10) for w in gyuv.weights],
        "theorem2": {"z1_median_gB_over_gG": z1, "z2_median_gR_over_gG": z2, "clipped": bool(z1 <= 0.01 or z2 <= 0.01)},
        "gyuv": {"g_abs": r(yuv["g_abs"]), "s_abs": r(yuv["s_abs"]), "s_max": r(yuv["s_max"])},
        "bt601": {"g_abs": r(std["g_abs"]), "s_abs": r(std["s_abs"]), "s_max": r(std["s_max"])},
        "rgb": {"g_abs": r(rgb["g_abs"]), "s_abs": r(rgb["s_abs"]), "s_max": r(rgb["s_max"])},
        "blocks_per_probe": int(yuv["blocks"]),
    }
    theta_sum = {f"{k}/{a}": float((np.array(data[k]["g_abs"]) * np.array(data[k][a])).sum())
                 for k in ("gyuv", "bt601") for a in ("s_max", "s_abs")}
    meta = {**source_meta, "algorithm": "GRACE (Xie & Kim 2019) Alg. 2", "weights_gyuv": data["weights_gyuv"],
            "theta_sum": theta_sum, "loss": "cross-entropy (NLL), per image"}
    files = {"probe.json": json.dumps(data, sort_keys=True).encode()}
    return store.put(KIND, files, meta)


class GraceProbe:
    """An artifact's probe statistics, ready to turn a budget into tables.

    ``amplitude`` picks |s_n|: ``blockmax`` (default) is each probe image's
    largest |s_n| over its blocks, averaged over images, so that q_n = 2|s_n|
    really zeroes bin n in a typical image, which is what Eq. 2's bound
    assumes; ``mean`` is the mean |s_n| over all blocks (the literal reading,
    which leaves q_n = 2|s_n| < 1 -> 1 on near-empty bins and spends bits on
    noise there).
    """

    AMPLITUDE = {"blockmax": "s_max", "mean": "s_abs"}

    def __init__(self, art: Artifact):
        d = json.loads(art.read_bytes("probe.json"))
        self.artifact = art
        self.weights = tuple(d["weights_gyuv"])
        self.stats = {k: {a: np.array(d[k][a]).reshape(3, 8, 8) for a in ("g_abs", "s_abs", "s_max")}
                      for k in ("gyuv", "bt601", "rgb")}

    def gs(self, colour: str = "gyuv", amplitude: str = "blockmax") -> tuple[np.ndarray, np.ndarray]:
        st = self.stats[colour]
        return st["g_abs"], st[self.AMPLITUDE[amplitude]]

    def theta_sum(self, colour: str = "gyuv", amplitude: str = "blockmax") -> float:
        g, s = self.gs(colour, amplitude)
        return float((g * s).sum())

    def tables(self, budget: float | None = None, B: float | None = None, colour: str = "gyuv",
               amplitude: str = "blockmax") -> np.ndarray:
        g, s = self.gs(colour, amplitude)
        if not B:
            B = float(budget) * self.theta_sum(colour, amplitude)
        q = quant_tables(g, s, B)
        return np.clip(np.rint(np.nan_to_num(q, posinf=255.0)), 1, 255).astype(np.int64).reshape(3, 64)

    def colour(self, colour: str = "gyuv") -> ColourTransform:
        return ColourTransform.of(self.weights) if colour == "gyuv" else ColourTransform(*BT601)


# ----------------------------------------------------------------- codec ---

AUTO_PROBE_IMAGES = 128


def _auto_settings(params: dict) -> dict:
    from .fit import model_fingerprint
    return {"dataset": params["fit_dataset"], "model": model_fingerprint(params["fit_model"]),
            "n": params["probe_images"], "size": 32, "seed": 0, "v": 1}


def _auto_fit(params: dict, store: ArtifactStore) -> Artifact:
    from . import fit as F

    def build(st: ArtifactStore) -> Artifact:
        F.set_threads()
        x, y, loaded, src = F.prepare(params["fit_dataset"], params["fit_model"], params["probe_images"], 32, 0, "cpu")
        return fit_grace(x, y, loaded, src.meta(), st)
    return F.auto_artifact(KIND, _auto_settings(params), build, store)


class GraceCodec(Codec):
    """GRACE tables + G-YUV in a baseline JPEG (client: numpy + Pillow only)."""

    name = "grace"
    params_spec = {
        "artifact": Param(str, "", doc="grace-... artifact id from `hilbed fit grace`; empty: fit on first use "
                                        "against fit_model/fit_dataset"),
        "budget": Param(float, 0.05, 1e-6, 1.0, doc="loss budget B as a fraction of sum(theta) (1 = finest useful)"),
        "B": Param(float, 0.0, 0.0, None, doc="absolute per-block loss budget; overrides budget when > 0"),
        "colour": Param(str, "gyuv", choices=("gyuv", "bt601"), doc="G-YUV of Theorem 2, or JPEG's BT.601 (ablation)"),
        "amplitude": Param(str, "blockmax", choices=("blockmax", "mean"), doc="|s_n| for Eq. 2: per-image block "
                           "maximum averaged over images, or the mean over all blocks"),
        "headers": Param(str, "full", choices=HEADER_MODES, doc="full streams, or abbreviated with pre-shared tables"),
        "huffman": Param(str, "auto", choices=HUFFMAN_MODES, doc="optimized (per image) or standard (pre-shared) "
                         "Huffman tables; auto: optimized with full headers, standard when abbreviated"),
        "fit_dataset": Param(str, "synthetic", doc="auto-fit only: probe dataset"),
        "fit_model": Param(str, "synthetic-cnn", doc="auto-fit only: target model"),
        "probe_images": Param(int, AUTO_PROBE_IMAGES, 1, 100000, doc="auto-fit only: probe set size"),
    }

    def __init__(self, store: ArtifactStore | None = None, **params: Any):
        super().__init__(**params)
        p = self.params
        store = store or ArtifactStore()
        if p["artifact"]:
            art = store.get(p["artifact"])
            if not art.id.startswith(KIND + "-"):
                raise CodecParamsError("artifact", f"{art.id} is not a GRACE artifact")
        else:
            art = _auto_fit(p, store)
        self.probe = GraceProbe(art)
        self.artifact_id = art.id
        self.tables = self.probe.tables(p["budget"], p["B"], p["colour"], p["amplitude"])
        self.profile = JpegProfile(tables=self.tables, colour=self.probe.colour(p["colour"]),
                                   optimize=optimize_for(p["huffman"], p["headers"]), subsampling="4:4:4",
                                   headers=p["headers"])

    @classmethod
    def prepare(cls, params: dict) -> None:
        """Controller/runner hook: make sure the artifacts exist (fits on first use) before any stream starts."""
        cls(**params)

    def encode(self, image: np.ndarray) -> Encoded:
        data, hdr, full_hdr = self.profile.encode(image)
        return Encoded([data], header_bytes=hdr, meta={"header_bytes_full": full_hdr, "artifact": self.artifact_id})

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        if not chunks or len(chunks) < total_chunks:
            return None
        return self.profile.decode(b"".join(chunks))


# ------------------------------------------------------- fit protocol ---

FIT_HELP = "probe the target model's DCT-domain gradients (GRACE); one artifact serves every budget B"


def fit_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probe-images", type=int, default=AUTO_PROBE_IMAGES,
                        help=f"probe set size (default {AUTO_PROBE_IMAGES}; the paper used 15 large images)")
    parser.add_argument("--budgets", default="0.005,0.01,0.02,0.05,0.1,0.2,0.5",
                        help="budgets (fractions of sum theta) to summarise after the fit")


def fit_main(args: argparse.Namespace, store: ArtifactStore) -> Artifact:
    from . import fit as F
    F.set_threads(getattr(args, "threads", None))
    x, y, loaded, src = F.prepare(args.dataset, args.model, args.probe_images, args.size, args.seed, args.device,
                                  getattr(args, "progress", None))
    art = fit_grace(x, y, loaded, src.meta(), store, getattr(args, "progress", None))
    pr = GraceProbe(art)
    summary = []
    for b in [float(v) for v in str(args.budgets).split(",") if v]:
        t = pr.tables(b)
        summary.append({"budget": b, "B": b * pr.theta_sum(), "mean_q": [round(float(r.mean()), 1) for r in t]})
    args.summary = {"weights_gyuv": pr.weights, "theta_sum": pr.theta_sum(), "budgets": summary}
    return art
