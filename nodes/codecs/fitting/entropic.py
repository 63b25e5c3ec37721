"""Training and evaluating the supervised-compression families
(``hilbed fit entropic|factorized|crbq``), controller-side.

``entropic``: stage 1 distils the teacher's layer1 features with a rate term
weighted by ``beta``; stage 2 freezes the encoder (and prior) and fine-tunes
decoder + tail with KD (alpha 0.5, temperature 1). Sweeping beta gives the
rate-accuracy curve. ``factorized`` trains for rate-distortion with weight
``lmbda``. ``crbq`` trains its head by generalised head-network distillation
(layer1..layer3 features of the frozen teacher) and quantises the
bottleneck to 8 bits per image after training.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from hilbed.nodes.codecs.artifacts import Artifact, ArtifactStore
from hilbed.nodes.codecs.entropic import FAMILIES, load_split
from hilbed.nodes.codecs.nets.entropic import (
    CrBqArch,
    FactorizedArch,
    StudentArch,
    build_crbq,
    build_factorized,
    build_student,
)

# ---------------------------------------------------------- training ---

@dataclass(frozen=True)
class SplitFit:
    """Settings shared by the three fits; ``small`` trains in CPU minutes, ``full`` is for a GPU."""

    epochs1: float = 3.0
    epochs2: float = 3.0     # entropic: stage 2 (KD fine-tuning); crbq/factorized ignore it
    batch: int = 64
    lr1: float = 1e-3        # Adam, stage 1 (paper: 1e-3)
    lr2: float = 5e-4        # stage 2 learning rate
    opt2: str = "adam"       # stage 2 optimizer: adam, or sgd (momentum 0.9, weight decay 5e-4, lr 1e-3: the paper's,
                             # made for ImageNet-length runs; Adam converges in the few epochs a CPU affords)
    alpha: float = 0.5       # KD weight of the hard-label term (paper 0.5)
    temperature: float = 1.0  # KD temperature (paper 1)
    beta: float = 0.05       # entropic: rate weight (per bit per input pixel)
    lmbda: float = 0.01      # factorized: distortion weight (lambda * 255^2 * MSE + bpp)
    prior_steps: int = 400   # entropic/factorized: refit the prior to the final latents (encoder frozen after)
    augment: bool = True
    limit: int | None = None
    seed: int = 0
    device: str = "auto"
    threads: int = 1


PRESETS = {
    "tiny": SplitFit(epochs1=0.5, epochs2=0.5, batch=32, limit=256, prior_steps=20),
    "small": SplitFit(),
    # CPU: ~30-38 min on one core; beta 0.035 -> 154.7 B at 81.70 % on cifar10:dev, 0.54x JPEG q75 (issue 18)
    "medium": SplitFit(epochs1=6, epochs2=8),
    "full": SplitFit(epochs1=30, epochs2=20, batch=128),
}


def _setup(data, teacher_spec, fit: SplitFit, overrides: dict):
    import torch

    from hilbed.nodes.codecs.fitting.neural import device_for, load_teacher, resolve_model_spec, set_threads
    fit = replace(fit, **{k: v for k, v in overrides.items() if k in SplitFit.__dataclass_fields__ and v is not None})
    set_threads(fit.threads)
    torch.manual_seed(fit.seed)
    data = data.subset(fit.limit, fit.seed)
    dev = device_for(fit.device)
    spec = resolve_model_spec(teacher_spec)
    teacher = load_teacher(spec, dev, int(data.x.shape[1]))
    return fit, data, dev, spec, teacher


def _arch(cls, size: int, overrides: dict, **fixed):
    a = cls(size=size, **fixed)
    return replace(a, **{k: v for k, v in overrides.items() if k in cls.__dataclass_fields__ and v is not None
                         and k not in fixed and k != "size"})


def init_from_teacher(net, resnet) -> None:
    """Student ends from the teacher: conv1 with bn1 folded in, and layer1's blocks."""
    import torch
    conv, bn = resnet.conv1, resnet.bn1
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        net["encoder"][0].weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        net["encoder"][0].bias.copy_(bn.bias - bn.running_mean * scale)
    net["decoder"][-1].load_state_dict(resnet.layer1.state_dict())


