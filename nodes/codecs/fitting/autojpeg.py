"""Fitting AutoJPEG (``hilbed fit autojpeg``), controller-side (torch).

A differentiable JPEG (§3.1-3.3) - colour transform Phi_w (Eq. 1), 8x8 block
DCT, quantisation by Q (3 x 8 x 8) with rounding whose backward pass is the
tanh-smoothed step (T = 5), dequantisation, IDCT, inverse colour - feeds the
target model. The compressed size is modelled as H = V + M bits (Eq. 3-6:
magnitude bits of the quantised coefficients plus 9 bits of run/size/sign per
non-zero), exact in the forward pass and with the straight-through
surrogates of Eq. 8-9 (V without floors, 9 * L1(X/Q)) in the backward pass.
Problem (11) - min loss s.t. H(x_i) <= C = S * H_raw - is solved by the
augmented Lagrangian / ADMM scheme of §3.4 (Alg. 1): per iteration an SGD
step on the model weights (optional fine-tuning, lr 1e-4), an SGD step on Q,
a projected-gradient step of w onto the simplex, and a projected dual ascent
step z <- [z + rho_z (H - C)]_+. Q starts at all ones, w at BT.601. The
constraint is used normalised, h = H / C - 1 <= 0, so one rho_z works for
every C (a rescaling of the same constraint). One artifact per constraint;
the codec (:mod:`hilbed.nodes.codecs.autojpeg`) picks among a set of them.
"""

from __future__ import annotations

import argparse
import io
import json
import math

import numpy as np

from hilbed.nodes.codecs import fitting as F
from hilbed.nodes.codecs.artifacts import Artifact, ArtifactStore
from hilbed.nodes.codecs.autojpeg import KIND
from hilbed.nodes.codecs.jpeg_tables import BT601, ColourTransform, JpegProfile, project_simplex

TANH_T = 5.0


# ----------------------------------------------- differentiable JPEG ---

def _torch():
    import torch
    return torch


def smooth_round(x, T: float = TANH_T):
    """R(x) = A(x - 0.5 - K) + K, K = floor(x): exact forward, tanh-smoothed step backward."""
    torch = _torch()

    class _R(torch.autograd.Function):
        @staticmethod
        def forward(ctx, inp):
            ctx.save_for_backward(inp)
            return torch.floor(inp + 0.5)

        @staticmethod
        def backward(ctx, grad):
            (inp,) = ctx.saved_tensors
            k = torch.floor(inp)
            t = torch.tanh(T * (inp - 0.5 - k))
            return grad * (0.5 * T) * (1.0 - t * t)

    return _R.apply(x)


def colour_matrix_t(w):
    """Phi_w of Eq. 1 as a differentiable 3x3 tensor."""
    torch = _torch()
    wr, wg, wb = w[0], w[1], w[2]
    return torch.stack([
        torch.stack([wr, wg, wb]),
        torch.stack([-0.5 * wr / (1 - wb), -0.5 * wg / (1 - wb), torch.ones_like(wr) * 0.5]),
        torch.stack([torch.ones_like(wr) * 0.5, -0.5 * wg / (1 - wr), -0.5 * wb / (1 - wr)]),
    ])


def estimate_bits(z):
    """H = V + M per image (bits) from Z = X / Q, shape (N, ...): exact forward, STE backward (Eq. 8-9).

    V = sum_j 2 + floor(log2 max(z+1/2, 1/2)) + floor(log2 max(-z+1/2, 1/2)); surrogate: no floors.
    M = 9 * ||R(z)||_0; surrogate: 9 * ||z||_1.
    """
    torch = _torch()
    half = torch.tensor(0.5, dtype=z.dtype, device=z.device)
    a = torch.log2(torch.maximum(z + 0.5, half))
    b = torch.log2(torch.maximum(-z + 0.5, half))
    v_soft = 2.0 + a + b
    v_hard = 2.0 + torch.floor(a) + torch.floor(b)
    v = v_soft + (v_hard - v_soft).detach()
    m_soft = 9.0 * z.abs()
    m_hard = 9.0 * (torch.floor(z.abs() + 0.5) != 0).to(z.dtype)
    m = m_soft + (m_hard - m_soft).detach()
    return (v + m).flatten(1).sum(1)


