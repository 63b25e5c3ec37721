"""AdaCompress: a DQN agent picks each image's JPEG quality (He et al., TOMM / ACM MM 2019).

The agent sees a frozen feature vector of the image and outputs Q-values for
10 actions, JPEG quality 5, 15, ..., 95 (§3.3). The reward of one upload is
r = alpha * A - s / s_ref + beta (§3.4), A the accuracy of the reply relative
to the reference (quality c_ref = 75) upload's, s / s_ref the size ratio.
Training is Algorithm 1: epsilon-greedy actions, a replay memory, a gradient
step on (r + gamma max_c' Q(s', c') - Q(s, c))^2 every T steps once
t >= T_start, epsilon *= 0.99 down to 0.02; gamma 0.95 (Table 1).

Deployed, the *inference-estimation-querying-retraining* state machine of
§3.5 runs on the client: in inference each image is also *estimated* with
probability p_est = p0 + omega * sum(grad of the recent-n average accuracy)
(p0 0.2, omega -3, n 10), which uploads the reference image too (a second
chunk; the edge infers it and replies ``extra_top5``); when the recent
accuracy falls below A0 the client *queries* its cache of agents (each tried
for n estimated images) and, if none is good enough, *retrains* (every image
estimated, epsilon-greedy) until the recent-n mean reward exceeds r_th
(0.45), then caches the new agent.

Differences from the paper, on purpose: the feature extractor is a fixed
block-DCT texture descriptor (per-band log energies of Y/Cb/Cr and the spread
of per-block activity, and how much each quality's tables would remove: 72 numbers) instead of MobileNetV2's early layers -
no ImageNet weights here, 32x32 inputs, and the paper's own analysis (§3.6)
finds the agent keys on smooth vs textured regions, which the descriptor
measures directly. The agent (features + a 72-64-10 MLP) is pure numpy so a
Raspberry Pi runs and trains it without torch. An artifact fitted with
``--descriptor cnn`` also carries a tiny CNN (numpy forward, ~5k parameters)
trained to predict per-quality agreement with the reference; its 10 logits
follow the 72 numbers (docs/codecs.md has the measurements: it does not
help on CIFAR-10). With ``reference: label`` A
comes from the dataset label instead of a reference upload (no extra bytes;
a testbed-only shortcut, off by default).

Here: the features and the codec (client and edge); the agent is in
:mod:`hilbed.nodes.codecs.nets.adacompress`, the offline pre-training in
:mod:`hilbed.nodes.codecs.fitting.adacompress`.
"""

from __future__ import annotations

import copy
import json
import random
import threading
from collections import deque
from typing import Any

import numpy as np

from hilbed.nodes.codecs.artifacts import ArtifactStore
from hilbed.nodes.codecs.base import Codec, CodecParamsError, Encoded, Param
from hilbed.nodes.codecs.first_use import first_use_fitter
from hilbed.nodes.codecs.jpeg_tables import (
    BT601,
    HEADER_MODES,
    HUFFMAN_MODES,
    ColourTransform,
    JpegProfile,
    optimize_for,
)
from hilbed.nodes.codecs.nets.adacompress import QUALITIES, Agent, DescriptorCNN, Hyper, Learner, reward

KIND = "adacompress"
REF_QUALITY = 75
#: the agent's inputs: ``dct`` the frozen block-DCT descriptor; ``cnn`` that plus a learnt CNN's outputs
DESCRIPTORS = ("dct", "cnn")


# ---------------------------------------------------------- features ---

_BANDS = None


def _band_matrix() -> np.ndarray:
    """(64, 15): averages the coefficients of each zig-zag diagonal band (u + v = 0..14)."""
    global _BANDS
    if _BANDS is None:
        u, v = np.mgrid[0:8, 0:8]
        b = (u + v).ravel()
        m = np.zeros((64, 15))
        m[np.arange(64), b] = 1.0
        _BANDS = m / m.sum(0)
    return _BANDS


_QTABLES = None


def _qtables() -> np.ndarray:
    global _QTABLES
    if _QTABLES is None:
        from hilbed.nodes.codecs.jpeg_tables import ijg_quality_tables
        _QTABLES = np.stack([ijg_quality_tables(q)[:2] for q in QUALITIES]).astype(np.float64)  # (10, 2, 64)
    return _QTABLES


