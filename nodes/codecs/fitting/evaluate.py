"""Offline rate-accuracy evaluation of codec variants (no network involved).

Each variant gets two codec instances, an encoder (the client's) and a
decoder (the edge's), so whatever the edge needs must travel in the bytes.
Images go through encode -> decode -> target model in mini-batches; codecs
that learn from replies (``feedback``) get each image's reply in order after
its mini-batch, the way a client sees replies arrive while it keeps
encoding. A codec's ``decode_extra`` (reference images uploaded alongside,
AdaCompress's estimation state) is inferred too and returned as
``extra_top5``, as the edge does. The hooks are those declared on
:class:`hilbed.nodes.codecs.base.Codec` (``learns_from_feedback``,
``split_computing``, ``adapt_model``, ``summary``).

Rows report bytes per image as sent (headers included), the entropy-coded
payload (headers excluded), what a full-header stream would have cost, top-1,
top-5 and encode time.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from hilbed.nodes.codecs import make_codec


@dataclass
class Variant:
    codec: str
    params: dict = field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        if not self.label:
            self.label = self.codec + ("(" + ",".join(f"{k}={_short(v)}" for k, v in sorted(self.params.items())) + ")"
                                       if self.params else "")


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "[" + "+".join(_short(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


_RANGE = re.compile(r"^(-?[\d.eE+-]+)\.\.(-?[\d.eE+-]+)(?:/([\d.eE+-]+))?$")


def _scalar(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _values(text: str) -> list[Any]:
    """``a,b,c`` | ``lo..hi/step`` | ``[x+y]`` (one list value) -> the values to sweep."""
    out: list[Any] = []
    for part in text.split(","):
        m = _RANGE.match(part)
        if m:
            lo, hi = _scalar(m.group(1)), _scalar(m.group(2))
            step = _scalar(m.group(3)) if m.group(3) else 1
            v = lo
            while v <= hi + 1e-9:
                out.append(round(v, 10) if isinstance(v, float) else v)
                v += step
        elif part.startswith("[") and part.endswith("]"):
            out.append([_scalar(x) for x in part[1:-1].split("+") if x])
        else:
            out.append(_scalar(part))
    return out


def parse_variants(specs: list[str]) -> list[Variant]:
    """``NAME[:key=values[:key=values...]][@LABEL]`` with sweeps expanded (cartesian product).

    Values may contain ':' (``jpeg:subsampling=4:4:4``). Examples: ``jpeg:quality=10..95/5``, ``grace:artifact=grace-0123abcd4567:budget=0.01,0.05``,
    ``autojpeg:artifact=autojpeg-aaa,autojpeg-bbb``, ``autojpeg:artifacts=[autojpeg-aaa+autojpeg-bbb]``.
    """
    out: list[Variant] = []
    for spec in specs:
        for item in (s for s in re.split(r"\s+", spec.strip()) if s):
            label = ""
            if "@" in item:
                item, label = item.split("@", 1)
            name, *kvs = re.split(r":(?=[A-Za-z_][A-Za-z0-9_]*=)", item)
            if ":" in name:
                raise ValueError(f"{item!r}: expected NAME:key=value[:key=value...]")
            keys, vals = [], []
            for kv in kvs:
                if "=" not in kv:
                    raise ValueError(f"{item!r}: expected key=value, got {kv!r}")
                k, v = kv.split("=", 1)
                keys.append(k)
                vals.append(_values(v))
            combos = list(itertools.product(*vals)) if vals else [()]
            for combo in combos:
                params = dict(zip(keys, combo))
                lab = label if (label and len(combos) == 1) else (f"{label}[{','.join(map(_short, combo))}]" if label else "")
                out.append(Variant(name, params, lab))
    return out


def _top5(probs: np.ndarray) -> list[int]:
    return [int(i) for i in np.argsort(-probs)[:5]]


def evaluate_variant(v: Variant, images: np.ndarray, labels: np.ndarray, model, batch: int = 64,
                     feedback_batch: int = 16, progress: Callable[[int], None] | None = None,
                     seed: int | None = 0) -> dict:
    """Rate-accuracy of one variant on ``images`` (uint8 NHWC) with ``model`` (LoadedModel).

    A codec that learns from replies sees the images in a ``seed``-shuffled
    order (an ImageFolder lists them class by class, which no stream does);
    ``seed=None`` keeps the given order. Other codecs go in order (the result
    does not depend on it).
    """
    return variant_row(v, measure_variant(v, images, labels, model, batch, feedback_batch, progress, seed))


# per-image measurements of :func:`measure_variant`, concatenated across shards by :func:`concat_measures`
PER_IMAGE = ("sent", "hdr", "full_hdr", "enc_s", "correct1", "correct5", "extra_bytes")


def measure_variant(v: Variant, images: np.ndarray, labels: np.ndarray, model, batch: int = 64,
                    feedback_batch: int = 16, progress: Callable[[int], None] | None = None,
                    seed: int | None = 0) -> dict:
    """:func:`evaluate_variant`'s per-image measurements (arrays in image order), before averaging.

    Kept apart so that a codec that does not learn from feedback can be
    evaluated on shards of the images (hilbed.orchestrator.scale.sweep) and
    the shards concatenated into exactly the row a single pass gives.
    """
    enc_codec = make_codec(v.codec, v.params)
    dec_codec = make_codec(v.codec, v.params)
    has_fb = enc_codec.learns_from_feedback
    # split-computing codecs (entropic student, CR+BQ) decode to features and predict with their own tail
    has_feat = dec_codec.split_computing
    model = dec_codec.adapt_model(model)  # e.g. AutoJPEG fitted with --finetune; most return it unchanged
    step = feedback_batch if has_fb else batch
    n = len(images)
    order = np.random.default_rng(seed).permutation(n) if has_fb and seed is not None else np.arange(n)
    sent = np.zeros(n)
    hdr = np.zeros(n)
    full_hdr = np.zeros(n)
    enc_s = np.zeros(n)
    correct1 = np.zeros(n, bool)
    correct5 = np.zeros(n, bool)
    failed = 0
    extra_bytes = np.zeros(n)
    for start in range(0, n, step):
        idx = [int(i) for i in order[start:start + step]]
        encs, pix, ok = [], [], []
        for i in idx:
            t0 = time.perf_counter()
            e = enc_codec.encode(images[i])
            enc_s[i] = time.perf_counter() - t0
            encs.append(e)
            sent[i] = e.total_bytes
            hdr[i] = e.header_bytes
            full_hdr[i] = e.meta.get("header_bytes_full", e.header_bytes)
            extra_bytes[i] = e.meta.get("extra_bytes", 0)
            if has_feat:
                f = dec_codec.decode_features(e.chunks, len(e.chunks))
                ok.append(f is not None)
                pix.append(dec_codec.predict_features(f)[0] if f is not None else None)
                continue
            d = dec_codec.decode(e.chunks, len(e.chunks))
            ok.append(d is not None)
            pix.append(d if d is not None else np.zeros_like(images[i]))
        if has_feat:
            probs = np.stack([p if p is not None else np.zeros(len(model.classes)) for p in pix])
        else:
            probs = model.predict(np.stack(pix))
        extras: list[list[list[int]]] = [[] for _ in idx]
        for k, e in enumerate(encs):  # [] for codecs that upload nothing extra
            imgs = dec_codec.decode_extra(e.chunks, len(e.chunks)) or []
            if imgs:
                extras[k] = [_top5(p) for p in model.predict(np.stack(imgs))]
        for k, i in enumerate(idx):
            t5 = _top5(probs[k]) if ok[k] else []
            if not ok[k]:
                failed += 1
            correct1[i] = bool(t5) and t5[0] == labels[i]
            correct5[i] = int(labels[i]) in t5
            if has_fb:
                result = {"decoded": ok[k], "top5": t5, "top5_prob": [float(probs[k][j]) for j in t5]}
                if extras[k]:
                    result["extra_top5"] = extras[k]
                enc_codec.feedback(images[i], encs[k], result, int(labels[i]))
        if progress:
            progress(len(idx))
    return {"sent": sent, "hdr": hdr, "full_hdr": full_hdr, "enc_s": enc_s, "correct1": correct1,
            "correct5": correct5, "extra_bytes": extra_bytes, "failed": failed, "summary": enc_codec.summary()}


def concat_measures(parts: list[dict]) -> dict:
    """Measurements of consecutive shards -> those of the whole (the first summary a shard reports)."""
    out = {k: np.concatenate([p[k] for p in parts]) for k in PER_IMAGE}
    out["failed"] = sum(int(p["failed"]) for p in parts)
    out["summary"] = next((p["summary"] for p in parts if p.get("summary") is not None), None)
    return out


def variant_row(v: Variant, m: dict) -> dict:
    """The table row of ``v`` from its measurements (means per image)."""
    sent, hdr, full_hdr = m["sent"], m["hdr"], m["full_hdr"]
    payload = sent - hdr
    row = {
        "label": v.label, "codec": v.codec, "params": v.params, "n": len(sent),
        "bytes_sent": float(sent.mean()), "bytes_payload": float(payload.mean()),
        "bytes_header": float(hdr.mean()), "bytes_full_headers": float((payload + full_hdr).mean()),
        "bytes_extra": float(m["extra_bytes"].mean()),
        "top1": float(m["correct1"].mean()), "top5": float(m["correct5"].mean()),
        "decode_failures": m["failed"], "encode_ms": float(m["enc_s"].mean() * 1e3),
    }
    if m.get("summary") is not None:
        row["codec_summary"] = m["summary"]
    return row


SWEEP_KEYS = {"quality", "budget", "B", "artifact", "artifacts"}


def series_of(row: dict) -> str:
    """The curve a row belongs to: its label's stem, or codec + the params that are not swept."""
    if "[" in row["label"]:
        return row["label"].split("[")[0]
    rest = {k: v for k, v in row.get("params", {}).items() if k not in SWEEP_KEYS}
    return row["codec"] + ("(" + ",".join(f"{k}={_short(v)}" for k, v in sorted(rest.items())) + ")" if rest else "")


