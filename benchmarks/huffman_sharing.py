#!/usr/bin/env python3
"""Bytes per image of abbreviated JPEG-family streams with standard, per-image optimised and fit-set-shared
Huffman tables, as JSON.

Per codec configuration (plain JPEG, GRACE, AutoJPEG tables + colour):

* ``standard``: libjpeg's standard tables, pre-shared (what ``huffman: standard`` / ``auto`` sends);
* ``optimized``: per-image optimised tables, whose DHT segments travel in every image stream;
* ``shared``: tables optimised once on ``--fit`` images (T.81 K.2 over the symbols of all fit
  images, every legal symbol kept codable) and pre-shared like the standard ones; each evaluation
  image is re-coded with them (:func:`hilbed.nodes.codecs.jpeg_tables.recode`), decodes to the same
  pixels as its standard-table stream.

``sent`` is the abbreviated stream (what crosses the link), ``payload`` its entropy-coded data.
Progressive JPEG always carries per-scan optimised tables (libjpeg forces optimisation in
progressive mode); its row reports the DHT bytes per image, the ceiling of what pre-sharing could save.

    python benchmarks/huffman_sharing.py [--fit cifar10:fit] [--eval cifar10:dev] [--n-fit 500] [--n 500]
        [--grace ID] [--autojpeg ID]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HILBED_CACHE_DIR", str(REPO / ".hilbed-cache"))
if (REPO.parent / "shared" / "data").is_dir():
    os.environ.setdefault("HILBED_DATA_MIRROR", str(REPO.parent / "shared" / "data"))


def _log(msg: str) -> None:
    print(f"[huffman_sharing] {msg}", file=sys.stderr, flush=True)


def configs(args) -> dict:
    from hilbed.nodes.codecs.jpeg_tables import ColourTransform, JpegProfile
    out = {"jpeg q75 4:2:0": JpegProfile(quality=75, optimize=False, subsampling="4:2:0", headers="abbreviated"),
           "jpeg q75 4:4:4": JpegProfile(quality=75, optimize=False, subsampling="4:4:4", headers="abbreviated"),
           "jpeg q30 4:2:0": JpegProfile(quality=30, optimize=False, subsampling="4:2:0", headers="abbreviated")}
    if args.grace:
        from hilbed.nodes.codecs import make_codec
        for b in (0.3, 0.5):
            g = make_codec("grace", {"artifact": args.grace, "budget": b, "headers": "abbreviated"})
            out[f"grace G-YUV budget {b}"] = g.profile
    if args.autojpeg:
        from hilbed.nodes.codecs import make_codec
        a = make_codec("autojpeg", {"artifact": args.autojpeg, "headers": "abbreviated"})
        out["autojpeg"] = a.levels[0].profile
    _ = ColourTransform
    return out


def measure(prof, fit_imgs, eval_imgs) -> dict:
    import numpy as np

    from hilbed.nodes.codecs.jpeg_tables import (
        M_DHT,
        JpegProfile,
        decode_jpeg,
        fit_huffman,
        header_bytes,
        recode,
        split_stream,
    )
    opt = JpegProfile(tables=prof.tables, quality=prof.quality, colour=prof.colour, optimize=True,
                      subsampling=prof.subsampling, headers="abbreviated")
    t0 = time.perf_counter()
    tables = fit_huffman([prof._full(x) for x in fit_imgs])
    t_fit = time.perf_counter() - t0
    rows = {"standard": [], "optimized": [], "shared": []}
    markers = prof.markers | {M_DHT}
    mismatches = 0
    t_rec = 0.0
    for x in eval_imgs:
        std_full = prof._full(x)
        a = split_stream(std_full, markers)[1]
        rows["standard"].append((len(a), len(a) - header_bytes(a)))
        o = opt.encode(x)[0]
        rows["optimized"].append((len(o), len(o) - header_bytes(o)))
        t = time.perf_counter()
        sh_full = recode(std_full, tables)
        t_rec += time.perf_counter() - t
        s = split_stream(sh_full, markers)[1]
        rows["shared"].append((len(s), len(s) - header_bytes(s)))
        if not np.array_equal(decode_jpeg(sh_full, prof.colour), decode_jpeg(std_full, prof.colour)):
            mismatches += 1
    out = {k: {"sent": round(float(np.mean([r[0] for r in v])), 2), "payload": round(float(np.mean([r[1] for r in v])), 2)}
           for k, v in rows.items()}
    base = out["standard"]["payload"]
    for v in out.values():
        v["payload_vs_standard"] = round(v["payload"] / base, 4)
    out["shared_dht_bytes"] = len(split_stream(recode(prof._full(eval_imgs[0]), tables), markers)[0]) - \
        len(prof.tables_stream)
    out["decode_mismatches"] = mismatches
    out["fit_s"] = round(t_fit, 2)
    out["recode_ms_per_image"] = round(1000 * t_rec / len(eval_imgs), 3)
    return out


def progressive_dht(eval_imgs, quality: int = 75) -> dict:
    import numpy as np

    from hilbed.nodes.codecs.jpeg_tables import M_DHT, _segments
    from hilbed.nodes.codecs.pillow_family import ProgressiveJpegCodec
    c = ProgressiveJpegCodec(quality=quality)
    dht, sent = [], []
    for x in eval_imgs:
        data = b"".join(c.encode(x).chunks)
        sent.append(len(data))
        n, i = 0, 2
        # DHT segments sit before every scan in a progressive stream: walk all markers outside entropy data
        while True:
            j = data.find(b"\xff\xc4", i)
            if j < 0:
                break
            n += 2 + int.from_bytes(data[j + 2:j + 4], "big")
            i = j + 2
        dht.append(n)
    _ = (_segments, M_DHT)
    return {"sent": round(float(np.mean(sent)), 2), "dht_bytes": round(float(np.mean(dht)), 2),
            "dht_share": round(float(np.mean(dht) / np.mean(sent)), 4)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fit", default="cifar10:fit", help="images the shared tables are optimised on")
    ap.add_argument("--eval", default="cifar10:dev", help="images the bytes are measured on")
    ap.add_argument("--n-fit", type=int, default=500)
    ap.add_argument("--n", type=int, default=500, help="evaluation images")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--grace", default="", help="grace artifact id (adds GRACE budgets 0.3, 0.5)")
    ap.add_argument("--autojpeg", default="", help="autojpeg artifact id")
    args = ap.parse_args(argv)
    from hilbed.nodes.codecs.fitting import load_images, open_dataset

    def imgs(spec, n, split):
        x, _ = load_images(open_dataset(spec, args.size, split, n), n, 0)
        return list(x)

    fit_imgs, eval_imgs = imgs(args.fit, args.n_fit, "train"), imgs(args.eval, args.n, "test")
    out = {"fit": args.fit, "eval": args.eval, "n_fit": len(fit_imgs), "n": len(eval_imgs), "size": args.size,
           "configs": {}}
    for name, prof in configs(args).items():
        _log(f"{name} ...")
        out["configs"][name] = measure(prof, fit_imgs, eval_imgs)
        _log(f"{name}: {json.dumps(out['configs'][name])}")
    out["configs"]["jpeg-progressive q75 (DHT per image)"] = progressive_dht(eval_imgs)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