def extract_features(image: np.ndarray) -> np.ndarray:
    """Frozen descriptor (72 numbers): how much texture the image has and how much each quality would remove.

    3 x 15 log mean |DCT| per zig-zag diagonal band (Y, Cb, Cr); 5 quantiles of per-block
    Y AC activity (smooth vs textured regions, §3.6); Y mean and spread; and for each of
    the 10 qualities the log mean quantisation error of Y and of chroma AC coefficients.
    """
    from hilbed.nodes.codecs.dct import block_dct
    yuv = ColourTransform(*BT601).forward_float(image) - 128.0
    X = block_dct(np.moveaxis(yuv, -1, 0)).reshape(3, -1, 64)  # (3, blocks, 64)
    ax = np.abs(X)
    per_band = ax.mean(axis=1) @ _band_matrix()                          # (3, 15)
    act = np.sort(np.log1p(ax[0, :, 1:].sum(axis=1)))
    q = act[np.minimum((np.array([0.1, 0.25, 0.5, 0.75, 0.9]) * len(act)).astype(int), len(act) - 1)]
    y = yuv[..., 0]
    qt = _qtables()                                                     # (10, 2, 64)
    sub = X[:, ::max(1, X.shape[1] // 64)]                              # <= ~64 blocks: a fixed cost per image
    xy = sub[0][None, :, 1:] / qt[:, None, 0, 1:]                        # (10, blocks, 63)
    xc = sub[1:].reshape(1, -1, 64)[..., 1:] / qt[:, None, 1, 1:]
    err_y = np.abs(xy - np.floor(xy + 0.5)) * qt[:, None, 0, 1:]
    err_c = np.abs(xc - np.floor(xc + 0.5)) * qt[:, None, 1, 1:]
    qerr = np.concatenate([np.log1p(err_y.mean(axis=(1, 2))), np.log1p(err_c.mean(axis=(1, 2)))])
    return np.concatenate([np.log1p(per_band).ravel(), q, [y.mean() / 128.0, y.std() / 64.0], qerr]).astype(np.float32)


# ------------------------------------------------------------- codec ---

class AdaCompressCodec(Codec):
    """Per-image JPEG quality from an online DQN agent (client: numpy + Pillow only)."""

    name = "adacompress"
    learns_from_feedback = True  # the DQN agent's reward comes from the edge's replies
    progressive = True  # chunk 0 = the compressed image; chunk 1 (estimation only) = the reference upload
    params_spec = {
        "artifact": Param(str, "", doc="adacompress-... agent from `hilbed fit adacompress`; empty: pre-train on "
                                        "first use against fit_model/fit_dataset; 'none': start untrained"),
        "alpha": Param(float, 2.0, 0.0, 100.0, doc="reward weight of accuracy"),
        "beta": Param(float, 0.0, -100.0, 100.0, doc="reward offset"),
        "gamma": Param(float, 0.95, 0.0, 0.999, doc="discount of Q targets (Table 1: 0.95)"),
        "p0": Param(float, 0.2, 0.0, 1.0, doc="initial estimation probability"),
        "omega": Param(float, -3.0, -100.0, 100.0, doc="estimation probability scale"),
        "r_th": Param(float, 0.45, -100.0, 100.0, doc="mean reward that ends re-training"),
        "acc_threshold": Param(float, 0.0, 0.0, 1.0, doc="A0; 0 = 0.6 x the agent's accuracy when cached"),
        "metric": Param(str, "top1", choices=("top1", "top5"), doc="A: reference top-1 in the reply's top-1 or top-5"),
        "reference": Param(str, "upload", choices=("upload", "label"),
                           doc="A against a reference (q75) upload, or against the dataset label (no upload)"),
        "learn": Param(bool, True, doc="run the estimation/querying/retraining machine online"),
        "headers": Param(str, "full", choices=HEADER_MODES),
        "huffman": Param(str, "auto", choices=HUFFMAN_MODES, doc="auto: optimized with full headers, standard "
                         "(pre-shared) when abbreviated"),
        "seed": Param(int, 0, 0, 2**31 - 1),
        "descriptor": Param(str, "dct", choices=DESCRIPTORS, doc="auto pre-training only: the agent's input "
                            "(an artifact carries its own: a CNN if it was fitted with one)"),
        "fit_dataset": Param(str, "synthetic", doc="auto pre-training only"),
        "fit_model": Param(str, "synthetic-cnn", doc="auto pre-training only"),
    }

    def __init__(self, store: ArtifactStore | None = None, **params: Any):
        super().__init__(**params)
        p = self.params
        hp = Hyper(alpha=p["alpha"], beta=p["beta"], gamma=p["gamma"], p0=p["p0"], omega=p["omega"], r_th=p["r_th"],
                   acc_threshold=p["acc_threshold"])
        self.hp = hp
        opt = optimize_for(p["huffman"], p["headers"])
        self.profiles = [JpegProfile(quality=q, optimize=opt, subsampling="4:2:0", headers=p["headers"])
                         for q in QUALITIES]
        self.ref_profile = JpegProfile(quality=REF_QUALITY, optimize=opt, subsampling="4:2:0", headers=p["headers"])
        self._store = store
        self._agent: Agent | None = None
        self.cnn: DescriptorCNN | None = None  # the artifact's learnt descriptor, if any
        self.artifact_id = None
        self._lock = threading.RLock()
        self._rng = random.Random(p["seed"])
        self._seq = 0
        self._pending: dict[int, dict] = {}
        self._last_features: np.ndarray | None = None
        self.cache: list[Agent] = []
        self.state = "inference"
        self.p_est = hp.p0
        self._acc_window: deque = deque(maxlen=hp.n)
        self._rew_window: deque = deque(maxlen=hp.n)
        self._acc_prev: float | None = None
        self._query_queue: list[int] = []
        self._query_count = 0
        self._retrain_steps = 0
        self.learner: Learner | None = None
        self.log: list[dict] = []
        self.actions: list[int] = []
        self._ensure_agent()  # before the stream starts: a first-use pre-training must not delay image 1

    # -- agent (loaded lazily: the edge never needs it) --------------------
    def _ensure_agent(self) -> Agent:
        if self._agent is None:
            p = self.params
            store = self._store or ArtifactStore()
            if p["artifact"] == "none":
                self._agent = Agent.fresh(seed=p["seed"], lr=self.hp.lr)
                self.state = "retraining"
            else:
                if p["artifact"]:
                    art = store.get(p["artifact"])
                else:
                    art = first_use_fitter("adacompress")(p, self.hp, store)
                if not art.id.startswith(KIND + "-"):
                    raise CodecParamsError("artifact", f"{art.id} is not an AdaCompress artifact")
                d = json.loads(art.read_bytes("agent.json"))
                self._agent = Agent.from_json(d["agent"], self.hp.lr)
                desc = d.get("descriptor")  # version 1 artifacts: none (the block-DCT descriptor alone)
                if desc and desc.get("kind") == "cnn":
                    self.cnn = DescriptorCNN.from_json(desc["cnn"])
                self.artifact_id = art.id
            self.cache = [self._agent]
            self.learner = Learner(self._agent, self.hp, p["seed"])
        return self._agent

    @property
    def a0(self) -> float:
        if self.hp.acc_threshold:
            return self.hp.acc_threshold
        acc = self._agent.acc if self._agent is not None else None
        return 0.6 * acc if acc else 0.5

    def features(self, image: np.ndarray) -> np.ndarray:
        """The agent's input: the block-DCT descriptor, plus the learnt CNN's outputs when the artifact has one."""
        f = extract_features(image)
        if self.cnn is None:
            return f
        return np.concatenate([f, self.cnn.forward(image)[0]]).astype(np.float32)

    # -- client side -----------------------------------------------------
    @classmethod
    def prepare(cls, params: dict) -> None:
        """Controller/runner hook: make sure the artifacts exist (fits on first use) before any stream starts."""
        cls(**params)

    def encode(self, image: np.ndarray) -> Encoded:
        with self._lock:
            agent = self._ensure_agent()
            f = self.features(image)
            explore = self.state == "retraining"
            a = agent.act(f, self._rng, explore)
            if not self.params["learn"]:
                estimate = False
            elif self.state in ("retraining", "querying"):
                estimate = True
            else:
                estimate = self._rng.random() < self.p_est
            self._seq += 1
            seq = self._seq
            self._last_features = f
            self.actions.append(a)
        data, hdr, full_hdr = self.profiles[a].encode(image)
        chunks = [self._tag(a, data)]
        hdr_total = hdr + (1 if self.params["headers"] == "abbreviated" else 0)
        full_total = full_hdr
        extra = 0
        ref_size = None
        if estimate:
            rdata, rhdr, rfull = self.ref_profile.encode(image)
            ref_size = len(self._tag(len(QUALITIES), rdata))
            if self.params["reference"] == "upload":  # the reference travels as a second chunk
                chunks.append(self._tag(len(QUALITIES), rdata))
                extra = len(chunks[1])
                hdr_total += rhdr + (1 if self.params["headers"] == "abbreviated" else 0)
                full_total += rfull
        with self._lock:
            self._pending[seq] = {"f": f, "a": a, "size": len(chunks[0]), "estimate": estimate,
                                  "state": self.state, "ref_size": ref_size}
            if len(self._pending) > 256:
                self._pending.pop(min(self._pending))
        return Encoded(chunks, header_bytes=hdr_total,
                       meta={"seq": seq, "quality": QUALITIES[a], "estimate": estimate, "state": self.state,
                             "extra_bytes": extra, "header_bytes_full": full_total})

    def _tag(self, idx: int, data: bytes) -> bytes:
        # abbreviated streams need the edge to know which tables: one leading byte (quality index)
        return bytes([idx]) + data if self.params["headers"] == "abbreviated" else data

    def feedback(self, image, encoded: Encoded, result: dict, label: int | None = None) -> None:
        """Client hook: the edge's reply for ``encoded`` (top5 and, when estimated, the reference's extra_top5)."""
        if not self.params["learn"]:
            return
        with self._lock:
            pend = self._pending.pop(encoded.meta.get("seq", -1), None)
            if pend is None or not pend["estimate"]:
                return
            top5 = list(result.get("top5") or [])
            extra = result.get("extra_top5") or []
            if self.params["reference"] == "upload" and extra and extra[0]:
                truth = int(extra[0][0])
            elif label is not None:
                truth = int(label)  # no reference reply (edge without decode_extra): fall back to the label
            else:
                return
            acc = float(bool(top5) and (top5[0] == truth if self.params["metric"] == "top1" else truth in top5))
            size_ref = pend["ref_size"] or pend["size"]
            r = reward(self.hp, acc, pend["size"], size_ref)
            s2 = self._last_features if self._last_features is not None else pend["f"]
            self._step(pend, acc, r, s2)

    def _step(self, pend: dict, acc: float, r: float, s2: np.ndarray) -> None:
        assert self.learner is not None
        self.learner.memory.append((self._agent.norm(pend["f"]), pend["a"], r, self._agent.norm(s2)))
        self._acc_window.append(acc)
        self._rew_window.append(r)
        self.log.append({"seq": self._seq, "state": self.state, "acc": acc, "reward": r, "p_est": self.p_est})
        if self.state == "inference":
            avg = float(np.mean(self._acc_window))
            if self._acc_prev is not None:  # p_est = p0 + omega * sum of grad(A_bar)
                self.p_est = float(np.clip(self.p_est + self.hp.omega * (avg - self._acc_prev), self.hp.p_min, 1.0))
            self._acc_prev = avg
            if len(self._acc_window) >= self.hp.n and avg < self.a0:
                self._start_query()
        elif self.state == "querying":
            self._query_count += 1
            if self._query_count >= self.hp.n:
                if float(np.mean(self._acc_window)) >= self.a0:
                    self._to_inference()
                else:
                    self._next_candidate()
        elif self.state == "retraining":
            self._retrain_steps += 1
            self.learner.t += 1
            if self.learner.t % self.hp.train_every == 0 and len(self.learner.memory) >= self.hp.t_start:
                self.learner.update()
            if self._retrain_steps >= self.hp.min_retrain and len(self._rew_window) >= self.hp.n \
                    and float(np.mean(self._rew_window)) >= self.hp.r_th:
                self._agent.acc = float(np.mean(self._acc_window))
                self.cache.append(copy.deepcopy(self._agent))
                self.learner.memory.clear()  # flushed for the next scenery
                self._to_inference()

    def _start_query(self) -> None:
        cur = next((i for i, a in enumerate(self.cache) if a is self._agent), None)
        self._query_queue = [i for i in range(len(self.cache)) if i != cur]
        self._next_candidate()

    def _next_candidate(self) -> None:
        self._acc_window.clear()
        self._query_count = 0
        if self._query_queue:
            self._agent = self.cache[self._query_queue.pop(0)]
            self.learner.agent = self._agent
            self.state = "querying"
        else:
            self.state = "retraining"
            self._retrain_steps = 0
            self._rew_window.clear()
            self._agent.epsilon = max(self._agent.epsilon, self.hp.retrain_eps)

    def _to_inference(self) -> None:
        self.state = "inference"
        self.p_est = self.hp.p0
        self._acc_prev = None
        self._acc_window.clear()

    def summary(self) -> dict:
        hist = np.bincount(self.actions, minlength=len(QUALITIES)).tolist() if self.actions else []
        states: dict[str, int] = {}
        for e in self.log:
            states[e["state"]] = states.get(e["state"], 0) + 1
        return {"artifact": self.artifact_id, "descriptor": "cnn" if self.cnn is not None else "dct",
                "state": self.state, "p_est": self.p_est, "cached_agents": len(self.cache),
                "estimated_by_state": states, "quality_histogram": hist}

    # -- edge side -------------------------------------------------------
    def _profile_for(self, data: bytes) -> tuple[JpegProfile, bytes] | None:
        if self.params["headers"] == "abbreviated":
            if not data or data[0] > len(QUALITIES):
                return None
            return (self.ref_profile if data[0] == len(QUALITIES) else self.profiles[data[0]]), data[1:]
        return self.profiles[0], data  # full streams carry their own tables

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        if not chunks:
            return None
        got = self._profile_for(chunks[0])
        return got[0].decode(got[1]) if got else None

    def decode_extra(self, chunks: list[bytes], total_chunks: int) -> list[np.ndarray]:
        """Edge hook: the reference upload (estimation state) to infer beside the image."""
        if len(chunks) < 2:
            return []
        got = self._profile_for(chunks[1])
        img = got[0].decode(got[1]) if got else None
        return [img] if img is not None else []
