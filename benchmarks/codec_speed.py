#!/usr/bin/env python3
"""Encode (client) and decode (edge) time of codec variants relative to Pillow JPEG, as JSON.

Every variant encodes the same images; the baseline is the plain ``jpeg``
codec (q75, 4:2:0, optimised Huffman: what a client would otherwise run), and
``jpeg-444`` (q75, 4:4:4) is the like-for-like reference for table-only
variants that encode all chroma at full resolution. Ratios are of medians of
per-image times over several interleaved rounds.

Artifacts: variants that need one take ids from the command line; otherwise
the benchmark fits *tiny* ones once (a few dozen synthetic images, a few
optimisation steps: the fitted values do not change the time, only the bytes)
and records their ids in ``--cache`` (default ``.hilbed-cache/codec_speed``),
so the next run reuses them and starts timing at once. ``--refit`` fits again.
Progress goes to stderr (a rich bar on a terminal, plain lines elsewhere);
stdout gets one JSON object at the end.

Defaults are sized for a shared 2-core machine: about 2 minutes and < 1.5 GB
resident on the first run (fits included), well under a minute afterwards.
For the numbers in docs/codecs.md use e.g. ``--images 64 --repeats 7``.

Families are appended to :data:`FAMILIES`: a function ``(args) -> [(label,
codec, params)]``; :data:`TINY_FITS` fits a family's stand-in artifact.

    python benchmarks/codec_speed.py [--sizes 32,224] [--images 32] [--repeats 5] [--dataset D]
        [--families classic,grace,...] [--grace ID] [--autojpeg ID] [--adacompress ID] [--pnc IDS]
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

FIT_DATASET, FIT_MODEL = "synthetic", "synthetic-cnn"


# ------------------------------------------------------------ progress ---

class Progress:
    """A rich bar when stderr is a terminal, else one plain line on stderr per step."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._rich = None
        self._task = None
        self.t0 = time.perf_counter()
        if not quiet and sys.stderr.isatty():
            try:
                from rich.console import Console
                from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
                from rich.progress import Progress as RichProgress
                self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                          console=Console(stderr=True), transient=True)
                self._rich.start()
                self._task = self._rich.add_task("codec_speed", total=1.0)
            except ImportError:
                self._rich = None

    def __call__(self, message: str, fraction: float | None = None) -> None:
        if self.quiet:
            return
        if self._rich is not None:
            kw = {"completed": fraction} if fraction is not None else {}
            self._rich.update(self._task, description=message, **kw)
            return
        pct = f"{100 * fraction:5.1f}% " if fraction is not None else ""
        print(f"[codec_speed {time.perf_counter() - self.t0:6.1f}s] {pct}{message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


# ----------------------------------------------------------- tiny fits ---

def _prepared(n: int, size: int = 32):
    from hilbed.nodes.codecs import fitting as F
    F.set_threads(1)
    return F.prepare(FIT_DATASET, FIT_MODEL, n, size, 0, "cpu")


def _fit_grace(args, size: int) -> list[str]:
    from hilbed.nodes.codecs.artifacts import ArtifactStore
    from hilbed.nodes.codecs.fitting.grace import fit_grace
    x, y, loaded, src = _prepared(args.fit_images)
    return [fit_grace(x, y, loaded, src.meta(), ArtifactStore()).id]


def _fit_autojpeg(args, size: int) -> list[str]:
    from hilbed.nodes.codecs.artifacts import ArtifactStore
    from hilbed.nodes.codecs.fitting.autojpeg import fit_autojpeg
    x, y, loaded, src = _prepared(args.fit_images)
    arts = fit_autojpeg(x, y, loaded, src.meta(), ArtifactStore(), [0.1], steps=args.fit_steps,
                        min_steps=args.fit_steps, batch=16, measure_n=min(16, len(x)))
    return [a.id for a in arts]


def _fit_adacompress(args, size: int) -> list[str]:
    from hilbed.nodes.codecs.artifacts import ArtifactStore
    from hilbed.nodes.codecs.fitting.adacompress import fit_adacompress
    from hilbed.nodes.codecs.nets.adacompress import Hyper
    x, y, loaded, src = _prepared(args.fit_images)
    return [fit_adacompress(x, y, loaded, src.meta(), ArtifactStore(), Hyper(), 10 * args.fit_steps, "top1",
                            "upload", "full").id]


def _fit_pnc(args, size: int) -> list[str]:
    from dataclasses import replace

    from hilbed.nodes.codecs import fitting as F
    from hilbed.nodes.codecs.artifacts import ArtifactStore
    from hilbed.nodes.codecs.fitting.neural import load_images
    from hilbed.nodes.codecs.fitting.pnc import PRESETS, fit_pnc
    n = min(args.fit_images, 32)
    data = load_images(F.dataset_spec(FIT_DATASET), size, n, 0)
    fit = replace(PRESETS["tiny"], limit=n, epochs1=0.5, epochs2=0.5, batch=min(16, n), augment=False)
    return [fit_pnc(data, F.model_spec(FIT_MODEL), fit=fit, store=ArtifactStore()).id]


#: family -> (fit function (args, size) -> artifact ids, per size?)
TINY_FITS: dict[str, tuple[Callable[[argparse.Namespace, int], list[str]], bool]] = {
    "grace": (_fit_grace, False),
    "autojpeg": (_fit_autojpeg, False),
    "adacompress": (_fit_adacompress, False),
    "pnc": (_fit_pnc, True),
}


class TinyArtifacts:
    """Stand-in artifacts fitted once and remembered in ``<cache>/artifacts.json`` (settings -> ids)."""

    def __init__(self, args, progress: Progress):
        self.args = args
        self.progress = progress
        self.path = Path(args.cache) / "artifacts.json"
        try:
            self.index = {} if args.refit else json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.index = {}

    def _key(self, family: str, size: int) -> str:
        return json.dumps({"family": family, "size": size if TINY_FITS[family][1] else 32, "dataset": FIT_DATASET,
                           "model": FIT_MODEL, "images": self.args.fit_images, "steps": self.args.fit_steps,
                           "v": 1}, sort_keys=True)

    def ids(self, family: str, size: int = 32) -> list[str]:
        from hilbed.nodes.codecs.artifacts import ArtifactStore
        key = self._key(family, size)
        ids = self.index.get(key)
        store = ArtifactStore()
        if ids and all((store.root / i).exists() for i in ids):
            return ids
        self.progress(f"fitting a tiny {family} artifact ({size} px; once, cached in {self.path.parent})")
        t0 = time.perf_counter()
        ids = TINY_FITS[family][0](self.args, size)
        self.progress(f"fitted {family} in {time.perf_counter() - t0:.1f}s: {', '.join(ids)}")
        self.index[key] = ids
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.index, indent=1))
        os.replace(tmp, self.path)
        return ids