def _rate_distortion_optimizer(net, main: list, lr: float):
    """Adam with the prior's density parameters at 10x the rate: they must track the latents quickly."""
    import torch
    prior = {id(p) for n_, p in net["eb"].named_parameters() if not n_.endswith("quantiles")}
    return torch.optim.Adam([{"params": [p for p in main if id(p) not in prior]},
                             {"params": [p for p in main if id(p) in prior], "lr_scale": 10.0}], lr=lr)


def refit_prior(net, images: np.ndarray, dev, fit, progress=None, n: int = 4000) -> float:
    """Fit the prior to the final encoder's latents (the encoder is frozen from here on), then build the
    coder's CDF tables (``update``). Returns the bits per image of the refitted prior on those latents."""
    import torch

    from hilbed.nodes.codecs.nets.common import to_unit
    eb = net["eb"]
    enc = net["encoder"].eval()
    with torch.no_grad():
        sel = images[: min(n, len(images))]
        ys = torch.cat([enc(to_unit(sel[i:i + 250], dev)) for i in range(0, len(sel), 250)])
    density = [p for n_, p in eb.named_parameters() if not n_.endswith("quantiles")]
    opt = torch.optim.Adam(density, lr=1e-2)
    opt_aux = torch.optim.Adam([eb.quantiles], lr=1e-2)
    gen = torch.Generator().manual_seed(fit.seed + 7)
    steps = fit.prior_steps
    eb.train()
    bits = float("nan")
    for k in range(steps):
        if k == int(steps * 0.7):
            for g in opt.param_groups:
                g["lr"] = 1e-3
        idx = torch.randint(0, len(ys), (min(64, len(ys)),), generator=gen)
        _, lik = eb(ys[idx.to(ys.device)])
        loss = _bits(lik)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        a = eb.loss()
        opt_aux.zero_grad(set_to_none=True)
        a.backward()
        opt_aux.step()
        bits = loss.item()
    if progress:
        progress(f"prior refitted: {bits / 8:.1f} bytes per image", 1.0)
    eb.update(force=True, update_quantiles=True)
    net["encoder"].train()
    return bits


def _rate_distortion_step(net, opt, opt_aux, params, loss) -> float:
    """One step of a learned-entropy-bottleneck model: the main loss (distortion and
    rate), then compressai's auxiliary loss that fits the bottleneck's quantiles."""
    import torch
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    opt.step()
    aux = net["eb"].loss()
    opt_aux.zero_grad(set_to_none=True)
    aux.backward()
    opt_aux.step()
    return aux.item()


def _bits(likelihoods):
    import torch
    return -torch.log2(likelihoods).sum() / likelihoods.shape[0]


def _finish(kind: str, net, arch, fit, data, spec, dev, results: dict, store, extra: dict | None = None) -> Artifact:
    import torch

    from hilbed.nodes.codecs.fitting.neural import json_safe, state_to_npz
    files = {"weights.npz": state_to_npz(net.state_dict())}
    meta = json_safe({"family": kind, "arch": asdict(arch), **(extra or {}),
                      "fit": {**asdict(fit), "teacher": spec, "data": data.source, "n_train": len(data),
                              "device": str(dev), "torch": torch.__version__},
                      "results": results})
    return (store or ArtifactStore()).put(kind, files, meta)


def _mean_payload_bytes(net, x: np.ndarray, family: str, batch: int = 250) -> float:
    """Mean coded bytes per image over ``x`` (the actual entropy coder)."""
    import torch

    from hilbed.nodes.codecs.nets.common import to_unit
    total, n = 0, 0
    net_cpu = net.to("cpu").eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            y = net_cpu["encoder"](to_unit(x[i:i + batch]))
            if family == "crbq":
                total += y[0].numel() * len(y)
            else:
                total += sum(len(s) for s in net_cpu["eb"].compress(y))
            n += len(y)
    return total / max(1, n)


