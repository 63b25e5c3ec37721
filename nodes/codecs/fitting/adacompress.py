"""Pre-training AdaCompress's agent offline (``hilbed fit adacompress``).

Builds an environment once - every fit image at every quality and at the
reference quality, through the target model - and runs Algorithm 1 (DQN,
epsilon-greedy, replay memory) on it; the agent
(:mod:`hilbed.nodes.codecs.nets.adacompress`) keeps learning online in the
codec (:mod:`hilbed.nodes.codecs.adacompress`).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass, replace

import numpy as np

from hilbed.nodes.codecs import fitting as F
from hilbed.nodes.codecs.adacompress import DESCRIPTORS, KIND, REF_QUALITY, extract_features
from hilbed.nodes.codecs.artifacts import Artifact, ArtifactStore
from hilbed.nodes.codecs.jpeg_tables import HEADER_MODES, JpegProfile, optimize_for
from hilbed.nodes.codecs.nets.adacompress import (
    QUALITIES,
    Agent,
    DescriptorCNN,
    Hyper,
    Learner,
    reward,
    torch_descriptor,
)

# ------------------------------------------------------- environment ---

@dataclass
class OfflineEnv:
    """Precomputed replies for a fit set: features, per-quality sizes and top-5s, reference top-5, labels."""

    features: np.ndarray      # (N, F)
    sizes: np.ndarray         # (N, 10) bytes sent at each quality
    ref_sizes: np.ndarray     # (N,)
    top5: np.ndarray          # (N, 10, 5)
    ref_top5: np.ndarray      # (N, 5)
    labels: np.ndarray        # (N,)

    def accuracy(self, i: int, a: int, metric: str, reference: str) -> float:
        truth = int(self.labels[i]) if reference == "label" else int(self.ref_top5[i, 0])
        return float(self.top5[i, a, 0] == truth) if metric == "top1" else float(truth in self.top5[i, a])


def build_env(images: np.ndarray, labels: np.ndarray, loaded, headers: str = "full", optimize: bool | None = None,
              progress=None) -> OfflineEnv:
    if optimize is None:
        optimize = optimize_for("auto", headers)
    profiles = [JpegProfile(quality=q, optimize=optimize, subsampling="4:2:0", headers=headers) for q in QUALITIES]
    ref = JpegProfile(quality=REF_QUALITY, optimize=optimize, subsampling="4:2:0", headers=headers)
    n = len(images)
    feats = np.stack([extract_features(im) for im in images])
    sizes = np.zeros((n, len(QUALITIES)))
    top5 = np.zeros((n, len(QUALITIES), 5), np.int64)
    for a, p in enumerate(profiles):
        dec = []
        for i, im in enumerate(images):
            data = p.encode(im)[0]
            sizes[i, a] = len(data)
            dec.append(p.decode(data))
        probs = np.concatenate([loaded.predict(np.stack(dec[k:k + 256])) for k in range(0, n, 256)])
        top5[:, a] = np.argsort(-probs, 1)[:, :5]
        if progress:
            progress(f"environment: quality {QUALITIES[a]}", (a + 1) / (len(QUALITIES) + 1))
    rs, rdec = [], []
    for im in images:
        data = ref.encode(im)[0]
        rs.append(len(data))
        rdec.append(ref.decode(data))
    rprobs = np.concatenate([loaded.predict(np.stack(rdec[k:k + 256])) for k in range(0, n, 256)])
    return OfflineEnv(feats, sizes, np.array(rs, float), top5, np.argsort(-rprobs, 1)[:, :5], labels.copy())


# ------------------------------------------------ learnt descriptor ---

def descriptor_targets(env: OfflineEnv, metric: str = "top1", reference: str = "upload") -> np.ndarray:
    """(N, 10) in {0, 1}: does the reply at each quality agree with the reference (what A rewards)."""
    ref_mode = "label" if reference == "label" else "ref"
    return np.array([[env.accuracy(i, a, metric, ref_mode) for a in range(len(QUALITIES))]
                     for i in range(len(env.labels))], np.float32)


def train_descriptor(images: np.ndarray, targets: np.ndarray, epochs: int = 30, batch: int = 128,
                     lr: float = 3e-3, weight_decay: float = 1e-4, val_frac: float = 0.1, seed: int = 0,
                     progress=None, widths: tuple[int, ...] = (8, 16, 24)) -> tuple[DescriptorCNN, dict]:
    """Fit the tiny CNN (torch, CPU) to per-quality agreement (BCE, flip augmentation); numpy twin + stats."""
    import torch
    import torch.nn.functional as tF
    torch.manual_seed(seed)
    net = torch_descriptor(widths, targets.shape[1], seed=seed)
    x = torch.from_numpy(DescriptorCNN.prep(images))
    y = torch.from_numpy(targets.astype(np.float32))
    perm = np.random.default_rng(seed).permutation(len(x))
    nv = int(len(x) * val_frac)
    vi, ti = perm[:nv], perm[nv:]
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        net.train()
        order = ti[torch.randperm(len(ti), generator=gen).numpy()]
        for k in range(0, len(order), batch):
            idx = torch.from_numpy(order[k:k + batch])
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = tF.binary_cross_entropy_with_logits(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if progress:
            progress(f"descriptor CNN epoch {ep + 1}/{epochs} loss {float(loss):.3f}", (ep + 1) / epochs)
    net.eval()
    with torch.no_grad():
        def bce(ix):
            return float(tF.binary_cross_entropy_with_logits(net(x[ix]), y[ix])) if len(ix) else float("nan")
        base = y[torch.from_numpy(ti)].mean(0).clamp(1e-4, 1 - 1e-4)
        prior = (float(tF.binary_cross_entropy(base.expand(len(vi), -1), y[torch.from_numpy(vi)])) if nv
                 else float("nan"))
        stats = {"train_bce": bce(ti), "val_bce": bce(vi), "val_bce_prior": prior, "epochs": epochs,
                 "images": int(len(x)), "params": int(sum(p.numel() for p in net.parameters()))}
    return DescriptorCNN.from_torch(net), stats


def descriptor_features(cnn: DescriptorCNN | None, images: np.ndarray, dct: np.ndarray) -> np.ndarray:
    """The agent's input: the block-DCT descriptor, followed by the CNN's logits when there is one."""
    if cnn is None:
        return dct
    logits = np.concatenate([cnn.forward(images[k:k + 256]) for k in range(0, len(images), 256)])
    return np.concatenate([dct, logits], axis=1).astype(np.float32)


# ------------------------------------------------------ pre-training ---

def pretrain(env: OfflineEnv, hp: Hyper, steps: int = 3000, metric: str = "top1", reference: str = "upload",
             seed: int = 0, progress=None) -> tuple[Agent, dict]:
    """Algorithm 1 on the offline environment; returns the agent and its greedy performance on the fit set."""
    mu = env.features.mean(0).astype(np.float32)
    sd = (env.features.std(0) + 1e-6).astype(np.float32)
    agent = Agent.fresh(mu, sd, seed, hp.lr)
    learner = Learner(agent, hp, seed)
    rng = random.Random(seed)
    order = np.random.default_rng(seed).permutation(len(env.labels))
    ref_mode = "label" if reference == "label" else "ref"
    rewards = []
    for t in range(steps):
        i = int(order[t % len(order)])
        j = int(order[(t + 1) % len(order)])
        a = agent.act(env.features[i], rng, explore=True)
        acc = env.accuracy(i, a, metric, ref_mode)
        r = reward(hp, acc, env.sizes[i, a], env.ref_sizes[i])
        rewards.append(r)
        learner.add(env.features[i], a, r, env.features[j])
        if progress and t % 200 == 0:
            progress(f"DQN step {t}/{steps} eps {agent.epsilon:.2f} mean reward {np.mean(rewards[-200:]):.3f}",
                     t / steps)
    stats = greedy_stats(agent, env, metric, ref_mode)
    agent.acc = stats["acc_vs_reference" if ref_mode == "ref" else "acc_vs_label"]
    agent.epsilon = hp.eps_min
    return agent, {**stats, "steps": steps, "final_mean_reward": float(np.mean(rewards[-200:]))}


def greedy_stats(agent: Agent, env: OfflineEnv, metric: str = "top1", ref_mode: str = "ref") -> dict:
    acts = np.array([int(np.argmax(agent.q(f))) for f in env.features])
    rows = np.arange(len(acts))
    sizes = env.sizes[rows, acts]
    top1 = env.top5[rows, acts, 0]
    return {
        "size_ratio": float(sizes.mean() / env.ref_sizes.mean()),
        "acc_vs_reference": float(np.mean([env.accuracy(i, a, metric, "ref") for i, a in enumerate(acts)])),
        "acc_vs_label": float(np.mean([env.accuracy(i, a, metric, "label") for i, a in enumerate(acts)])),
        "top1_vs_label": float((top1 == env.labels).mean()),
        "ref_top1_vs_label": float((env.ref_top5[:, 0] == env.labels).mean()),
        "quality_histogram": np.bincount(acts, minlength=len(QUALITIES)).tolist(),
    }


def fit_adacompress(images: np.ndarray, labels: np.ndarray, loaded, source_meta: dict, store: ArtifactStore,
                    hp: Hyper, steps: int, metric: str, reference: str, headers: str, seed: int = 0,
                    progress=None, descriptor: str = "dct", cnn_epochs: int = 30,
                    env: OfflineEnv | None = None) -> Artifact:
    """``env``: a :func:`build_env` of the same images, headers and model to reuse (not modified)."""
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"descriptor {descriptor!r}: one of {DESCRIPTORS}")
    env = build_env(images, labels, loaded, headers, None, progress) if env is None else replace(env)
    cnn, cnn_stats = None, None
    if descriptor == "cnn":
        cnn, cnn_stats = train_descriptor(images, descriptor_targets(env, metric, reference), cnn_epochs,
                                          seed=seed, progress=progress)
        env.features = descriptor_features(cnn, images, env.features)
    agent, stats = pretrain(env, hp, steps, metric, reference, seed, progress)
    data = {"version": 2 if cnn is not None else 1, "agent": agent.to_json(), "hyper": asdict(hp), "metric": metric,
            "reference": reference, "headers": headers}
    meta = {**source_meta, "algorithm": "AdaCompress (He et al.) Alg. 1 DQN, offline pre-training",
            "pretrain": stats, "hyper": asdict(hp), "metric": metric, "reference": reference, "headers": headers,
            "descriptor": descriptor}
    if cnn is not None:
        data["descriptor"] = {"kind": "cnn", "cnn": cnn.to_json()}
        meta["descriptor_fit"] = cnn_stats
        stats["descriptor_fit"] = cnn_stats
    return store.put(KIND, {"agent.json": json.dumps(data, sort_keys=True).encode()}, meta)


# -------------------------------------------------- fit on first use ---

AUTO_IMAGES = 512
AUTO_STEPS = 2500


def auto_fit(params: dict, hp: Hyper, store: ArtifactStore) -> Artifact:
    """The pre-trained agent for a codec's ``fit_*`` params and hyper-parameters (fitted once, file-locked)."""
    settings = {"dataset": params["fit_dataset"], "model": F.model_fingerprint(params["fit_model"]),
                "n": AUTO_IMAGES, "steps": AUTO_STEPS, "hyper": asdict(hp), "metric": params["metric"],
                "reference": params["reference"], "headers": params["headers"], "v": 1}
    descriptor = params.get("descriptor", "dct")
    if descriptor != "dct":  # keeps the settings (and so the cached artifacts) of block-DCT fits unchanged
        settings["descriptor"] = descriptor

    def build(st: ArtifactStore) -> Artifact:
        F.set_threads()
        x, y, loaded, src = F.prepare(params["fit_dataset"], params["fit_model"], AUTO_IMAGES, 32, 0, "cpu")
        return fit_adacompress(x, y, loaded, src.meta(), st, hp, AUTO_STEPS, params["metric"], params["reference"],
                               params["headers"], descriptor=descriptor)
    return F.auto_artifact(KIND, settings, build, store)


