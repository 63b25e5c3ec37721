"""GRACE: gradient-driven, DNN-aware JPEG (Xie & Kim, MobiCom 2019), as run
on a client (numpy + Pillow) and an edge (a stock JPEG decoder).

Algorithm 1 / Theorem 1 turns a per-block loss budget B into d_n
(water-filling under d_n <= theta_n = |g_n||s_n|) and q_n = 2 d_n / |g_n|,
from the model's spectral sensitivity |g_n| and coefficient amplitudes |s_n|
that :mod:`hilbed.nodes.codecs.fitting.grace` probes offline. The 3 x 64
tables are used verbatim (rounded, clamped to 1..255), 4:4:4 by default or
4:2:0 (``subsampling``), with the custom G-YUV colour transform (or BT.601),
so a stock JPEG decoder reads the stream; the edge applies the matching
inverse transform. ``huffman: shared`` re-codes abbreviated streams with
Huffman tables fitted on the fit set and pre-shared like the quantisation
tables.

The artifact holds the probe statistics, not the tables, so one fit serves
the whole rate-accuracy curve: ``budget`` (B as a fraction of sum(theta), the
budget beyond which nothing changes) or an absolute ``B`` picks the point.
The 3 x 64 bins of Y, U and V share one budget per (colour) block.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hilbed.nodes.codecs.artifacts import Artifact, ArtifactStore
from hilbed.nodes.codecs.base import Codec, CodecParamsError, Encoded, Param
from hilbed.nodes.codecs.first_use import first_use_fitter
from hilbed.nodes.codecs.jpeg_tables import (
    BT601,
    HEADER_MODES,
    HUFFMAN_MODES,
    ColourTransform,
    JpegProfile,
    SharedHuffmanProfile,
    huffman_from_json,
    optimize_for,
)

KIND = "grace"
HUFFMAN_FILE = "huffman.json"  # shared Huffman tables per (colour, subsampling, amplitude, budget), optional


# --------------------------------------------------------- the maths ---

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


# -------------------------------------------------- probe statistics ---

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
        # "gyuv420"/"bt601420" (newer fits): Y, and U/V probed 2x2-subsampled, for subsampling 4:2:0
        self.stats = {k: {a: np.array(d[k][a]).reshape(3, 8, 8) for a in ("g_abs", "s_abs", "s_max")}
                      for k in ("gyuv", "bt601", "rgb", "gyuv420", "bt601420") if k in d}

    def gs(self, colour: str = "gyuv", amplitude: str = "blockmax",
           subsampling: str = "4:4:4") -> tuple[np.ndarray, np.ndarray]:
        """|g|, |s| of ``colour``; with 4:2:0 those of the subsampled probe when the artifact has one."""
        st = self.stats.get(colour + "420") if subsampling == "4:2:0" else None
        st = st or self.stats[colour]
        return st["g_abs"], st[self.AMPLITUDE[amplitude]]

    def theta_sum(self, colour: str = "gyuv", amplitude: str = "blockmax", subsampling: str = "4:4:4") -> float:
        g, s = self.gs(colour, amplitude, subsampling)
        return float((g * s).sum())

    def tables(self, budget: float | None = None, B: float | None = None, colour: str = "gyuv",
               amplitude: str = "blockmax", subsampling: str = "4:4:4") -> np.ndarray:
        g, s = self.gs(colour, amplitude, subsampling)
        if not B:
            B = float(budget) * self.theta_sum(colour, amplitude, subsampling)
        q = quant_tables(g, s, B)
        return np.clip(np.rint(np.nan_to_num(q, posinf=255.0)), 1, 255).astype(np.int64).reshape(3, 64)

    def huffman(self, budget: float, colour: str = "gyuv", subsampling: str = "4:4:4",
                amplitude: str = "blockmax") -> tuple[float, dict] | None:
        """(fitted budget, tables) of the artifact's shared Huffman tables nearest ``budget`` (in log budget) for
        this colour/subsampling/amplitude; None when the artifact has none. Any nearby set is valid (every legal
        symbol has a code), the nearest is the best fitted."""
        sets = self.huffman_sets().get((colour, subsampling, amplitude))
        if not sets:
            return None
        b = min(sets, key=lambda k: abs(np.log(k) - np.log(max(budget, 1e-9))))
        return b, sets[b]

    def huffman_sets(self) -> dict:
        if getattr(self, "_huffman", None) is None:
            self._huffman = {}
            try:
                doc = json.loads(self.artifact.read_bytes(HUFFMAN_FILE))
            except (FileNotFoundError, KeyError, OSError):
                doc = {"sets": []}
            for e in doc["sets"]:
                self._huffman.setdefault((e["colour"], e["subsampling"], e["amplitude"]), {})[float(e["budget"])] = \
                    huffman_from_json(e["tables"])
        return self._huffman

    def colour(self, colour: str = "gyuv") -> ColourTransform:
        return ColourTransform.of(self.weights) if colour == "gyuv" else ColourTransform(*BT601)


# ------------------------------------------------------------- codec ---

AUTO_PROBE_IMAGES = 128


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
        "subsampling": Param(str, "4:4:4", choices=("4:4:4", "4:2:0"), doc="chroma sampling; 4:2:0 applies the "
                             "U/V tables to 2x2-subsampled chroma (see chroma_stats)"),
        "chroma_stats": Param(str, "full", choices=("full", "subsampled"), doc="with 4:2:0: U/V tables from the "
                              "full-resolution probe (default; measured better on CIFAR) or from the probe of the "
                              "2x2-subsampled planes (artifacts fitted since the 4:2:0 probe)"),
        "headers": Param(str, "full", choices=HEADER_MODES, doc="full streams, or abbreviated with pre-shared tables"),
        "huffman": Param(str, "auto", choices=HUFFMAN_MODES + ("shared",), doc="optimized (per image) or standard "
                         "(pre-shared) Huffman tables; auto: optimized with full headers, standard when abbreviated; "
                         "shared: tables optimised on the fit set for this configuration (stored in the artifact, "
                         "nearest fitted budget), pre-shared like the quantisation tables"),
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
            art = first_use_fitter("grace")(p, store)
        self.probe = GraceProbe(art)
        self.artifact_id = art.id
        stats = "4:2:0" if p["subsampling"] == "4:2:0" and p["chroma_stats"] == "subsampled" else "4:4:4"
        if stats == "4:2:0" and p["colour"] + "420" not in self.probe.stats:
            raise CodecParamsError("chroma_stats", f"{art.id} has no subsampled-chroma probe: refit")
        self.tables = self.probe.tables(p["budget"], p["B"], p["colour"], p["amplitude"], stats)
        if p["huffman"] == "shared":
            budget = p["B"] / self.probe.theta_sum(p["colour"], p["amplitude"], stats) if p["B"] else p["budget"]
            found = self.probe.huffman(budget, p["colour"], p["subsampling"], p["amplitude"])
            if found is None:
                raise CodecParamsError("huffman", f"{art.id} has no shared Huffman tables for colour {p['colour']}, "
                                       f"{p['subsampling']}, amplitude {p['amplitude']}: refit with `hilbed fit grace "
                                       "--huffman-images N`")
            self.huffman_budget, tables = found
            self.profile = SharedHuffmanProfile(tables=self.tables, colour=self.probe.colour(p["colour"]),
                                                subsampling=p["subsampling"], headers=p["headers"], huffman=tables)
        else:
            self.profile = JpegProfile(tables=self.tables, colour=self.probe.colour(p["colour"]),
                                       optimize=optimize_for(p["huffman"], p["headers"]),
                                       subsampling=p["subsampling"], headers=p["headers"])

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