def fit_entropic(data, teacher_spec: str, fit: SplitFit | None = None, store: ArtifactStore | None = None,
                 progress=None, **overrides: Any) -> Artifact:
    """Two-stage entropic student training (Matsubara et al., supplement 5.2) for a CIFAR ResNet teacher."""
    import torch
    import torch.nn.functional as F

    from hilbed.nodes.codecs.fitting.neural import Schedule, augment, kd_loss, train_loop
    from hilbed.nodes.codecs.nets.common import tail_config, to_unit
    fit, data, dev, spec, teacher = _setup(data, teacher_spec, fit or PRESETS["small"], overrides)
    resnet = teacher.resnet()
    arch = _arch(StudentArch, int(data.x.shape[1]), overrides, feature_channels=resnet.conv1.out_channels,
                 blocks=len(resnet.layer1))
    tail_cfg = tail_config(resnet)
    net = build_student(arch, tail_cfg)
    if arch.teacher_init:
        init_from_teacher(net, resnet)
    net["tail"].load_state_dict({k: v for k, v in resnet.state_dict().items()
                                 if k.split(".")[0] in ("layer2", "layer3", "linear")})
    net = net.to(dev)
    x_all, y_all = torch.from_numpy(data.x), torch.from_numpy(data.y)
    gen = torch.Generator().manual_seed(fit.seed + 1)
    pixels = arch.size * arch.size
    t0 = time.monotonic()

    def batch(idx):
        x = to_unit(x_all[idx], dev)
        return augment(x, gen) if fit.augment else x

    # stage 1: mimic the teacher's layer1 output, plus beta * rate
    main = [p for n_, p in net.named_parameters() if not n_.startswith("tail.") and not n_.endswith("quantiles")]
    aux = [p for n_, p in net.named_parameters() if n_.endswith("quantiles")]
    opt = _rate_distortion_optimizer(net, main, fit.lr1)
    opt_aux = torch.optim.Adam(aux, lr=1e-3)
    net.train()

    def step1(idx, frac):
        x = batch(idx)
        with torch.no_grad():
            target = teacher.stage1(x)
        y_hat, lik = net["eb"](net["encoder"](x))
        dist = F.mse_loss(net["decoder"](y_hat), target)
        bpp = _bits(lik) / pixels
        aux = _rate_distortion_step(net, opt, opt_aux, main, dist + fit.beta * bpp)
        return {"feat_mse": dist.item(), "bpp": bpp.item(), "aux": aux}

    r1 = train_loop(step1, len(data), fit.batch, fit.epochs1, [(opt, Schedule(fit.lr1, (0.5, 0.8)))], fit.seed,
                    progress, "entropic stage 1 (feature distillation + rate)")
    r1["prior_refit_bits"] = refit_prior(net, data.x, dev, fit, progress)

    # stage 2: encoder and prior frozen (rounding, as on the wire); decoder + tail fine-tuned with KD
    for p in list(net["encoder"].parameters()) + list(net["eb"].parameters()):
        p.requires_grad_(False)
    net["encoder"].eval(); net["eb"].eval()
    trainable = list(net["decoder"].parameters()) + list(net["tail"].parameters())
    if fit.opt2 == "sgd":
        opt2 = torch.optim.SGD(trainable, lr=fit.lr2, momentum=0.9, weight_decay=5e-4)
    else:
        opt2 = torch.optim.Adam(trainable, lr=fit.lr2)
    net["decoder"].train(); net["tail"].train()

    def step2(idx, frac):
        x = batch(idx)
        with torch.no_grad():
            t_logits = teacher(x)
            y_hat = net["eb"](net["encoder"](x), training=False)[0]
        logits = net["tail"](net["decoder"](y_hat))
        loss = kd_loss(logits, t_logits, y_all[idx].to(dev), fit.alpha, fit.temperature)
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()
        return {"kd": loss.item()}

    r2 = train_loop(step2, len(data), fit.batch, fit.epochs2, [(opt2, Schedule(fit.lr2, (0.7,)))], fit.seed + 2,
                    progress, "entropic stage 2 (KD, encoder frozen)") if fit.epochs2 > 0 else {}
    net.eval()
    results = {"stage1": r1, "stage2": r2, "fit_seconds": round(time.monotonic() - t0, 1),
               "train_bytes_per_image": round(_mean_payload_bytes(net, data.x[:1000], "entropic"), 1)}
    return _finish("entropic", net.to("cpu"), arch, fit, data, spec, dev, results, store, {"tail": tail_cfg})


