"""AutoJPEG: bandwidth-aware JPEG tables learnt under a size constraint (Xie
et al.), as run on a client and an edge (numpy + Pillow).

:mod:`hilbed.nodes.codecs.fitting.autojpeg` learns, per size constraint,
3 x 64 quantisation tables and the colour transform's weights through a
differentiable JPEG (ADMM, Alg. 1); one artifact per constraint. A *set* of
them is the bandwidth-aware codec: at run time the client encodes with the
largest set whose measured size (p95 over the fit images, in the active
header mode) fits ``bandwidth x deadline x margin``; the chosen set's index
travels as one leading byte so the edge decodes with the same tables. The
client learns the bandwidth from its replies (:meth:`AutoJpegCodec.feedback`)
and the deadline from the stream (:meth:`AutoJpegCodec.set_stream`).
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import numpy as np

from hilbed.nodes.codecs.artifacts import Artifact, ArtifactStore
from hilbed.nodes.codecs.base import Codec, CodecParamsError, Encoded, Param
from hilbed.nodes.codecs.first_use import first_use_fitter
from hilbed.nodes.codecs.jpeg_tables import HEADER_MODES, HUFFMAN_MODES, ColourTransform, JpegProfile, optimize_for

KIND = "autojpeg"


# ------------------------------------------------------------- codec ---

AUTO_RATIOS = [0.04, 0.08, 0.16]
AUTO_STEPS = 150


class _Level:
    def __init__(self, art: Artifact, headers: str, optimize: bool):
        p = json.loads(art.read_bytes("params.json"))
        self.artifact = art
        self.tables = np.array(p["tables"], np.int64)
        self.colour = ColourTransform.of(p["weights"])
        self.profile = JpegProfile(tables=self.tables, colour=self.colour, optimize=optimize,
                                   subsampling="4:4:4", headers=headers)
        sizes = art.meta.get("sizes", {}).get("optimized" if optimize else "standard", {})
        self.expected_bytes = float(sizes.get(f"{headers}_p95", art.meta.get("C_bytes", 0.0)))
        self.ratio = float(art.meta.get("ratio", 0.0))


class AutoJpegCodec(Codec):
    """A set of AutoJPEG tables; the client picks the one that fits bandwidth x deadline."""

    name = "autojpeg"
    learns_from_feedback = True  # the uplink rate, from how long each image took to send
    params_spec = {
        "artifact": Param(str, "", doc="one autojpeg-... artifact (a fixed constraint)"),
        "artifacts": Param(list, [], doc="several autojpeg-... artifacts: picked per image by bandwidth and deadline"),
        "bandwidth_kbps": Param(float, 0.0, 0.0, None, doc="uplink estimate; 0: measured from replies"),
        "deadline_ms": Param(float, 0.0, 0.0, None, doc="per-image deadline; 0: the stream's (client hook)"),
        "margin": Param(float, 0.8, 0.05, 1.0, doc="fraction of bandwidth x deadline an image may use"),
        "headers": Param(str, "full", choices=HEADER_MODES),
        "huffman": Param(str, "auto", choices=HUFFMAN_MODES, doc="optimized (per image) or standard (pre-shared) "
                         "Huffman tables; auto: optimized with full headers, standard when abbreviated"),
        "fit_dataset": Param(str, "synthetic", doc="auto-fit only (no artifact given)"),
        "fit_model": Param(str, "synthetic-cnn", doc="auto-fit only"),
        "ratios": Param(list, AUTO_RATIOS, doc="auto-fit only: size constraints S (C = S x raw bits)"),
        "fit_steps": Param(int, AUTO_STEPS, 10, 100000, doc="auto-fit only: ADMM iterations per constraint"),
    }

    def __init__(self, store: ArtifactStore | None = None, **params: Any):
        super().__init__(**params)
        p = self.params
        store = store or ArtifactStore()
        ids = ([p["artifact"]] if p["artifact"] else []) + list(p["artifacts"])
        if ids:
            arts = [store.get(str(i)) for i in ids]
        else:
            arts = first_use_fitter("autojpeg")(p, store)
        for a in arts:
            if not a.id.startswith(KIND + "-"):
                raise CodecParamsError("artifacts", f"{a.id} is not an AutoJPEG artifact")
        # order as given: the in-band index refers to this order on both ends
        self.levels = [_Level(a, p["headers"], optimize_for(p["huffman"], p["headers"])) for a in arts]
        self.multi = len(self.levels) > 1
        self._lock = threading.Lock()
        self._bw_est_kbps: float | None = None
        self._deadline_ms: float | None = None
        self.chosen: list[int] = []

    @classmethod
    def prepare(cls, params: dict) -> None:
        """Controller/runner hook: make sure the artifacts exist (fits on first use) before any stream starts."""
        cls(**params)

    # -- adaptation ------------------------------------------------------
    def set_stream(self, deadline_ms: float | None = None, period_ms: float | None = None) -> None:
        """Client hook: the stream's deadline (the next image's arrival by default)."""
        self._deadline_ms = deadline_ms or period_ms

    def feedback(self, image, encoded: Encoded, result: dict, label: int | None = None) -> None:
        """Client hook: learn the uplink rate from how long this image took to send."""
        t0, t1 = result.get("t_tx_start_ns"), result.get("t_tx_end_ns")
        nbytes = result.get("tx_bytes_delivered", encoded.total_bytes)
        if t0 and t1 and t1 > t0 and nbytes and not result.get("tx_aborted"):
            kbps = nbytes * 8 / ((t1 - t0) / 1e9) / 1000
            with self._lock:
                self._bw_est_kbps = kbps if self._bw_est_kbps is None else 0.7 * self._bw_est_kbps + 0.3 * kbps

    def budget_bytes(self) -> float | None:
        bw = self.params["bandwidth_kbps"] or self._bw_est_kbps
        dl = self.params["deadline_ms"] or self._deadline_ms
        if not bw or not dl:
            return None
        return bw * 1000 / 8 * dl / 1000 * self.params["margin"]

    def pick(self) -> int:
        if not self.multi:
            return 0
        budget = self.budget_bytes()
        order = sorted(range(len(self.levels)), key=lambda i: self.levels[i].expected_bytes)
        if budget is None:
            return order[-1]
        fit = [i for i in order if self.levels[i].expected_bytes + 1 <= budget]
        return fit[-1] if fit else order[0]

    # -- codec -----------------------------------------------------------
    def encode(self, image: np.ndarray) -> Encoded:
        i = self.pick()
        self.chosen.append(i)
        data, hdr, full_hdr = self.levels[i].profile.encode(image)
        if self.multi:
            data, hdr, full_hdr = bytes([i]) + data, hdr + 1, full_hdr + 1
        return Encoded([data], header_bytes=hdr, meta={"header_bytes_full": full_hdr, "level": i,
                                                       "artifact": self.levels[i].artifact.id})

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        if not chunks or len(chunks) < total_chunks:
            return None
        data = b"".join(chunks)
        i = 0
        if self.multi:
            i, data = data[0], data[1:]
            if i >= len(self.levels):
                return None
        return self.levels[i].profile.decode(data)

    def summary(self) -> dict:
        counts = np.bincount(self.chosen, minlength=len(self.levels)).tolist() if self.chosen else []
        return {"levels": [lv.artifact.id for lv in self.levels], "chosen_counts": counts,
                "bandwidth_estimate_kbps": self._bw_est_kbps}

    def adapt_model(self, loaded):
        """The fine-tuned target model if the (single) artifact carries one, else ``loaded``."""
        lv = self.levels[0]
        if not lv.artifact.meta.get("finetuned"):
            return loaded
        import copy

        import torch
        sd = torch.load(io.BytesIO(lv.artifact.read_bytes("model.pt")), map_location=loaded.device, weights_only=True)
        m = copy.copy(loaded)
        m.module = copy.deepcopy(loaded.module)
        m.module.load_state_dict(sd)
        m.module.eval()
        return m