# ------------------------------------------------------------ variants ---

def _classic(args) -> Variants:
    return [("jpeg", "jpeg", {"quality": 75}),
            ("jpeg-444", "jpeg", {"quality": 75, "subsampling": "4:4:4"}),
            ("jpeg-444-std", "jpeg", {"quality": 75, "subsampling": "4:4:4", "optimize": False}),
            ("jpeg-q30", "jpeg", {"quality": 30})]


#: Pillow JPEG q75 baselines by (subsampling, optimised Huffman tables): a variant's like-for-like reference
LIKE_FOR_LIKE = {("4:2:0", True): "jpeg", ("4:4:4", True): "jpeg-444", ("4:4:4", False): "jpeg-444-std"}

#: ``(label, SAME_TABLES, {"of": label})``: Pillow JPEG (``Image.save``, libjpeg's own BT.601) with that
#: variant's quantisation tables, subsampling and Huffman mode - what its encode would cost if libjpeg did
#: the colour transform. Resolved in :func:`bench` once the variant exists.
SAME_TABLES = "pillow-same-tables"


def _grace(args) -> Variants:
    aid = args.grace or args.tiny.ids("grace")[0]
    base = {"artifact": aid}
    return [("grace", "grace", {**base, "budget": 0.4}),
            ("grace-bt601", "grace", {**base, "budget": 0.4, "colour": "bt601"}),
            ("grace-abbr", "grace", {**base, "budget": 0.4, "headers": "abbreviated"}),
            ("grace:pillow-same-tables", SAME_TABLES, {"of": "grace"})]