def evaluate_prefixes(v: Variant, images: np.ndarray, labels: np.ndarray, model, batch: int = 64,
                      progress: Callable[[int], None] | None = None) -> list[dict]:
    """A progressive variant cut after k chunks, for every k: one row per k (label ``LABEL@k``).

    This is what the edge does at a deadline (it decodes the complete chunks that
    arrived); an image with fewer than k chunks counts whole. For PNC a chunk is
    a 64-byte block, for progressive JPEG a scan.
    """
    enc_codec = make_codec(v.codec, v.params)
    dec_codec = make_codec(v.codec, v.params)
    encs = [enc_codec.encode(im) for im in images]
    kmax = max(len(e.chunks) for e in encs)
    rows = []
    for k in range(1, kmax + 1):
        sent = np.array([sum(len(c) for c in e.chunks[:k]) for e in encs], float)
        hdr = np.array([min(e.header_bytes, s) for e, s in zip(encs, sent)], float)
        correct1 = np.zeros(len(images), bool)
        correct5 = np.zeros(len(images), bool)
        failed = 0
        for start in range(0, len(images), batch):
            idx = range(start, min(len(images), start + batch))
            pix, ok = [], []
            for i in idx:
                d = dec_codec.decode(encs[i].chunks[:k], len(encs[i].chunks))
                ok.append(d is not None)
                pix.append(d if d is not None else np.zeros_like(images[i]))
            probs = model.predict(np.stack(pix))
            for j, i in enumerate(idx):
                t5 = _top5(probs[j]) if ok[j] else []
                failed += not ok[j]
                correct1[i] = bool(t5) and t5[0] == labels[i]
                correct5[i] = int(labels[i]) in t5
        rows.append({"label": f"{v.label}@{k}", "codec": v.codec, "params": {**v.params, "chunks": k}, "n": len(images),
                     "chunks": k, "bytes_sent": float(sent.mean()), "bytes_payload": float((sent - hdr).mean()),
                     "bytes_header": float(hdr.mean()), "bytes_full_headers": float(sent.mean()), "bytes_extra": 0.0,
                     "top1": float(correct1.mean()), "top5": float(correct5.mean()), "decode_failures": failed,
                     "encode_ms": 0.0})
        if progress:
            progress(len(images) // kmax)
    return rows


def pareto(rows: list[dict], x: str = "bytes_payload", y: str = "top1") -> list[dict]:
    """Rows not dominated (fewer bytes and higher accuracy) by another row."""
    pts = sorted(rows, key=lambda r: (r[x], -r[y]))
    out, best = [], -math.inf
    for r in pts:
        if r[y] > best:
            out.append(r)
            best = r[y]
    return out


def bytes_for_accuracy(rows: list[dict], target: float, x: str = "bytes_payload", y: str = "top1") -> float | None:
    """Bytes the curve needs to reach ``target`` accuracy, linearly interpolated on its Pareto front.

    None outside the front's accuracy range (no extrapolation either way).
    """
    front = pareto(rows, x, y)
    if not front or front[-1][y] < target or front[0][y] > target:
        return None
    if front[0][y] == target:
        return front[0][x]
    for a, b in zip(front, front[1:]):
        if a[y] < target <= b[y]:
            return a[x] + (b[x] - a[x]) * (target - a[y]) / (b[y] - a[y])
    return None


def compare_to_reference(rows: list[dict], ref_codec: str = "jpeg", x: str = "bytes_payload") -> dict:
    """For each other codec family: the best byte ratio at which it matches a reference point's top-1.

    ``point_ratio``: min over (family point p, reference point r with p.top1 >= r.top1) of p.bytes / r.bytes
    (the literal "reaches JPEG's top-1 at <= k x its bytes somewhere on the curve").
    ``front_ratio``: the same against the reference's Pareto front, interpolated (stricter).
    """
    ref = [r for r in rows if r["codec"] == ref_codec]
    out = {}
    for fam in sorted({r["codec"] for r in rows} - {ref_codec}):
        pts = [r for r in rows if r["codec"] == fam]
        best = None
        for p in pts:
            for r in ref:
                if p["top1"] >= r["top1"] and r[x] > 0:
                    ratio = p[x] / r[x]
                    if best is None or ratio < best[0]:
                        best = (ratio, p["label"], r["label"])
        fbest = None
        for p in pts:
            need = bytes_for_accuracy(ref, p["top1"], x)
            if need:
                ratio = p[x] / need
                if fbest is None or ratio < fbest[0]:
                    fbest = (ratio, p["label"], p["top1"])
        out[fam] = {"point_ratio": best[0] if best else None, "point": best[1:] if best else None,
                    "front_ratio": fbest[0] if fbest else None, "front_point": fbest[1:] if fbest else None}
    return out


def write_outputs(rows: list[dict], out_dir: Path, title: str = "", meta: dict | None = None) -> dict[str, Path]:
    """results.json, results.csv and rate_accuracy.png (payload and as-sent bytes vs top-1)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "png": out_dir / "rate_accuracy.png"}
    paths["json"].write_text(json.dumps({"meta": meta or {}, "rows": rows,
                                         "vs_jpeg": compare_to_reference(rows)}, indent=2, default=str))
    cols = ["label", "codec", "n", "bytes_sent", "bytes_payload", "bytes_header", "bytes_full_headers",
            "bytes_extra", "top1", "top5", "decode_failures", "encode_ms", "model_mismatch"]
    lines = [",".join(cols)]
    for r in rows:
        vals = [r.get(c, "") for c in cols]
        lines.append(",".join(json.dumps(x) if isinstance(x, str) else f"{x:.6g}" if isinstance(x, float)
                              else str(x) for x in vals))
    paths["csv"].write_text("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        series = sorted({series_of(r) for r in rows})
        for ax, key, name in ((axes[0], "bytes_payload", "bytes per image, headers excluded"),
                              (axes[1], "bytes_sent", "bytes per image as sent")):
            for ser in series:
                pts = sorted((r for r in rows if series_of(r) == ser), key=lambda r: r[key])
                ax.plot([p[key] for p in pts], [100 * p["top1"] for p in pts], "o-" if len(pts) > 1 else "o",
                        label=ser, ms=4)
            ax.set_xlabel(name)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("top-1 %")
        axes[1].legend(loc="lower right", fontsize=7)
        fig.suptitle(title or "rate-accuracy")
        fig.tight_layout()
        fig.savefig(paths["png"], dpi=120)
        plt.close(fig)
    except ImportError:
        paths.pop("png")
    return paths


# ------------------------------------------------------ partial results ---

PARTIAL = "partial.jsonl"
RESUME_KEYS = ("dataset", "model", "n", "size", "seed", "batch", "feedback_batch")


def unit_key(v: Variant, unit: str = "variant") -> str:
    """Identifies one unit of work (a variant's row, or its prefix rows) across runs."""
    return json.dumps({"unit": unit, "codec": v.codec, "params": v.params, "label": v.label},
                      sort_keys=True, default=str)


class PartialLog:
    """``partial.jsonl`` in the output directory: a header line, then one line per completed unit.

    Each line is flushed and fsynced as it is written, so a run that is killed
    keeps every unit it finished; :meth:`open` with ``resume`` reads them back
    (a torn last line is ignored) after checking that the header's settings
    are those of this run.
    """

    def __init__(self, path: Path, done: dict[str, list[dict]]):
        self.path = Path(path)
        self.done = done

    @classmethod
    def open(cls, out_dir: Path, header: dict, resume: bool) -> "PartialLog":
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / PARTIAL
        done: dict[str, list[dict]] = {}
        if path.exists() and path.stat().st_size:
            if not resume:
                raise FileExistsError(f"{path} holds results of an earlier run: pass --resume to keep them "
                                      "(or another --out)")
            lines = path.read_text().splitlines()
            docs = []
            for line in lines:
                try:
                    docs.append(json.loads(line))
                except json.JSONDecodeError:  # the line a kill cut short
                    continue
            old = next((d["header"] for d in docs if "header" in d), None)
            if old is not None:
                diff = {k: (old.get(k), header.get(k)) for k in RESUME_KEYS if old.get(k) != header.get(k)}
                if diff:
                    raise ValueError(f"cannot resume from {path}: settings differ "
                                     + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()))
            for d in docs:
                if "key" in d:
                    done[d["key"]] = d["rows"]
            good = "".join(json.dumps(d, default=str) + "\n" for d in docs)
            if good != path.read_text():  # drop a torn line so appends stay parseable
                path.write_text(good)
            if old is None:
                cls._append(path, {"header": header})
        else:
            path.write_text("")
            cls._append(path, {"header": header})
        return cls(path, done)

    @staticmethod
    def _append(path: Path, doc: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(doc, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def get(self, key: str) -> list[dict] | None:
        return self.done.get(key)

    def add(self, key: str, rows: Iterable[dict]) -> None:
        rows = list(rows)
        self.done[key] = rows
        self._append(self.path, {"key": key, "rows": rows})


# ---------------------------------------------------- model fingerprint ---

def artifact_ids(params: dict) -> list[str]:
    one = params.get("artifact")
    ids = [one] if isinstance(one, str) and one not in ("", "none") else []
    return ids + [str(a) for a in (params.get("artifacts") or [])]


def fingerprint_mismatches(v: Variant, fingerprint: str | None, store=None) -> list[dict]:
    """The artifacts of ``v`` whose recorded ``model_fingerprint`` is not ``fingerprint`` (the evaluated model's).

    Artifacts that record none, or that are not in the store (the codec
    reports that itself), are not listed.
    """
    if not fingerprint:
        return []
    from hilbed.nodes.codecs.artifacts import ArtifactStore
    store = store or ArtifactStore()
    out = []
    for aid in artifact_ids(v.params):
        try:
            fp = store.get(aid).meta.get("model_fingerprint")
        except FileNotFoundError:
            continue
        if fp and fp != fingerprint:
            out.append({"artifact": aid, "fitted_for": fp})
    return out
