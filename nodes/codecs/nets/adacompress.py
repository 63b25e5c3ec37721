"""AdaCompress's agent: a numpy Q-network over 10 JPEG qualities, its
exploration rate and Algorithm 1's replay-memory update.

Plain numpy so a Raspberry Pi runs and trains it online without torch; the
offline pre-training environment is in
:mod:`hilbed.nodes.codecs.fitting.adacompress`.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from dataclasses import dataclass

import numpy as np

#: the agent's actions: JPEG quality 5, 15, ..., 95 (§3.3)
QUALITIES = tuple(range(5, 100, 10))
#: length of the frozen image descriptor the agent sees (``adacompress.extract_features``)
N_FEATURES = 72


# ------------------------------------------------------------- Q-net ---

class QNet:
    """A 2-layer MLP with Adam, in numpy (forward and backward by hand)."""

    def __init__(self, n_in: int = N_FEATURES, n_hidden: int = 64, n_out: int = len(QUALITIES), seed: int = 0,
                 lr: float = 1e-3):
        rng = np.random.default_rng(seed)
        self.W1 = (rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        self.b1 = np.zeros(n_hidden, np.float32)
        self.W2 = (rng.standard_normal((n_hidden, n_out)) * np.sqrt(1.0 / n_hidden)).astype(np.float32)
        self.b2 = np.zeros(n_out, np.float32)
        self.lr = lr
        self._m = {k: np.zeros_like(v) for k, v in self.params().items()}
        self._v = {k: np.zeros_like(v) for k, v in self.params().items()}
        self._t = 0

    def params(self) -> dict[str, np.ndarray]:
        return {"W1": self.W1, "b1": self.b1, "W2": self.W2, "b2": self.b2}

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = np.maximum(x @ self.W1 + self.b1, 0.0)
        return h @ self.W2 + self.b2

    def train_step(self, x: np.ndarray, a: np.ndarray, target: np.ndarray) -> float:
        """One Adam step on mean (target - Q(x, a))^2; returns the loss."""
        z1 = x @ self.W1 + self.b1
        h = np.maximum(z1, 0.0)
        q = h @ self.W2 + self.b2
        rows = np.arange(len(a))
        err = q[rows, a] - target
        dq = np.zeros_like(q)
        dq[rows, a] = 2.0 * err / len(a)
        grads = {"W2": h.T @ dq, "b2": dq.sum(0)}
        dh = dq @ self.W2.T
        dz = dh * (z1 > 0)
        grads["W1"] = x.T @ dz
        grads["b1"] = dz.sum(0)
        self._t += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        for k, p in self.params().items():
            g = grads[k].astype(np.float32)
            self._m[k] = b1 * self._m[k] + (1 - b1) * g
            self._v[k] = b2 * self._v[k] + (1 - b2) * g * g
            mh = self._m[k] / (1 - b1 ** self._t)
            vh = self._v[k] / (1 - b2 ** self._t)
            p -= (self.lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
        return float(np.mean(err ** 2))

    def to_json(self) -> dict:
        return {k: v.tolist() for k, v in self.params().items()}

    @classmethod
    def from_json(cls, d: dict, lr: float = 1e-3) -> "QNet":
        n = cls.__new__(cls)
        n.W1, n.b1 = np.array(d["W1"], np.float32), np.array(d["b1"], np.float32)
        n.W2, n.b2 = np.array(d["W2"], np.float32), np.array(d["b2"], np.float32)
        n.lr = lr
        n._m = {k: np.zeros_like(v) for k, v in n.params().items()}
        n._v = {k: np.zeros_like(v) for k, v in n.params().items()}
        n._t = 0
        return n


@dataclass
class Hyper:
    """Table 1 of the paper (c_ref, eps_min, p0, gamma, omega, mu_dec, T, r_th, n) plus what it leaves open."""

    alpha: float = 2.0
    beta: float = 0.0
    gamma: float = 0.95
    eps_min: float = 0.02
    mu_dec: float = 0.99
    train_every: int = 5          # T
    t_start: int = 32             # transitions before the first update
    batch: int = 64
    memory: int = 1000
    lr: float = 1e-2
    p0: float = 0.2
    omega: float = -3.0
    p_min: float = 0.02
    n: int = 10
    r_th: float = 0.45
    acc_threshold: float = 0.0    # A0; 0: 0.6 x the agent's accuracy when it was cached
    min_retrain: int = 50
    retrain_eps: float = 0.3      # epsilon when retraining an existing agent (fresh agents start at 1)
    target_sync: int = 100        # updates between target-network syncs (Mnih et al. [37]); 0: none


class Agent:
    """Feature normalisation + Q-network + exploration rate."""

    def __init__(self, qnet: QNet, mu: np.ndarray, sd: np.ndarray, epsilon: float = 1.0, acc: float | None = None):
        self.qnet, self.mu, self.sd, self.epsilon, self.acc = qnet, mu, sd, epsilon, acc

    @classmethod
    def fresh(cls, mu=None, sd=None, seed: int = 0, lr: float = 1e-3) -> "Agent":
        mu = np.zeros(N_FEATURES, np.float32) if mu is None else mu
        sd = np.ones(N_FEATURES, np.float32) if sd is None else sd
        return cls(QNet(n_in=len(mu), seed=seed, lr=lr), mu, sd, 1.0)

    def norm(self, f: np.ndarray) -> np.ndarray:
        return ((f - self.mu) / self.sd).astype(np.float32)

    def q(self, f: np.ndarray) -> np.ndarray:
        return self.qnet.forward(self.norm(f)[None])[0]

    def act(self, f: np.ndarray, rng: random.Random, explore: bool) -> int:
        if explore and rng.random() < self.epsilon:
            return rng.randrange(len(QUALITIES))
        return int(np.argmax(self.q(f)))

    def to_json(self) -> dict:
        return {"qnet": self.qnet.to_json(), "mu": self.mu.tolist(), "sd": self.sd.tolist(),
                "epsilon": self.epsilon, "acc": self.acc}

    @classmethod
    def from_json(cls, d: dict, lr: float = 1e-3) -> "Agent":
        return cls(QNet.from_json(d["qnet"], lr), np.array(d["mu"], np.float32), np.array(d["sd"], np.float32),
                   float(d.get("epsilon", 0.02)), d.get("acc"))


class DescriptorCNN:
    """A learnt descriptor: a tiny CNN whose numpy forward runs on the client (no torch).

    Conv 3x3 stride 2 (padding 1) + ReLU layers, a global average pool and a
    linear head. Trained offline (:func:`hilbed.nodes.codecs.fitting.adacompress.train_descriptor`)
    to predict, for each of the agent's 10 qualities, whether the target model's
    top-1 at that quality agrees with its top-1 on the q75 reference (logits):
    it sees what the classifier sees, where the block-DCT descriptor only sees texture.
    """

    def __init__(self, convs: list[tuple[np.ndarray, np.ndarray]], head_w: np.ndarray, head_b: np.ndarray):
        self.convs = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in convs]  # w (out, in, 3, 3)
        self.head_w = np.asarray(head_w, np.float32)   # (out, hidden) like torch's Linear
        self.head_b = np.asarray(head_b, np.float32)

    @property
    def n_out(self) -> int:
        return int(self.head_w.shape[0])

    @staticmethod
    def prep(images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) or (H, W, 3) -> float32 (N, 3, H, W) in [-0.5, 0.5]."""
        x = np.asarray(images, np.float32)
        if x.ndim == 3:
            x = x[None]
        return np.ascontiguousarray(np.moveaxis(x, -1, 1)) / 255.0 - 0.5

    @staticmethod
    def _conv_s2(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
        n, c, h, wd = x.shape
        ho, wo = (h + 1) // 2, (wd + 1) // 2
        xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        cols = np.stack([xp[:, :, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2] for i in range(3) for j in range(3)], 2)
        cols = cols.reshape(n, c * 9, ho * wo)                  # (c, ki, kj) order, as w.reshape(out, -1)
        y = np.einsum("ok,nkp->nop", w.reshape(w.shape[0], -1), cols, optimize=True) + b[None, :, None]
        return y.reshape(n, w.shape[0], ho, wo)

    def forward(self, images: np.ndarray) -> np.ndarray:
        """(N, n_out) logits for uint8 images (N, H, W, 3); a single (H, W, 3) image gives (1, n_out)."""
        x = self.prep(images)
        for w, b in self.convs:
            x = np.maximum(self._conv_s2(x, w, b), 0.0)
        return (x.mean(axis=(2, 3)) @ self.head_w.T + self.head_b).astype(np.float32)

    def to_json(self) -> dict:
        return {"convs": [[w.tolist(), b.tolist()] for w, b in self.convs],
                "head_w": self.head_w.tolist(), "head_b": self.head_b.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "DescriptorCNN":
        return cls([(np.array(w, np.float32), np.array(b, np.float32)) for w, b in d["convs"]],
                   np.array(d["head_w"], np.float32), np.array(d["head_b"], np.float32))

    @classmethod
    def from_torch(cls, module) -> "DescriptorCNN":
        """From :func:`torch_descriptor`'s module (Conv2d/ReLU ..., then a Linear ``head``)."""
        import torch.nn as nn
        convs = [(m.weight.detach().cpu().numpy(), m.bias.detach().cpu().numpy())
                 for m in module.modules() if isinstance(m, nn.Conv2d)]
        head = module.head
        return cls(convs, head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy())


def torch_descriptor(widths: tuple[int, ...] = (8, 16, 24), n_out: int = len(QUALITIES), seed: int = 0):
    """The torch twin of :class:`DescriptorCNN` (for training; the client runs the numpy forward)."""
    import torch
    import torch.nn as nn

    class _Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c = [], 3
            for w in widths:
                layers += [nn.Conv2d(c, w, 3, 2, 1), nn.ReLU()]
                c = w
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(c, n_out)

        def forward(self, x):  # x: (N, 3, H, W) float in [-0.5, 0.5]
            return self.head(self.body(x).mean(dim=(2, 3)))

    torch.manual_seed(seed)
    return _Net()


class Learner:
    """Algorithm 1's replay memory and update rule around one agent."""

    def __init__(self, agent: Agent, hp: Hyper, seed: int = 0):
        self.agent, self.hp = agent, hp
        self.memory: deque = deque(maxlen=hp.memory)
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.updates = 0
        self.target: QNet | None = None
        self.losses: list[float] = []

    def add(self, s: np.ndarray, a: int, r: float, s2: np.ndarray) -> None:
        self.memory.append((self.agent.norm(s), a, r, self.agent.norm(s2)))
        self.t += 1
        if self.t % self.hp.train_every == 0 and len(self.memory) >= self.hp.t_start:
            self.update()

    def update(self) -> None:
        idx = self.rng.integers(0, len(self.memory), min(self.hp.batch, len(self.memory)))
        s = np.stack([self.memory[i][0] for i in idx])
        a = np.array([self.memory[i][1] for i in idx])
        r = np.array([self.memory[i][2] for i in idx], np.float32)
        s2 = np.stack([self.memory[i][3] for i in idx])
        if self.hp.target_sync and (self.target is None or self.updates % self.hp.target_sync == 0):
            self.target = copy.deepcopy(self.agent.qnet)
        net = self.target if self.hp.target_sync else self.agent.qnet
        y = r + self.hp.gamma * net.forward(s2).max(1)
        self.updates += 1
        self.agent.epsilon = max(self.hp.eps_min, self.hp.mu_dec * self.agent.epsilon)
        self.losses.append(self.agent.qnet.train_step(s, a, y.astype(np.float32)))


def reward(hp: Hyper, acc: float, size: float, size_ref: float) -> float:
    return hp.alpha * acc - size / max(size_ref, 1.0) + hp.beta