def _autojpeg(args) -> Variants:
    base = {"artifact": args.autojpeg or args.tiny.ids("autojpeg")[0]}
    return [("autojpeg", "autojpeg", base),
            ("autojpeg-abbr", "autojpeg", {**base, "headers": "abbreviated"}),
            ("autojpeg:pillow-same-tables", SAME_TABLES, {"of": "autojpeg"})]


def _adacompress(args) -> Variants:
    base = {"artifact": args.adacompress or args.tiny.ids("adacompress")[0], "learn": False}
    return [("adacompress", "adacompress", base),
            ("adacompress-abbr", "adacompress", {**base, "headers": "abbreviated"})]


def _neural(args) -> Variants:
    """PNC (numpy encoder; one model per input size: --pnc IDs, else a tiny fit per --pnc-fit-sizes size on the
    synthetic default - the weights do not change the time) with the progressive-JPEG baselines of its paper; the
    entropic student, CR+BQ and the factorized prior when their artifacts are given (torch/compressai)."""
    out: Variants = [("pjpeg-q30", "jpeg-progressive", {"quality": 30}),
                     ("pjpeg-q75", "jpeg-progressive", {"quality": 75})]
    ids = [a for a in args.pnc.split(",") if a]
    if ids:
        out += [(f"pnc[{a}]", "pnc", {"artifact": a}) for a in ids]
    else:
        sizes = [s for s in args.sizes.split(",") if s in args.pnc_fit_sizes.split(",")]
        out += [(f"pnc-{s}", "pnc", {"artifact": args.tiny.ids("pnc", int(s))[0]}) for s in sizes]
    for fam in ("entropic", "crbq", "factorized"):
        out += [(f"{fam}[{a}]", fam, {"artifact": a}) for a in getattr(args, fam).split(",") if a]
    return out


def _profile(codec):
    """The JpegProfile a JPEG-family codec encodes with (AutoJPEG: its first level), else None."""
    levels = getattr(codec, "levels", None)
    return getattr(codec, "profile", None) or getattr(codec, "_profile", None) or (levels[0].profile if levels
                                                                                  else None)


def _settings(codec) -> dict:
    """What decides libjpeg's work: subsampling, Huffman optimisation, who converts the colours."""
    if isinstance(codec, PillowSameTables):
        return codec.settings
    p = _profile(codec)
    if p is not None:
        custom = p.colour is not None and not p.colour.is_standard()
        return {"subsampling": p.subsampling, "optimize": bool(p.optimize),
                "colour": "numpy (custom weights)" if custom else "libjpeg (BT.601)"}
    params = getattr(codec, "params", {})
    if getattr(codec, "name", "") == "jpeg":
        return {"subsampling": params["subsampling"], "optimize": bool(params["optimize"]),
                "colour": "libjpeg (BT.601)"}
    return {}


class PillowSameTables:
    """Pillow JPEG as a client would call it (``Image.fromarray`` + ``Image.save``, libjpeg converting RGB with
    BT.601) with another variant's quantisation tables, subsampling and Huffman mode."""

    split_computing = False
    input_size = None

    def __init__(self, codec):
        p = _profile(codec)
        self.kw = {"format": "JPEG", **p._kw}
        self.settings = {"subsampling": p.subsampling, "optimize": bool(p.optimize), "colour": "libjpeg (BT.601)"}

    def encode(self, image):
        import io

        import numpy as np
        from PIL import Image

        from hilbed.nodes.codecs.base import Encoded
        from hilbed.nodes.codecs.jpeg_tables import header_bytes
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(buf, **self.kw)
        data = buf.getvalue()
        return Encoded([data], header_bytes=header_bytes(data))

    def decode(self, chunks, total_chunks):
        from hilbed.nodes.codecs.jpeg_tables import decode_jpeg
        return decode_jpeg(b"".join(chunks))


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