def fit_factorized(data, teacher_spec: str, fit: SplitFit | None = None, store: ArtifactStore | None = None,
                   progress=None, **overrides: Any) -> Artifact:
    """Factorized-prior input compression trained for lambda * 255^2 * MSE + bpp (Balle et al. 2018)."""
    import torch
    import torch.nn.functional as F

    from hilbed.nodes.codecs.fitting.neural import Schedule, augment, train_loop
    from hilbed.nodes.codecs.nets.common import to_unit
    fit, data, dev, spec, _ = _setup(data, teacher_spec, fit or PRESETS["small"], overrides)
    arch = _arch(FactorizedArch, int(data.x.shape[1]), overrides)
    if arch.size % (2 ** arch.layers):
        raise ValueError(f"size {arch.size} is not a multiple of 2^{arch.layers}")
    net = build_factorized(arch).to(dev)
    x_all = torch.from_numpy(data.x)
    gen = torch.Generator().manual_seed(fit.seed + 1)
    pixels = arch.size * arch.size
    main = [p for n_, p in net.named_parameters() if not n_.endswith("quantiles")]
    aux = [p for n_, p in net.named_parameters() if n_.endswith("quantiles")]
    opt = _rate_distortion_optimizer(net, main, fit.lr1)
    opt_aux = torch.optim.Adam(aux, lr=1e-3)
    t0 = time.monotonic()
    net.train()

    def step(idx, frac):
        x = to_unit(x_all[idx], dev)
        if fit.augment:
            x = augment(x, gen)
        y_hat, lik = net["eb"](net["encoder"](x))
        mse = F.mse_loss(net["decoder"](y_hat), x)
        bpp = _bits(lik) / pixels
        aux = _rate_distortion_step(net, opt, opt_aux, main, fit.lmbda * 255 ** 2 * mse + bpp)
        return {"mse": mse.item(), "bpp": bpp.item(), "aux": aux}

    r1 = train_loop(step, len(data), fit.batch, fit.epochs1, [(opt, Schedule(fit.lr1, (0.6, 0.85)))], fit.seed,
                    progress, "factorized (rate-distortion)")
    r1["prior_refit_bits"] = refit_prior(net, data.x, dev, fit, progress)
    net.eval()
    results = {"train": r1, "fit_seconds": round(time.monotonic() - t0, 1),
               "train_bytes_per_image": round(_mean_payload_bytes(net, data.x[:1000], "factorized"), 1)}
    return _finish("factorized", net.to("cpu"), arch, fit, data, spec, dev, results, store)


def fit_crbq(data, teacher_spec: str, fit: SplitFit | None = None, store: ArtifactStore | None = None,
             progress=None, **overrides: Any) -> Artifact:
    """Channel reduction + bottleneck quantisation: GHND-trained head, 8-bit bottleneck after training."""
    import torch
    import torch.nn.functional as F

    from hilbed.nodes.codecs.fitting.neural import Schedule, augment, train_loop
    from hilbed.nodes.codecs.nets.common import tail_config, to_unit
    fit, data, dev, spec, teacher = _setup(data, teacher_spec, fit or PRESETS["small"], overrides)
    resnet = teacher.resnet()
    arch = _arch(CrBqArch, int(data.x.shape[1]), overrides, feature_channels=resnet.conv1.out_channels)
    tail_cfg = tail_config(resnet)
    net = build_crbq(arch, tail_cfg)
    net["tail"].load_state_dict({k: v for k, v in resnet.state_dict().items()
                                 if k.split(".")[0] in ("layer2", "layer3", "linear")})
    for p in net["tail"].parameters():
        p.requires_grad_(False)
    net = net.to(dev)
    x_all = torch.from_numpy(data.x)
    gen = torch.Generator().manual_seed(fit.seed + 1)
    head = list(net["encoder"].parameters()) + list(net["decoder"].parameters())
    opt = torch.optim.Adam(head, lr=fit.lr1)
    t0 = time.monotonic()
    net["encoder"].train(); net["decoder"].train(); net["tail"].eval()

    def step(idx, frac):
        x = to_unit(x_all[idx], dev)
        if fit.augment:
            x = augment(x, gen)
        with torch.no_grad():
            t1, t2, t3, _ = teacher.features(x)
        f1 = net["decoder"](net["encoder"](x))
        f2, f3, _ = net["tail"](f1, return_features=True)
        loss = F.mse_loss(f1, t1) + F.mse_loss(f2, t2) + F.mse_loss(f3, t3)   # GHND: sum over stages
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"ghnd": loss.item()}

    r1 = train_loop(step, len(data), fit.batch, fit.epochs1, [(opt, Schedule(fit.lr1, (0.5, 0.75)))], fit.seed,
                    progress, "crbq (generalised head-network distillation)")
    net.eval()
    hw = arch.size // 4
    results = {"train": r1, "fit_seconds": round(time.monotonic() - t0, 1),
               "train_bytes_per_image": 4 + arch.bottleneck * hw * hw}
    return _finish("crbq", net.to("cpu"), arch, fit, data, spec, dev, results, store, {"tail": tail_cfg})


