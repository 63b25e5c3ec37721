#!/usr/bin/env python3
"""Encode (client) and decode (edge) time of codec variants relative to Pillow JPEG, as JSON.

Every variant encodes the same images; the baseline is the plain ``jpeg``
codec (q75, 4:2:0, optimised Huffman: what a client would otherwise run), and
``jpeg-444`` (q75, 4:4:4) is the like-for-like reference for table-only
variants that encode all chroma at full resolution. Ratios are of medians of
per-image times over several repeats.

Families are appended to :data:`FAMILIES`: a function ``(args) -> [(label,
codec, params)]``. Variants that need artifacts take ids from the command
line or fit small ones on the synthetic default on first use.

    python benchmarks/codec_speed.py [--sizes 32,224] [--images 64] [--repeats 5] [--dataset D]
        [--grace ID] [--autojpeg ID] [--adacompress ID]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HILBED_CACHE_DIR", str(REPO / ".hilbed-cache"))
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # single-thread numbers, as on a Pi
    os.environ.setdefault(_var, "1")

Variants = list[tuple[str, str, dict]]


def _classic(args) -> Variants:
    return [("jpeg", "jpeg", {"quality": 75}),
            ("jpeg-444", "jpeg", {"quality": 75, "subsampling": "4:4:4"}),
            ("jpeg-q30", "jpeg", {"quality": 30})]


def _grace(args) -> Variants:
    base = {"artifact": args.grace} if args.grace else {}
    return [("grace", "grace", {**base, "budget": 0.4}),
            ("grace-bt601", "grace", {**base, "budget": 0.4, "colour": "bt601"}),
            ("grace-abbr", "grace", {**base, "budget": 0.4, "headers": "abbreviated"})]


def _autojpeg(args) -> Variants:
    base = {"artifact": args.autojpeg} if args.autojpeg else {}
    return [("autojpeg", "autojpeg", base),
            ("autojpeg-abbr", "autojpeg", {**base, "headers": "abbreviated"})]


def _adacompress(args) -> Variants:
    base = {"artifact": args.adacompress} if args.adacompress else {}
    return [("adacompress", "adacompress", {**base, "learn": False}),
            ("adacompress-abbr", "adacompress", {**base, "learn": False, "headers": "abbreviated"})]


def _neural(args) -> Variants:
    """PNC (numpy encoder; one model per input size: --pnc IDs, else a tiny fit per size on the synthetic
    default - the weights do not change the time) with the progressive-JPEG baselines of its paper; the
    entropic student, CR+BQ and the factorized prior when their artifacts are given (torch/compressai)."""
    out: Variants = [("pjpeg-q30", "jpeg-progressive", {"quality": 30}),
                     ("pjpeg-q75", "jpeg-progressive", {"quality": 75})]
    ids = [a for a in args.pnc.split(",") if a]
    if ids:
        out += [(f"pnc[{a}]", "pnc", {"artifact": a}) for a in ids]
    else:
        out += [(f"pnc-{s}", "pnc", {"fit_preset": "tiny", "fit_size": int(s)}) for s in args.sizes.split(",")]
    for fam in ("entropic", "crbq", "factorized"):
        out += [(f"{fam}[{a}]", fam, {"artifact": a}) for a in getattr(args, fam).split(",") if a]
    return out


def _decoder(dec):
    """What the edge runs per message: pixels, or (split computing) features + the codec's own tail."""
    if dec.split_computing:
        return lambda e: dec.predict_features(dec.decode_features(e.chunks, len(e.chunks)))
    return lambda e: dec.decode(e.chunks, len(e.chunks))


#: family name -> variants; other families (pnc, entropic, ...) append here
FAMILIES: dict[str, Callable[[argparse.Namespace], Variants]] = {
    "classic": _classic,
    "grace": _grace,
    "autojpeg": _autojpeg,
    "adacompress": _adacompress,
    "neural": _neural,
}


def _round(fn, items) -> float:
    t0 = time.perf_counter()
    for it in items:
        fn(it)
    return (time.perf_counter() - t0) / len(items)