# ------------------------------------------------------ fit protocol ---

FIT_HELP = "pre-train the AdaCompress DQN agent offline against the target model (it keeps learning online)"


def fit_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=4096, help="environment images (default 4096)")
    parser.add_argument("--steps", type=int, default=6000, help="DQN steps (Algorithm 1's K)")
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--gamma", type=float, default=0.95, help="Q-target discount (Table 1: 0.95)")
    parser.add_argument("--metric", choices=("top1", "top5"), default="top1")
    parser.add_argument("--reference", choices=("upload", "label"), default="upload")
    parser.add_argument("--headers", choices=HEADER_MODES, default="full", help="header mode of the sizes in the reward")
    parser.add_argument("--descriptor", choices=DESCRIPTORS, default="dct",
                        help="the agent's input: the block-DCT descriptor, or that plus a tiny CNN trained on the "
                             "fit images to predict per-quality agreement with the reference (numpy on the client)")
    parser.add_argument("--cnn-epochs", type=int, default=30, help="descriptor CNN epochs (--descriptor cnn)")


def fit_main(args: argparse.Namespace, store: ArtifactStore) -> Artifact:
    F.set_threads(getattr(args, "threads", None))
    prog = getattr(args, "progress", None)
    x, y, loaded, src = F.prepare(args.dataset, args.model, args.images, args.size, args.seed, args.device, prog)
    hp = Hyper(alpha=args.alpha, beta=args.beta, gamma=args.gamma)
    art = fit_adacompress(x, y, loaded, src.meta(), store, hp, args.steps, args.metric, args.reference, args.headers,
                          args.seed, prog, getattr(args, "descriptor", "dct"), getattr(args, "cnn_epochs", 30))
    args.summary = art.meta["pretrain"]
    return art