# ---------------------------------------------------------------- bench ---

def _round(fn, items) -> float:
    t0 = time.perf_counter()
    for it in items:
        fn(it)
    return (time.perf_counter() - t0) / len(items)


def bench(args, progress: Progress | None = None) -> dict:
    from hilbed.nodes.codecs import make_codec
    progress = progress or Progress(quiet=True)
    args.tiny = TinyArtifacts(args, progress)
    fams = [f for f in args.families.split(",") if f] if args.families else list(FAMILIES)
    variants: Variants = []
    for f in ["classic"] + [f for f in fams if f != "classic"]:
        progress(f"variants of {f}")
        variants += FAMILIES[f](args)
    out: dict = {"python": platform.python_version(), "machine": platform.machine(), "images": args.images,
                 "dataset": args.dataset, "repeats": args.repeats, "baseline": "jpeg (q75 4:2:0 optimized, Pillow)",
                 "ratios": {"encode_vs_jpeg": "to Pillow JPEG q75 4:2:0, optimised Huffman (Image.save)",
                            "encode_vs_jpeg_444": "to Pillow JPEG q75 4:4:4, optimised Huffman",
                            "encode_vs_like": "to Pillow JPEG q75 with the variant's subsampling and Huffman "
                                              "mode (like_for_like; apples to apples but for the tables)",
                            "encode_vs_same_tables": "to Pillow JPEG (Image.save) with the variant's own tables, "
                                                     "subsampling and Huffman mode, libjpeg converting BT.601: the "
                                                     "cost of the custom colour transform alone"},
                 "method": "median over interleaved rounds (every variant once per round) of mean per-image time",
                 "artifacts": {label: p["artifact"] for label, _, p in variants if p.get("artifact")},
                 "sizes": {}}
    try:
        from PIL import __version__ as pil_version
        from PIL import features
        out["pillow"] = pil_version
        out["libjpeg_turbo"] = bool(features.check_feature("libjpeg_turbo"))
    except ImportError:
        pass
    codecs = {}
    for label, name, params in variants:  # construct once (untimed)
        if name == SAME_TABLES:
            codecs[label] = (PillowSameTables(codecs[params["of"]][0]), PillowSameTables(codecs[params["of"]][0]))
        else:
            codecs[label] = (make_codec(name, params), make_codec(name, params))
    settings = {label: _settings(enc) for label, (enc, _) in codecs.items()}
    out["settings"] = settings
    sizes = [int(s) for s in args.sizes.split(",")]
    for si, size in enumerate(sizes):
        imgs = _images(args.dataset, size, args.images)
        # a neural model is fitted for one input size (PNC would resize other sizes: not a fair time)
        sized = {k: v for k, v in codecs.items() if (v[0].input_size or size) == size}
        encoded = {label: [enc.encode(im) for im in imgs] for label, (enc, _) in sized.items()}
        t_enc: dict[str, list[float]] = {k: [] for k in sized}
        t_dec: dict[str, list[float]] = {k: [] for k in sized}
        for r in range(args.repeats):  # interleaved, so load changes hit every variant alike
            progress(f"{size} px: round {r + 1}/{args.repeats} of {len(sized)} variants x {len(imgs)} images",
                     (si + r / args.repeats) / len(sizes))
            for label, (enc, dec) in sized.items():
                t_enc[label].append(_round(enc.encode, imgs))
                t_dec[label].append(_round(_decoder(dec), encoded[label]))
        rows = {}
        for label in sized:
            rows[label] = {"encode_us": round(statistics.median(t_enc[label]) * 1e6, 2),
                           "decode_us": round(statistics.median(t_dec[label]) * 1e6, 2),
                           "bytes": round(statistics.mean(e.total_bytes for e in encoded[label]), 1)}
        base, base444 = rows["jpeg"]["encode_us"], rows["jpeg-444"]["encode_us"]
        dbase = rows["jpeg"]["decode_us"]
        for label, r in rows.items():
            r["encode_vs_jpeg"] = round(r["encode_us"] / base, 3)
            r["encode_vs_jpeg_444"] = round(r["encode_us"] / base444, 3)
            st = settings[label]
            like = LIKE_FOR_LIKE.get((st.get("subsampling"), st.get("optimize")))
            if like in rows:  # same subsampling and Huffman mode, Pillow JPEG q75
                r["like_for_like"] = like
                r["encode_vs_like"] = round(r["encode_us"] / rows[like]["encode_us"], 3)
            if f"{label}:pillow-same-tables" in rows:  # same tables, libjpeg converting BT.601
                r["encode_vs_same_tables"] = round(r["encode_us"] / rows[f"{label}:pillow-same-tables"]["encode_us"],
                                                   3)
            r["decode_vs_jpeg"] = round(r["decode_us"] / dbase, 3)
        out["sizes"][str(size)] = rows
        del encoded, imgs
    progress("done", 1.0)
    return out