FIT_FUNCTIONS = {"entropic": fit_entropic, "factorized": fit_factorized, "crbq": fit_crbq}

#: the one setting a scenario sweeps per family when it fits on first use (``fit_beta``, ``fit_bottleneck``)
FIRST_USE_KNOB = {"entropic": "beta", "crbq": "bottleneck"}


def auto_artifact(family: str, dataset: str, model: str, preset: str, size: int, knob: float,
                  store: ArtifactStore | None = None, progress=None) -> Artifact:
    """The ``family`` artifact for these settings, fitted on first use (file-locked: client and edge fit once).

    The same settings from `hilbed fit FAMILY --preset P --beta B` (or ``--bottleneck``) fit the same
    model; this path keys them by dataset, teacher fingerprint, preset, size and the knob.
    """
    from hilbed.nodes.codecs import fitting as F
    name = FIRST_USE_KNOB[family]
    settings = {"dataset": F.dataset_spec(dataset), "model": F.model_fingerprint(model), "preset": preset,
                "size": int(size), name: knob, "seed": 0}

    def build(st: ArtifactStore) -> Artifact:
        from hilbed.nodes.codecs.fitting.neural import load_images
        data = load_images(F.dataset_spec(dataset), int(size), PRESETS[preset].limit, 0)
        return FIT_FUNCTIONS[family](data, F.model_spec(model), fit=PRESETS[preset], store=st, progress=progress,
                                     **{name: knob})
    return F.auto_artifact(family, settings, build, store)


# -------------------------------------------------------- evaluation ---

def evaluate_split(artifact_id: str, x: np.ndarray, y: np.ndarray, model_spec: str | None = None,
                   store: ArtifactStore | None = None, batch: int = 250) -> dict:
    """Top-1 and mean payload/header bytes over ``x`` through the real coder.

    ``entropic``/``crbq`` predict with their own tail; ``factorized`` feeds the
    decoded pixels to ``model_spec`` (the edge's model).
    """
    import torch

    from hilbed.nodes.workload.models import load_model
    m = load_split(artifact_id, store)
    clf = load_model(model_spec, "auto", m.arch.size) if m.family == "factorized" else None
    correct, payload, header = 0, 0, 0
    for i in range(0, len(x), batch):
        enc = m.encode(x[i:i + batch])
        payload += sum(len(p) - h for p, h in enc)
        header += sum(h for _, h in enc)
        y_hat = m.latent_from_bytes([p for p, _ in enc])
        if m.family == "factorized":
            pred = clf.predict(m.pixels(y_hat)).argmax(1)
        else:
            pred = m.logits_from_features(m.features(y_hat)).argmax(1).cpu().numpy()
        correct += int((pred == y[i:i + batch]).sum())
    del torch
    n = max(1, len(x))
    return {"artifact": artifact_id, "family": m.family, "top1": correct / n, "payload_bytes": payload / n,
            "header_bytes": header / n}


# ----------------------------- `hilbed fit entropic|factorized|crbq` ---