def estimate_bits_np(image: np.ndarray, tables: np.ndarray, colour: ColourTransform | None = None) -> float:
    """Eq. 3-6 for one uint8 RGB image (forward values only, numpy)."""
    from hilbed.nodes.codecs.dct import block_dct
    colour = colour or ColourTransform(*BT601)
    yuv = colour.forward_float(image) - np.array([128.0, 128.0, 128.0])
    X = block_dct(np.moveaxis(yuv, -1, 0))  # (3, hb, wb, 8, 8)
    q = np.asarray(tables, np.float64).reshape(3, 1, 1, 8, 8)
    z = X / q
    v = 2 + np.floor(np.log2(np.maximum(z + 0.5, 0.5))) + np.floor(np.log2(np.maximum(-z + 0.5, 0.5)))
    m = 9 * (np.floor(np.abs(z) + 0.5) != 0)
    return float((v + m).sum())


def diff_jpeg(x, Q, w, size):
    """x (N,3,H,W) in 0..255 -> (reconstruction in 0..255, Z = X/Q) through the smoothed codec (Eq. 10)."""
    torch = _torch()
    from hilbed.nodes.codecs.dct import block_dct_t, block_idct_t
    phi = colour_matrix_t(w)
    phi_inv = torch.linalg.inv(phi)
    shift = torch.tensor([128.0, 0.0, 0.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    yuv = torch.einsum("ij,njhw->nihw", phi, x) - shift
    X = block_dct_t(yuv)
    q = Q.view(1, 3, 1, 1, 8, 8)
    z = X / q
    rec = block_idct_t(smooth_round(z) * q, size) + shift
    rgb = torch.einsum("ij,njhw->nihw", phi_inv, rec)
    return rgb.clamp(0.0, 255.0), z


# -------------------------------------------------------------- ADMM ---

def _project_w(w: np.ndarray, eps: float = 0.01) -> np.ndarray:
    """Simplex projection kept eps away from the faces (w_r, w_b = 1 make Phi singular)."""
    return eps + (1 - 3 * eps) * project_simplex((w - eps) / (1 - 3 * eps))


def fit_constraint(images: np.ndarray, labels: np.ndarray, loaded, ratio: float, steps: int = 600,
                   min_steps: int = 400, batch: int = 64, lr_q: float = 0.5, lr_w: float = 1e-4,
                   rho_z: float = 0.05, finetune: bool = False, lr_model: float = 1e-4, tune_colour: bool = True,
                   q_param: str = "log", lr_decay: bool = True, seed: int = 0, progress=None) -> dict:
    """Algorithm 1 for one size constraint C = ratio * H_raw. Returns tables, weights, history.

    ``q_param='log'`` takes the SGD step on log Q (Q = exp u >= 1) rather than on Q: the size
    gradient scales like 1/q^2, so one step size on Q either crawls at large q or explodes
    near q = 1; on log Q it is even. ``lr_decay`` anneals the Q step (cosine, to 10 %) so
    the tables settle instead of wandering with the mini-batch noise.
    """
    torch = _torch()
    import copy

    import torch.nn.functional as F

    from hilbed.nodes.codecs.fitting import normaliser, to_nchw
    g = torch.Generator().manual_seed(seed)
    dev = loaded.device
    model = copy.deepcopy(loaded.module) if finetune else loaded.module
    model.eval()
    norm = normaliser(loaded)
    for p in model.parameters():
        p.requires_grad_(finetune)
    h, w_img = images.shape[1:3]
    C = ratio * h * w_img * 24.0
    # Q >= 1: either Q itself (the paper's SGD on Q) or u = log Q (SGD on the log; same fixed points)
    u = torch.zeros(3, 8, 8, dtype=torch.float32, device=dev, requires_grad=True)
    if q_param == "linear":
        u = torch.ones(3, 8, 8, dtype=torch.float32, device=dev, requires_grad=True)
    wv = torch.tensor(BT601, dtype=torch.float32, device=dev, requires_grad=tune_colour)
    z = 0.0
    hist = []
    n = len(images)
    window: list[float] = []
    for t in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=g).numpy()
        x = to_nchw(images[idx], dev)
        y = torch.as_tensor(labels[idx], device=dev)
        Q = torch.exp(u) if q_param == "log" else u
        rec, zz = diff_jpeg(x, Q, wv, (h, w_img))
        loss = F.cross_entropy(model(norm(rec)), y)
        H = estimate_bits(zz)
        hc = H / C - 1.0
        zeta = (0.5 * rho_z * torch.clamp(hc, min=0.0) ** 2 + z * hc).mean()
        total = loss + zeta
        params = [u] + ([wv] if tune_colour else []) + (list(model.parameters()) if finetune else [])
        grads = torch.autograd.grad(total, params, allow_unused=True)
        step_q = lr_q * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / steps))) if lr_decay else lr_q
        with torch.no_grad():
            k = 0
            u -= step_q * grads[0]                   # Eq. 14 (SGD on Q, or on log Q)
            if q_param == "log":
                u.clamp_(0.0, math.log(255.0))       # 1 <= Q <= 255 (baseline JPEG)
            else:
                u.clamp_(1.0, 255.0)
            k = 1
            if tune_colour:                          # Eq. 15 (projected gradient on the simplex)
                if grads[1] is not None:
                    wv.copy_(torch.as_tensor(_project_w(wv.detach().cpu().numpy().astype(np.float64)
                                                        - lr_w * grads[1].cpu().numpy()), dtype=torch.float32))
                k = 2
            if finetune:                             # Eq. 13 (SGD on the model, lr 1e-4)
                for p, gp in zip(model.parameters(), grads[k:]):
                    if gp is not None:
                        p -= lr_model * gp
        mean_hc = float(hc.detach().mean())
        z = max(0.0, z + rho_z * mean_hc)              # Eq. 16 (projected dual ascent)
        mean_bits = float(H.detach().mean())
        window.append(mean_bits)
        window = window[-20:]
        hist.append({"t": t, "loss": float(loss.detach()), "bits": mean_bits, "z": z})
        if progress and t % 10 == 0:
            progress(f"ratio {ratio:g}: step {t} loss {float(loss.detach()):.3f} bits {mean_bits:.0f}/{C:.0f} z {z:.3f}",
                     t / steps)
        if t + 1 >= min_steps and len(window) == 20 and np.mean(window) <= C:
            break                                     # "finishes when the size satisfies the constraint"
    with torch.no_grad():
        Q = (torch.exp(u) if q_param == "log" else u).clamp(1, 255)
    out = {
        "tables": np.rint(Q.detach().cpu().numpy()).clip(1, 255).astype(np.int64).reshape(3, 64),
        "weights": [float(v) for v in wv.detach().cpu().numpy()],
        "steps": len(hist), "final": hist[-1], "C_bits": C, "ratio": ratio,
    }
    if finetune:
        out["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return out


def measure_sizes(images: np.ndarray, tables: np.ndarray, colour: ColourTransform, optimize: bool = True) -> dict:
    """Real Pillow sizes of ``images`` with these tables: payload and sent bytes per header mode."""
    prof = JpegProfile(tables=tables, colour=colour, optimize=optimize, headers="abbreviated")
    full_sent, payload, abbr_sent = [], [], []
    for im in images:
        data, hdr, full_hdr = prof.encode(im)
        payload.append(len(data) - hdr)
        abbr_sent.append(len(data))
        full_sent.append(len(data) - hdr + full_hdr)
    f = lambda a, q: float(np.percentile(a, q))  # noqa: E731
    return {"payload_mean": float(np.mean(payload)), "payload_p95": f(payload, 95),
            "full_mean": float(np.mean(full_sent)), "full_p95": f(full_sent, 95),
            "abbreviated_mean": float(np.mean(abbr_sent)), "abbreviated_p95": f(abbr_sent, 95)}


def fit_autojpeg(images: np.ndarray, labels: np.ndarray, loaded, source_meta: dict, store: ArtifactStore,
                 ratios: list[float], progress=None, measure_n: int = 256, **kw) -> list[Artifact]:
    """One artifact per constraint ratio S (C = S x 24 bits x pixels)."""
    arts = []
    for r in ratios:
        res = fit_constraint(images, labels, loaded, r, progress=progress, **kw)
        colour = ColourTransform.of(res["weights"])
        sizes = {}
        for opt in (True, False):
            sizes["optimized" if opt else "standard"] = measure_sizes(images[:measure_n], res["tables"], colour, opt)
        est = float(np.mean([estimate_bits_np(im, res["tables"], colour) for im in images[:measure_n]]))
        params = {"version": 1, "tables": res["tables"].tolist(), "weights": [round(v, 10) for v in colour.weights]}
        files = {"params.json": json.dumps(params, sort_keys=True).encode()}
        if "state_dict" in res:
            import torch
            buf = io.BytesIO()
            torch.save(res["state_dict"], buf)
            files["model.pt"] = buf.getvalue()
        settings = {k: v for k, v in kw.items() if k != "progress"}
        meta = {**source_meta, "algorithm": "AutoJPEG (Xie et al.) Alg. 1, ADMM", "ratio": r, "C_bits": res["C_bits"],
                "C_bytes": res["C_bits"] / 8, "steps": res["steps"], "final": res["final"], "sizes": sizes,
                "estimated_bytes_mean": est / 8, "weights": params["weights"], "finetuned": "model.pt" in files,
                "settings": settings}
        arts.append(store.put(KIND, files, meta))
    return arts


# -------------------------------------------------- fit on first use ---

def auto_fit(params: dict, store: ArtifactStore) -> list[Artifact]:
    """The artifact set for a codec's ``fit_*`` params and ``ratios``, fitted once per settings (file-locked)."""
    settings = {"dataset": params["fit_dataset"], "model": F.model_fingerprint(params["fit_model"]),
                "ratios": list(params["ratios"]), "steps": params["fit_steps"], "n": 1024, "size": 32, "v": 1}

    def build(st: ArtifactStore) -> Artifact:
        F.set_threads()
        x, y, loaded, src = F.prepare(params["fit_dataset"], params["fit_model"], 1024, 32, 0, "cpu")
        arts = fit_autojpeg(x, y, loaded, src.meta(), st, list(params["ratios"]), steps=params["fit_steps"],
                            min_steps=min(100, params["fit_steps"]), batch=32, measure_n=128)
        return st.put("autojpegset", {"set.json": json.dumps([a.id for a in arts]).encode()},
                      {"members": [a.id for a in arts], "ratios": list(params["ratios"])})
    bundle = F.auto_artifact(KIND, settings, build, store)
    return [store.get(a) for a in json.loads(bundle.read_bytes("set.json"))]


# ------------------------------------------------------ fit protocol ---

FIT_RATIOS = (0.06, 0.09, 0.12, 0.15, 0.18, 0.22)  # `hilbed fit autojpeg` default: the measured set in docs/codecs.md

FIT_HELP = "learn JPEG tables + colour weights under size constraints (AutoJPEG, ADMM); one artifact per constraint"


def fit_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ratios", default=",".join(map(str, FIT_RATIOS)),
                        help="size constraints S: C = S x 24 bits x pixels (comma list; one artifact each; default "
                             "the set docs/codecs.md measures on CIFAR-10)")
    parser.add_argument("--images", type=int, default=4096, help="training images (default 4096)")
    parser.add_argument("--steps", type=int, default=600, help="max ADMM iterations per constraint")
    parser.add_argument("--min-steps", type=int, default=400, help="iterations before the stop test")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr-q", type=float, default=0.5, help="step on Q (on log Q with --q-param log)")
    parser.add_argument("--no-lr-decay", action="store_true", help="constant step on Q")
    parser.add_argument("--lr-w", type=float, default=1e-4, help="projected-gradient step on the colour weights")
    parser.add_argument("--rho-z", type=float, default=0.05, help="dual step / penalty weight")
    parser.add_argument("--q-param", choices=("log", "linear"), default="log")
    parser.add_argument("--no-colour", action="store_true", help="keep BT.601 (no YUV tuning)")
    parser.add_argument("--finetune", action="store_true", help="also fine-tune the model (lr 1e-4, stored in the artifact)")
    parser.add_argument("--lr-model", type=float, default=1e-4)


def fit_main(args: argparse.Namespace, store: ArtifactStore) -> list[Artifact]:
    F.set_threads(getattr(args, "threads", None))
    prog = getattr(args, "progress", None)
    x, y, loaded, src = F.prepare(args.dataset, args.model, args.images, args.size, args.seed, args.device, prog)
    ratios = [float(r) for r in str(args.ratios).split(",") if r]
    arts = fit_autojpeg(x, y, loaded, src.meta(), store, ratios, progress=prog, steps=args.steps,
                        min_steps=args.min_steps, batch=args.batch, lr_q=args.lr_q, lr_w=args.lr_w, rho_z=args.rho_z,
                        finetune=args.finetune, lr_model=args.lr_model, tune_colour=not args.no_colour,
                        q_param=args.q_param, lr_decay=not args.no_lr_decay, seed=args.seed)
    args.summary = {"set": [a.id for a in arts],
                    "sizes": {a.id: {"ratio": a.meta["ratio"], "C_bytes": a.meta["C_bytes"],
                                     "payload_mean": a.meta["sizes"]["optimized"]["payload_mean"],
                                     "estimated_bytes_mean": a.meta["estimated_bytes_mean"]} for a in arts}}
    return arts