def bench(args) -> dict:
    from hilbed.nodes.codecs import make_codec
    fams = [f for f in args.families.split(",") if f] if args.families else list(FAMILIES)
    variants: Variants = []
    for f in ["classic"] + [f for f in fams if f != "classic"]:
        variants += FAMILIES[f](args)
    out: dict = {"python": platform.python_version(), "machine": platform.machine(), "images": args.images,
                 "dataset": args.dataset, "repeats": args.repeats, "baseline": "jpeg (q75 4:2:0 optimized, Pillow)",
                 "method": "median over interleaved rounds (every variant once per round) of mean per-image time",
                 "sizes": {}}
    try:
        from PIL import __version__ as pil_version
        from PIL import features
        out["pillow"] = pil_version
        out["libjpeg_turbo"] = bool(features.check_feature("libjpeg_turbo"))
    except ImportError:
        pass
    codecs = {}
    for label, name, params in variants:  # construct once (fits on first use happen here, untimed)
        codecs[label] = (make_codec(name, params), make_codec(name, params))
    for size in [int(s) for s in args.sizes.split(",")]:
        imgs = _images(args.dataset, size, args.images)
        # a neural model is fitted for one input size (PNC would resize other sizes: not a fair time)
        sized = {k: v for k, v in codecs.items() if (v[0].input_size or size) == size}
        encoded = {label: [enc.encode(im) for im in imgs] for label, (enc, _) in sized.items()}
        t_enc: dict[str, list[float]] = {k: [] for k in sized}
        t_dec: dict[str, list[float]] = {k: [] for k in sized}
        for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
            for label, (enc, dec) in sized.items():
                t_enc[label].append(_round(enc.encode, imgs))
                t_dec[label].append(_round(_decoder(dec), encoded[label]))
        rows = {}
        for label in sized:
            rows[label] = {"encode_us": round(statistics.median(t_enc[label]) * 1e6, 2),
                           "decode_us": round(statistics.median(t_dec[label]) * 1e6, 2),
                           "bytes": round(statistics.mean(e.total_bytes for e in encoded[label]), 1)}
        base, base444 = rows["jpeg"]["encode_us"], rows["jpeg-444"]["encode_us"]
        for r in rows.values():
            r["encode_vs_jpeg"] = round(r["encode_us"] / base, 3)
            r["encode_vs_jpeg_444"] = round(r["encode_us"] / base444, 3)
        out["sizes"][str(size)] = rows
    return out


def _images(dataset: str, size: int, n: int) -> list:
    if dataset == "synthetic":
        from hilbed.nodes.workload.synthetic import make_image
        return [make_image(i, "test", 0, size)[0] for i in range(n)]
    from hilbed.nodes.codecs.fitting import load_images, open_dataset
    x, _ = load_images(open_dataset(dataset, size, "test", n), n, 0)
    return list(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32,224", help="image sides (default 32,224)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dataset", default="synthetic", help="synthetic | imagefolder:PATH | PATH (use the data the "
                                                           "artifacts were fitted for)")
    ap.add_argument("--families", default="", help=f"comma list of {', '.join(FAMILIES)} (default all)")
    ap.add_argument("--grace", default="", help="grace artifact id (default: fit on the synthetic default)")
    ap.add_argument("--autojpeg", default="", help="autojpeg artifact id")
    ap.add_argument("--adacompress", default="", help="adacompress artifact id")
    ap.add_argument("--pnc", default="", help="pnc artifact ids, comma separated (default: a tiny fit per size)")
    ap.add_argument("--entropic", default="", help="entropic artifact ids (needs torch + compressai)")
    ap.add_argument("--crbq", default="", help="crbq artifact ids (needs torch)")
    ap.add_argument("--factorized", default="", help="factorized artifact ids (needs torch + compressai)")
    args = ap.parse_args()
    print(json.dumps(bench(args), indent=2))


if __name__ == "__main__":
    main()
