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
from hilbed.nodes.codecs.grace import AUTO_PROBE_IMAGES, HUFFMAN_FILE, KIND, GraceProbe
from hilbed.nodes.codecs.jpeg_tables import (
    BT601,
    ColourTransform,
    HuffTable,
    JpegProfile,
    huffman_to_json,
    optimal_table,
    scan_symbols_fast,
)

#: budgets (fractions of sum theta) the shared Huffman tables are fitted for; a codec uses the nearest
HUFFMAN_BUDGETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0)
HUFFMAN_CONFIGS = (("gyuv", "4:4:4"), ("bt601", "4:4:4"), ("gyuv", "4:2:0"), ("bt601", "4:2:0"))

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


def probe_420(loaded, images: np.ndarray, labels: np.ndarray, colour: ColourTransform, batch: int = 32,
              progress=None) -> dict:
    """:func:`probe` for 4:2:0: U and V 2x2-averaged before their block DCT and upsampled bilinearly (libjpeg's
    "fancy" triangle upsampling) after the inverse, so their |g|, |s| are those of the subsampled planes' blocks
    (each covering 16x16 pixels); Y as in :func:`probe`."""
    import torch
    import torch.nn.functional as TF

    from hilbed.nodes.codecs.dct import block_dct_t, block_idct_t
    from hilbed.nodes.codecs.fitting import normaliser, to_nchw

    model = loaded.module.eval()
    norm = normaliser(loaded)
    dev = loaded.device
    phi = torch.tensor(colour.matrix(), dtype=torch.float32, device=dev)
    phi_inv = torch.tensor(colour.inverse_matrix(), dtype=torch.float32, device=dev)
    size = images.shape[1:3]
    csize = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    acc = {k: torch.zeros(3, 8, 8, dtype=torch.float64) for k in ("g", "s", "smax")}
    count = torch.zeros(3, dtype=torch.float64)
    n_img = 0
    for i in range(0, len(images), batch):
        x = to_nchw(images[i:i + batch], dev)
        y = torch.as_tensor(labels[i:i + batch], device=dev)
        planes = torch.einsum("ij,njhw->nihw", phi, x)
        lum = block_dct_t(planes[:, :1] - 128.0).detach().requires_grad_(True)
        chroma = TF.avg_pool2d(planes[:, 1:], 2, ceil_mode=True)
        chr_s = block_dct_t(chroma).detach().requires_grad_(True)
        rec_y = block_idct_t(lum, size) + 128.0
        rec_c = TF.interpolate(block_idct_t(chr_s, csize), size=size, mode="bilinear", align_corners=False)
        rgb = torch.einsum("ij,njhw->nihw", phi_inv, torch.cat([rec_y, rec_c], 1))
        loss = TF.cross_entropy(model(norm(rgb)), y, reduction="sum")
        g_y, g_c = torch.autograd.grad(loss, (lum, chr_s))
        for sl, g, sv in ((slice(0, 1), g_y, lum), (slice(1, 3), g_c, chr_s)):
            a = sv.detach().abs()
            acc["g"][sl] += g.abs().sum(dim=(0, 2, 3)).double().cpu()
            acc["s"][sl] += a.sum(dim=(0, 2, 3)).double().cpu()
            acc["smax"][sl] += a.amax(dim=(2, 3)).sum(dim=0).double().cpu()
            count[sl] += g.shape[0] * g.shape[2] * g.shape[3]
        n_img += x.shape[0]
        if progress:
            progress("probing 4:2:0 YUV gradients", min(1.0, (i + batch) / len(images)))
    c = count.view(3, 1, 1)
    return {"g_abs": (acc["g"] / c).numpy(), "s_abs": (acc["s"] / c).numpy(), "s_max": (acc["smax"] / n_img).numpy()}


def fit_huffman_fast(streams, min_count: int = 1) -> dict[tuple[int, int], HuffTable]:
    """:func:`hilbed.nodes.codecs.jpeg_tables.fit_huffman` on the fast (numpy) symbol parser."""
    hist: dict[tuple[int, int], np.ndarray] = {}
    for full in streams:
        syms, _ = scan_symbols_fast(full)
        for key in {(int(a), int(b)) for a, b in syms[:, :2]}:
            sel = (syms[:, 0] == key[0]) & (syms[:, 1] == key[1])
            hist[key] = hist.get(key, 0) + np.bincount(syms[sel, 2], minlength=256)
    legal_dc = np.zeros(256, bool)
    legal_dc[:12] = True
    legal_ac = np.zeros(256, bool)
    legal_ac[[r << 4 | s for r in range(16) for s in range(1, 11)] + [0x00, 0xF0]] = True
    out = {}
    for (tc, th), h in hist.items():
        h = h.copy()
        legal = legal_ac if tc else legal_dc
        if min_count:
            h[legal] = np.maximum(h[legal], min_count)
        out[(tc, th)] = optimal_table(h)
    return out