def _images(dataset: str, size: int, n: int) -> list:
    if dataset == "synthetic":
        from hilbed.nodes.workload.synthetic import make_image
        return [make_image(i, "test", 0, size)[0] for i in range(n)]
    from hilbed.nodes.codecs.fitting import load_images, open_dataset
    x, _ = load_images(open_dataset(dataset, size, "test", n), n, 0)
    return list(x)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Defaults are reduced to fit a shared 2-core machine (a few minutes, < 2 GB): "
                                        "32 images x 5 rounds; tiny artifacts fitted once on --fit-images synthetic "
                                        "images with --fit-steps steps and cached in --cache; PNC at 32 px only "
                                        "(--pnc-fit-sizes).")
    ap.add_argument("--sizes", default="32,224", help="image sides (default 32,224)")
    ap.add_argument("--images", type=int, default=32, help="images per size (default 32)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (default 5)")
    ap.add_argument("--dataset", default="synthetic", help="synthetic | imagefolder:PATH | PATH | catalog name like "
                                                           "cifar10/dev (use the data the artifacts were fitted for)")
    ap.add_argument("--families", default="", help=f"comma list of {', '.join(FAMILIES)} (default all)")
    ap.add_argument("--grace", default="", help="grace artifact id (default: a tiny cached fit)")
    ap.add_argument("--autojpeg", default="", help="autojpeg artifact id (default: a tiny cached fit)")
    ap.add_argument("--adacompress", default="", help="adacompress artifact id (default: a tiny cached fit)")
    ap.add_argument("--pnc", default="", help="pnc artifact ids, comma separated (default: a tiny cached fit per size)")
    ap.add_argument("--pnc-fit-sizes", default="32", help="sizes to fit a tiny PNC for when --pnc is empty (default "
                    "32: a 224 px fit trains the teacher at 224 px, minutes and several GB; add 224 to include it)")
    ap.add_argument("--entropic", default="", help="entropic artifact ids (needs torch + compressai)")
    ap.add_argument("--crbq", default="", help="crbq artifact ids (needs torch)")
    ap.add_argument("--factorized", default="", help="factorized artifact ids (needs torch + compressai)")
    ap.add_argument("--cache", default=str(REPO / ".hilbed-cache" / "codec_speed"),
                    help="where the ids of the tiny fits are remembered (artifacts go to the hilbed artifact store)")
    ap.add_argument("--fit-images", type=int, default=64, help="images per tiny fit (default 64)")
    ap.add_argument("--fit-steps", type=int, default=20, help="optimisation steps per tiny fit (default 20; "
                                                            "AdaCompress: 10x)")
    ap.add_argument("--refit", action="store_true", help="fit the tiny artifacts again")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)
    progress = Progress(args.quiet)
    try:
        result = bench(args, progress)
    finally:
        progress.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