FIT_HELP = ("fit a supervised-compression model for a CIFAR ResNet: the entropic student (per --beta), the "
            "factorized-prior input codec (per --lmbda) or CR+BQ (per --bottleneck)")


_FAMILY_ARGS = {
    "entropic": (("--beta", float, "rate weight (bits per input pixel); sweep it for the rate-accuracy curve"),
                 ("--latent", int, "latent channels (default 24)"), ("--hidden", int, "hidden channels (default 48)"),
                 ("--stride", int, "latent down-sampling, 2 or 4 (default 2)")),
    "factorized": (("--lmbda", float, "distortion weight: lmbda * 255^2 * MSE + bpp; sweep it for the curve"),
                   ("--latent", int, "latent channels M (default 96)"), ("--hidden", int, "hidden channels N (default 64)"),
                   ("--layers", int, "conv layers per side, stride 2 each (default 4)")),
    "crbq": (("--bottleneck", int, "bottleneck channels (the paper sweeps 2, 3, 6, 9, 12)"),
             ("--hidden", int, "hidden channels (default 48)")),
}


def fit_cli(parser) -> None:
    """Options of ``hilbed fit entropic|factorized|crbq`` (the family is the last word of the parser's prog)."""
    family = parser.prog.split()[-1] if parser.prog.split()[-1] in FAMILIES else None
    parser.set_defaults(fit_family=family)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small",
                        help="tiny (tests, seconds), small (CPU minutes), medium (~2.3x small), full (GPU); default small")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    parser.add_argument("--epochs1", type=float, default=None, help="stage 1 epochs (all families)")
    parser.add_argument("--epochs2", type=float, default=None, help="entropic: stage 2 (KD fine-tuning) epochs")
    parser.add_argument("--lr1", type=float, default=None)
    parser.add_argument("--lr2", type=float, default=None)
    parser.add_argument("--batch", type=int, default=None)
    seen: set[str] = set()
    for fam in ([family] if family else FAMILIES):
        for flag, typ, help_ in _FAMILY_ARGS[fam]:
            if flag not in seen:
                parser.add_argument(flag, type=typ, default=None, help=help_)
                seen.add(flag)
    parser.add_argument("--eval", default=None, metavar="DATASET",
                        help="after fitting, report top-1 and bytes per image on this dataset (e.g. the dev split)")


def fit_main(args, store: ArtifactStore) -> Artifact:
    from hilbed.nodes.codecs import fitting as F
    from hilbed.nodes.codecs.fitting.neural import load_images
    family = getattr(args, "fit_family", None) or getattr(args, "family", None)
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} (allowed: {', '.join(FAMILIES)})")
    size = int(getattr(args, "size", 32) or 32)
    seed = int(getattr(args, "seed", 0) or 0)
    preset = PRESETS[args.preset]
    limit = args.limit if args.limit is not None else preset.limit
    keys = ("epochs1", "epochs2", "lr1", "lr2", "batch", "beta", "lmbda", "latent", "hidden", "stride", "layers",
            "bottleneck", "device", "threads")
    overrides = {k: getattr(args, k, None) for k in keys}
    knob = FIRST_USE_KNOB.get(family)
    shaping = {k: v for k, v in overrides.items() if v is not None and k not in (knob, "device", "threads")}
    if knob and overrides.get(knob) is not None and not shaping and args.limit is None and seed == 0:
        # only --preset and the knob: the very artifact a scenario's fit_* params name (fitted once, shared)
        art = auto_artifact(family, args.dataset, args.model, args.preset, size, overrides[knob], store,
                            getattr(args, "progress", None))
    else:
        data = load_images(F.dataset_spec(args.dataset), size, limit, seed)
        art = FIT_FUNCTIONS[family](data, F.model_spec(args.model), fit=preset, store=store,
                                    progress=getattr(args, "progress", None), limit=limit, seed=seed, **overrides)
    summary = {"train_bytes_per_image": art.meta["results"].get("train_bytes_per_image")}
    if getattr(args, "eval", None):
        dev = load_images(F.dataset_spec(args.eval), size)
        summary["eval"] = evaluate_split(art.id, dev.x, dev.y, F.model_spec(args.model), store)
    args.summary = summary
    return art