class _Files:
    def __init__(self, files: dict[str, bytes]):
        self.files = files

    def read_bytes(self, name: str) -> bytes:
        return self.files[name]


def fit_shared_huffman(probe_json: bytes, images: np.ndarray, budgets=HUFFMAN_BUDGETS, configs=HUFFMAN_CONFIGS,
                       amplitude: str = "blockmax", progress=None) -> dict:
    """Huffman tables optimised on ``images`` for every (colour, subsampling, budget): what ``huffman: shared``
    pre-shares. Streams are libjpeg's (standard tables), their symbols counted, T.81 K.2 tables built."""
    pr = GraceProbe(_Files({"probe.json": probe_json}))
    sets = []
    todo = [(c, ss, b) for c, ss in configs for b in budgets]
    for i, (colour, sub, b) in enumerate(todo):
        prof = JpegProfile(tables=pr.tables(b, None, colour, amplitude), colour=pr.colour(colour), optimize=False,
                           subsampling=sub)
        tables = fit_huffman_fast(prof._full(x) for x in images)
        sets.append({"colour": colour, "subsampling": sub, "amplitude": amplitude, "budget": float(b),
                     "tables": huffman_to_json(tables)})
        if progress:
            progress("fitting shared Huffman tables", (i + 1) / len(todo))
    return {"version": 1, "images": int(len(images)), "sets": sets}


def fit_grace(images: np.ndarray, labels: np.ndarray, loaded, source_meta: dict, store: ArtifactStore,
              progress=None, huffman_images: np.ndarray | None = None, huffman_meta: dict | None = None) -> Artifact:
    """Algorithm 2 up to the tables: probe RGB -> G-YUV weights -> probe G-YUV (and BT.601 for ablation).

    With ``huffman_images``, also the shared Huffman tables (:func:`fit_shared_huffman`) in ``huffman.json``.
    """
    rgb = probe(loaded, images, labels, None, keep_ratios=True, progress=progress)
    weights, z1, z2 = theorem2(rgb["ratio_bg"], rgb["ratio_rg"])
    gyuv = ColourTransform.of(weights)
    yuv = probe(loaded, images, labels, gyuv, progress=progress)
    std = probe(loaded, images, labels, ColourTransform(*BT601), progress=progress)

    sub = {k: probe_420(loaded, images, labels, ct, progress=progress)
           for k, ct in (("gyuv420", gyuv), ("bt601420", ColourTransform(*BT601)))}

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
        **{k: {"g_abs": r(v["g_abs"]), "s_abs": r(v["s_abs"]), "s_max": r(v["s_max"])} for k, v in sub.items()},
    }
    theta_sum = {f"{k}/{a}": float((np.array(data[k]["g_abs"]) * np.array(data[k][a])).sum())
                 for k in ("gyuv", "bt601") for a in ("s_max", "s_abs")}
    meta = {**source_meta, "algorithm": "GRACE (Xie & Kim 2019) Alg. 2", "weights_gyuv": data["weights_gyuv"],
            "theta_sum": theta_sum, "loss": "cross-entropy (NLL), per image"}
    files = {"probe.json": json.dumps(data, sort_keys=True).encode()}
    if huffman_images is not None and len(huffman_images):
        files[HUFFMAN_FILE] = json.dumps(fit_shared_huffman(files["probe.json"], huffman_images, progress=progress),
                                         sort_keys=True).encode()
        meta["huffman"] = {"images": int(len(huffman_images)), **(huffman_meta or {})}
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
    parser.add_argument("--huffman-images", type=int, default=0,
                        help="also fit shared Huffman tables (`huffman: shared`) on this many images of --dataset "
                             "(seeded, after the probe images' draw) for colours gyuv/bt601 x 4:4:4/4:2:0 x budgets "
                             f"{','.join(map(str, HUFFMAN_BUDGETS))}; 0: none (default)")


def fit_main(args: argparse.Namespace, store: ArtifactStore) -> Artifact:
    F.set_threads(getattr(args, "threads", None))
    x, y, loaded, src = F.prepare(args.dataset, args.model, args.probe_images, args.size, args.seed, args.device,
                                  getattr(args, "progress", None))
    hx = None
    if args.huffman_images:
        hx, _ = F.load_images(F.open_dataset(args.dataset, args.size, "train", args.huffman_images, args.seed),
                              args.huffman_images, args.seed + 1)
    art = fit_grace(x, y, loaded, src.meta(), store, getattr(args, "progress", None), hx,
                    {"dataset": F.dataset_spec(args.dataset), "seed": args.seed + 1} if hx is not None else None)
    pr = GraceProbe(art)
    summary = []
    for b in [float(v) for v in str(args.budgets).split(",") if v]:
        t = pr.tables(b)
        summary.append({"budget": b, "B": b * pr.theta_sum(), "mean_q": [round(float(r.mean()), 1) for r in t]})
    args.summary = {"weights_gyuv": pr.weights, "theta_sum": pr.theta_sum(), "budgets": summary}
    return art
