"""Fitting GRACE (``hilbed fit grace``), controller-side (torch).

Probe the target model's gradient of its NLL loss with respect to 8x8
block-DCT coefficients (autograd through the inverse DCT, §4.3 / Fig. 4) on
a small probe set; the mean gradient amplitude |g_n| per frequency bin is
the model's spectral sensitivity, the mean coefficient amplitude |s_n|
bounds useful quantisation steps (q_n <= 2|s_n|, Eq. 2). Theorem 2 gives
the G-YUV luma weights from the medians of g_B/g_G and g_R/g_G over all RGB
DCT coefficients; the probe is then repeated in G-YUV (Algorithm 2, lines
6-8). The codec (:mod:`hilbed.nodes.codecs.grace`) turns the statistics into
tables.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hilbed.nodes.codecs import fitting as F
from hilbed.nodes.codecs.artifacts import Artifact, ArtifactStore
from hilbed.nodes.codecs.grace import AUTO_PROBE_IMAGES, KIND, GraceProbe
from hilbed.nodes.codecs.jpeg_tables import BT601, ColourTransform

# --------------------------------------------------------- Theorem 2 ---

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


# ----------------------------------------------------------- probing ---

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

    from hilbed.nodes.codecs.dct import block_dct_t, block_idct_t
    from hilbed.nodes.codecs.fitting import normaliser, to_nchw

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


# -------------------------------------------------- fit on first use ---

def _auto_settings(params: dict) -> dict:
    return {"dataset": params["fit_dataset"], "model": F.model_fingerprint(params["fit_model"]),
            "n": params["probe_images"], "size": 32, "seed": 0, "v": 1}


def auto_fit(params: dict, store: ArtifactStore) -> Artifact:
    """The probe artifact for a codec's ``fit_*`` params, fitted once per settings (file-locked)."""

    def build(st: ArtifactStore) -> Artifact:
        F.set_threads()
        x, y, loaded, src = F.prepare(params["fit_dataset"], params["fit_model"], params["probe_images"], 32, 0, "cpu")
        return fit_grace(x, y, loaded, src.meta(), st)
    return F.auto_artifact(KIND, _auto_settings(params), build, store)


# ------------------------------------------------------ fit protocol ---

FIT_HELP = "probe the target model's DCT-domain gradients (GRACE); one artifact serves every budget B"


def fit_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probe-images", type=int, default=AUTO_PROBE_IMAGES,
                        help=f"probe set size (default {AUTO_PROBE_IMAGES}; the paper used 15 large images)")
    parser.add_argument("--budgets", default="0.2,0.3,0.4,0.5,0.6",
                        help="budgets (fractions of sum theta) to summarise after the fit (default 0.2..0.6, the "
                             "range docs/codecs.md measures on CIFAR-10)")


def fit_main(args: argparse.Namespace, store: ArtifactStore) -> Artifact:
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
