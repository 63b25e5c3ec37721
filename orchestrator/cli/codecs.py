"""``hilbed fit FAMILY ...`` and ``hilbed eval-codecs ...``.

``fit`` discovers families through :data:`hilbed.nodes.codecs.LAZY_CODECS`: for a
codec module ``hilbed.nodes.codecs.X``, the module ``hilbed.nodes.codecs.fitting.X``
is a family when it defines ``fit_cli(parser)`` and ``fit_main(args, store)``
(see docs/codecs.md). The family's module is imported only when it is asked
for, so ``hilbed`` stays quick and torch-free for other commands.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from hilbed.orchestrator.cli.output import add_json_flag, add_output, emit, wants_json

COMMON_FIT = "common options: --dataset D --model M --size N --seed N --device D --store DIR --threads N --json"


def _console(args=None):
    """Human output; on stderr with ``--json``, which keeps stdout for the JSON document."""
    from rich.console import Console
    err = wants_json(args)
    # tables are wide; piped output (no terminal) would otherwise be cut at 80 columns
    return Console(highlight=False, stderr=err, width=None if (sys.stderr if err else sys.stdout).isatty() else 150)


def _quiet_stdout(args):
    """With ``--json``, whatever a codec or family prints goes to stderr, not into the JSON document."""
    return contextlib.redirect_stdout(sys.stderr) if wants_json(args) else contextlib.nullcontext()


def _add_common(p: argparse.ArgumentParser, fit: bool) -> None:
    p.add_argument("--dataset", default="synthetic",
                   help="synthetic | imagefolder:PATH | PATH (an ImageFolder directory); default synthetic")
    p.add_argument("--model", default="synthetic-cnn",
                   help="synthetic-cnn | cifar-resnet:PATH | PATH (a CIFAR ResNet checkpoint; depth inferred)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--store", default=None, help="artifact store directory (default: $HILBED_ARTIFACTS or the cache)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra- and inter-op threads, and OMP/MKL_NUM_THREADS for subprocesses (default "
                        "$HILBED_FIT_THREADS or 1: machines are shared)")
    add_json_flag(p, "print a JSON summary on stdout instead of tables (nothing else goes to stdout)")
    x = p.add_argument_group("executor (docs/scale.md)")
    x.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="local: in this process (default); ray: " + ("each fit preset" if fit else
                        "each (variant, image shard)") + " a Ray task (pip install 'hilbed[ray]')")
    x.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster to join, e.g. HEAD:6379 (default $RAY_ADDRESS, else a local Ray)")
    x.add_argument("--ray-cpus", type=float, default=1, metavar="N", help="CPUs each Ray task declares (default 1)")
    x.add_argument("--ray-gpus", type=float, default=0, metavar="N", help="GPUs each Ray task declares (default 0)")
    if not fit:
        x.add_argument("--shard-size", type=int, default=None, metavar="N",
                       help="images per Ray task (default 500, rounded up to a multiple of --batch); codecs that "
                            "learn from feedback are never sharded (they must see the images in order)")


def _executor_problem(a) -> str | None:
    """A one-line complaint about the executor options, or None."""
    if a.executor != "ray":
        given = [f for f, v in (("--ray-address", a.ray_address), ("--shard-size", getattr(a, "shard_size", None)))
                 if v is not None]
        if given:
            return f"{' and '.join(given)} need --executor ray"
    if a.ray_cpus < 0 or a.ray_gpus < 0:
        return "--ray-cpus and --ray-gpus must be >= 0"
    if getattr(a, "shard_size", None) is not None and a.shard_size < 1:
        return f"--shard-size must be >= 1 (got {a.shard_size})"
    return None


def _start_executor(a, prog: str):
    """The executor the options ask for, or None after printing a one-line error."""
    from hilbed.orchestrator.scale import ExecutorError, make_executor
    problem = _executor_problem(a)
    if problem:
        print(f"{prog}: {problem}", file=sys.stderr)
        return None
    try:
        return make_executor(a.executor, a.ray_address)
    except ExecutorError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


def _progress_cb(con, quiet: bool, interval: float = 30.0):
    """(message, fraction) callback: one rich progress bar, or off a terminal a plain stderr line every ``interval`` s.

    A fit run from a script or a scheduler otherwise looks hung for its many minutes.
    """
    if quiet:
        return None, None
    if not con.is_terminal:
        t0 = time.monotonic()
        last = [-interval]

        def plain(msg: str, frac: float) -> None:
            now = time.monotonic()
            if now - last[0] >= interval or frac >= 1.0:
                last[0] = now
                print(f"fit: [{100 * max(0.0, min(1.0, frac)):5.1f}%] {msg} ({now - t0:.0f} s)", file=sys.stderr,
                      flush=True)
        return None, plain
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    prog = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), console=con, transient=True)
    task = prog.add_task("starting", total=1.0)

    def cb(msg: str, frac: float) -> None:
        prog.update(task, description=msg[:90], completed=max(0.0, min(1.0, frac)))
    return prog, cb


# ------------------------------------------------------------------ fit ---

def cmd_fit(args) -> int:
    from hilbed.nodes.codecs.fitting import fit_families, fit_module
    fams = fit_families()
    if args.family not in fams:
        print(f"hilbed fit: unknown family {args.family!r} (allowed: {', '.join(sorted(fams))})", file=sys.stderr)
        return 2
    mod = fit_module(args.family)
    if mod is None:
        print(f"hilbed fit: codec {args.family!r} has nothing to fit (its module defines no fit_cli/fit_main)",
              file=sys.stderr)
        return 2
    inner = argparse.ArgumentParser(prog=f"hilbed fit {args.family}",
                                    description=getattr(mod, "FIT_HELP", None) or (mod.__doc__ or "").split("\n")[0])
    _add_common(inner, fit=True)
    mod.fit_cli(inner)
    fa = inner.parse_args(args.rest)
    if fa.store:
        os.environ["HILBED_ARTIFACTS"] = str(Path(fa.store).resolve())
    from hilbed.nodes.codecs.artifacts import ArtifactStore
    store = ArtifactStore()
    executor = None
    if fa.executor != "local" or _executor_problem(fa):
        executor = _start_executor(fa, f"hilbed fit {args.family}")
        if executor is None:
            return 2
    con = _console(fa)
    prog, cb = _progress_cb(con, fa.json)
    fa.progress = cb
    t0 = time.monotonic()

    def fit():
        if executor is None:
            return mod.fit_main(fa, store)
        from hilbed.orchestrator.scale.fit import run_fit
        with executor:  # each preset a task; its artifacts come back as bytes into this machine's store
            arts, fa.summary = run_fit(executor, args.family, fa, store, fa.ray_cpus, fa.ray_gpus,
                                       progress=(lambda d, t: cb(f"{d}/{t} fit task(s) done", d / t)) if cb else None)
        return arts
    try:
        with _quiet_stdout(fa):
            if prog:
                with prog:
                    out = fit()
            else:
                out = fit()
    except (ValueError, FileNotFoundError) as exc:
        print(f"hilbed fit {args.family}: {exc}", file=sys.stderr)
        return 2
    arts = out if isinstance(out, list) else [out]
    summary = getattr(fa, "summary", None)
    if wants_json(fa):
        emit(fa, {"family": args.family, "artifacts": [a.id for a in arts], "store": str(store.root),
                  "seconds": round(time.monotonic() - t0, 1), "summary": summary,
                  "facts": {a.id: {k: a.meta[k] for k in ("ratio", "C_bytes", "weights_gyuv", "weights", "pretrain")
                                   if k in a.meta} for a in arts}})
        return 0
    from rich.table import Table
    t = Table(title=f"hilbed fit {args.family}: {len(arts)} artifact(s) in {store.root}")
    t.add_column("artifact")
    t.add_column("facts")
    for a in arts:
        facts = {k: a.meta[k] for k in ("ratio", "C_bytes", "weights_gyuv", "weights", "pretrain") if k in a.meta}
        t.add_row(a.id, json.dumps(facts, default=str)[:160])
    con.print(t)
    if summary:
        con.print(json.dumps(summary, default=str)[:2000])
    con.print(f"fitted in {time.monotonic() - t0:.1f} s on {fa.dataset} for {fa.model}")
    for a in arts:  # last lines: the ids, for scripts
        print(a.id)
    return 0


# ---------------------------------------------------------- eval-codecs ---

class _PlainProgress:
    """Progress off a terminal: a plain line on stderr at most every ``interval`` seconds, and per variant."""

    def __init__(self, total: int, interval: float, stream=None):
        self.total, self.interval, self.stream = max(1, total), interval, stream or sys.stderr
        self.done, self.label = 0, ""
        self.t0 = self.last = time.monotonic()

    def _line(self, what: str) -> None:
        el = time.monotonic() - self.t0
        eta = f", ~{el * (self.total - self.done) / self.done:.0f} s left" if self.done else ""
        print(f"eval-codecs: {self.done}/{self.total} images ({100 * self.done / self.total:.0f} %), {what}, "
              f"{el:.0f} s{eta}", file=self.stream, flush=True)
        self.last = time.monotonic()

    def start(self, label: str) -> None:
        self.label = label

    def advance(self, k: int) -> None:
        self.done += k
        if time.monotonic() - self.last >= self.interval:
            self._line(self.label)

    def finished(self, label: str, note: str = "done") -> None:
        self._line(f"{label} {note}")


def cmd_eval(args) -> int:
    from hilbed.nodes.codecs.fitting import set_threads
    threads = set_threads(args.threads)  # before torch does any work
    from rich.markup import escape

    from hilbed.nodes.codecs import codec_class
    from hilbed.nodes.codecs.fitting import dataset_spec, load_images, load_target, model_fingerprint, open_dataset
    from hilbed.nodes.codecs.fitting import evaluate as E
    if args.store:
        os.environ["HILBED_ARTIFACTS"] = str(Path(args.store).resolve())
    if args.resume and not args.out:
        print("hilbed eval-codecs: --resume needs --out DIR (the directory of the run to resume)", file=sys.stderr)
        return 2
    problem = _executor_problem(args)
    if problem:
        print(f"hilbed eval-codecs: {problem}", file=sys.stderr)
        return 2
    con = _console(args)
    try:
        variants = E.parse_variants(args.codecs)
        ds = open_dataset(args.dataset, args.size, "test", args.n, args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"hilbed eval-codecs: {exc}", file=sys.stderr)
        return 2
    for v in variants:
        try:
            spec = codec_class(v.codec).params_spec
        except ValueError as exc:
            print(f"hilbed eval-codecs: {exc}", file=sys.stderr)
            return 2
        if "artifact" in spec and v.params.get("artifact") != "none" and not (v.params.get("artifact") or v.params.get("artifacts")):
            if args.fit_dataset:
                v.params.setdefault("fit_dataset", dataset_spec(args.fit_dataset))
                v.params.setdefault("fit_model", args.model)
            elif dataset_spec(args.dataset) != "synthetic" or args.model != "synthetic-cnn":
                print(f"hilbed eval-codecs: {v.label} names no artifact; run `hilbed fit {v.codec} --dataset ... "
                      f"--model ...` and pass artifact=ID, or give --fit-dataset to fit on first use", file=sys.stderr)
                return 2
    try:
        fingerprint = model_fingerprint(args.model)
    except (ValueError, FileNotFoundError, OSError):
        fingerprint = None
    mismatch: dict[str, str] = {}
    for v in variants:
        bad = E.fingerprint_mismatches(v, fingerprint)
        if bad:
            mismatch[v.label] = "; ".join(f"{b['artifact']} fitted for {b['fitted_for']}" for b in bad)
            print(f"hilbed eval-codecs: warning: {v.label}: {mismatch[v.label]}, not {fingerprint}", file=sys.stderr)
    out_dir = Path(args.out or Path("runs") / "codec-eval" / time.strftime("%Y%m%d-%H%M%S"))
    n_eval = min(args.n, len(ds)) if args.n is not None else len(ds)
    header = {"dataset": dataset_spec(args.dataset), "model": args.model, "n": n_eval, "size": args.size,
              "seed": args.seed, "batch": args.batch, "feedback_batch": args.feedback_batch}
    executor = None
    if args.executor != "local":  # before partial.jsonl exists: a cluster that is not there leaves nothing behind
        executor = _start_executor(args, "hilbed eval-codecs")
        if executor is None:
            return 2
    try:
        log = E.PartialLog.open(out_dir, header, args.resume)
    except (ValueError, FileExistsError) as exc:
        print(f"hilbed eval-codecs: {exc}", file=sys.stderr)
        if executor is not None:
            executor.close()
        return 2
    if log.done:
        print(f"hilbed eval-codecs: resuming: {len(log.done)} unit(s) already in {log.path}", file=sys.stderr)

    def tag(rows: list[dict], v) -> list[dict]:
        for r in rows:
            r["model_mismatch"] = mismatch.get(v.label, "")
        return rows

    tty = (sys.stderr if wants_json(args) else sys.stdout).isatty()
    plain = None if (tty or args.progress_interval < 0) else _PlainProgress(len(variants) * n_eval,
                                                                            args.progress_interval)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    with _quiet_stdout(args), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                       TimeElapsedColumn(), console=con, transient=not args.json,
                                       disable=args.json or not tty) as prog:
        t_load = prog.add_task("loading images and model", total=None)
        x, y = load_images(ds, args.n, args.seed, shuffle=args.n is not None and args.n < len(ds))
        model = load_target(args.model, args.device, args.size)
        prog.remove_task(t_load)
        total = prog.add_task("codecs", total=len(variants) * len(x))

        def advance(k: int) -> None:
            prog.advance(total, k)
            if plain:
                plain.advance(k)
        rows = []
        if executor is not None:
            from hilbed.orchestrator.scale.sweep import DEFAULT_SHARD, Settings, run_sweep
            prog.update(total, description=f"{len(variants)} variant(s) on {executor.name}")
            settings = Settings(args.model, args.device, args.size, args.batch, args.feedback_batch, args.seed,
                                threads, args.ray_cpus, args.ray_gpus)

            def failed(v, msg: str) -> None:
                con.print(f"[red]{escape(v.label)}: {escape(msg)}[/red]")

            def finished(v, note: str) -> None:
                if plain:
                    plain.finished(v.label, note)
            try:
                with executor:  # each (variant, shard) a task; rows come back in the variants' order
                    done = run_sweep(executor, variants, x, y, settings, shard_size=args.shard_size or DEFAULT_SHARD,
                                     log=log, prefixes=lambda v: args.prefixes and codec_class(v.codec).progressive,
                                     progress=advance, on_error=failed, on_unit=finished)
            except (ValueError, FileNotFoundError) as exc:
                print(f"hilbed eval-codecs: {exc}", file=sys.stderr)
                return 2
            for v, vrows in done:
                rows += tag(vrows, v)
        for v in (variants if executor is None else []):
            prog.update(total, description=escape(v.label[:60]))
            key = E.unit_key(v)
            pkey = E.unit_key(v, "prefixes")
            want_prefixes = args.prefixes and codec_class(v.codec).progressive
            done = log.get(key)
            if done is not None:
                rows += tag(done, v)
                advance(len(x))
                if plain:
                    plain.finished(v.label, "(from partial results)")
            else:
                if plain:
                    plain.start(v.label)
                try:
                    row = E.evaluate_variant(v, x, y, model, args.batch, args.feedback_batch, progress=advance,
                                             seed=args.seed)
                except Exception as exc:  # one broken variant must not lose the others
                    from hilbed.nodes.codecs import CodecParamsError
                    if not isinstance(exc, (CodecParamsError, FileNotFoundError, ValueError)):
                        raise
                    con.print(f"[red]{escape(v.label)}: {escape(str(exc))}[/red]")
                    continue
                rows += tag([row], v)
                log.add(key, [row])
                if plain:
                    plain.finished(v.label)
            if want_prefixes:
                done = log.get(pkey)
                if done is None:
                    done = E.evaluate_prefixes(v, x, y, model, args.batch)
                    log.add(pkey, done)
                rows += tag(done, v)
    meta = {"dataset": dataset_spec(args.dataset), "model": args.model, "model_fingerprint": fingerprint,
            "n": int(len(x)), "size": args.size, "seed": args.seed, "threads": threads,
            "clean_top1": float((model.predict(x).argmax(1) == y).mean()) if len(x) else None,
            "model_mismatch": mismatch}
    with _quiet_stdout(args):
        paths = E.write_outputs(rows, out_dir, f"{meta['dataset']} / {args.model} (n={meta['n']})", meta)
    paths["partial"] = log.path
    from hilbed.nodes.codecs.fitting.envelope import compare_to_envelope, describe
    env = compare_to_envelope(rows)  # bytes vs JPEG's best envelope at equal top-1, 70-82 % (docs/codecs.md)
    env_mono = compare_to_envelope(rows, hull="monotone")
    if env:
        (out_dir / "vs_jpeg_envelope.json").write_text(json.dumps({"convex": env, "monotone": env_mono}, indent=2))
        paths["envelope"] = out_dir / "vs_jpeg_envelope.json"
    if wants_json(args):
        emit(args, {"meta": meta, "rows": rows, "vs_jpeg": E.compare_to_reference(rows),
                    "vs_jpeg_envelope": {"convex": env, "monotone": env_mono},
                    "files": {k: str(v) for k, v in paths.items()}})
        return 0
    from rich.table import Table
    t = Table(title=f"rate-accuracy on {escape(meta['dataset'])} with {escape(args.model)} (n={meta['n']}, "
                    f"uncompressed top-1 {100 * (meta['clean_top1'] or 0):.1f} %)")
    t.add_column("variant", overflow="fold", min_width=20)
    for col in ("bytes sent", "payload", "headers", "w/ full headers", "top-1 %", "top-5 %", "encode ms"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(escape(r["label"]) + (" (!)" if r.get("model_mismatch") else ""), f"{r['bytes_sent']:.1f}",
                  f"{r['bytes_payload']:.1f}", f"{r['bytes_header']:.1f}",
                  f"{r['bytes_full_headers']:.1f}", f"{100 * r['top1']:.2f}", f"{100 * r['top5']:.2f}",
                  f"{r['encode_ms']:.3f}")
    con.print(t)
    if mismatch:
        con.print("(!) artifact fitted for another model than the one evaluated (see the warning above)")
    cmp = E.compare_to_reference(rows)
    if cmp and any(r["codec"] == "jpeg" for r in rows):
        for fam, c in cmp.items():
            if c["point_ratio"] is not None:
                con.print(escape(f"{fam}: matches a jpeg point's top-1 at {c['point_ratio']:.3f}x its payload bytes "
                                 f"({c['point'][0]} vs {c['point'][1]})"
                                 + (f"; vs jpeg's Pareto front {c['front_ratio']:.3f}x" if c["front_ratio"] else "")))
            else:
                con.print(escape(f"{fam}: no point reaches a jpeg point's top-1"))
    for name, c in env.items():
        con.print(escape(describe(name, c, env_mono.get(name))))
    con.print(escape(f"results: {', '.join(str(p) for p in paths.values())}"))
    return 0


def register(sub) -> None:
    from hilbed.nodes.codecs.fitting import fit_families
    fams = sorted(fit_families())
    f = sub.add_parser("fit", help="fit a codec's artifacts (tables, weights, agents) for a dataset and model",
                       description="Fit codec artifacts into the content-hashed artifact store and print their ids. "
                                   f"Families: {', '.join(fams)}. `hilbed fit FAMILY --help` lists a family's "
                                   f"options; {COMMON_FIT}.")
    f.add_argument("family", help=f"codec family ({', '.join(fams)})")
    f.add_argument("rest", nargs=argparse.REMAINDER, help="the family's options")
    f.set_defaults(fn=cmd_fit)

    e = sub.add_parser("eval-codecs", help="offline rate-accuracy table and plot for codec variants",
                       description="Encode -> decode -> infer every image with every variant (no network) and report "
                                   "bytes per image (as sent, payload without headers, with full headers), top-1 and "
                                   "top-5. Variants: NAME[:key=values...][@LABEL], values a,b,c or lo..hi/step, e.g. "
                                   "jpeg:quality=10..95/5 grace:artifact=grace-...:budget=0.1,0.3")
    _add_common(e, fit=False)
    e.add_argument("--codecs", nargs="+", required=True, help="variant specs (see above)")
    e.add_argument("--n", type=int, default=None, help="images (default: all; synthetic: 1000)")
    e.add_argument("--batch", type=int, default=64)
    e.add_argument("--feedback-batch", type=int, default=16, help="replies in flight for learning codecs")
    e.add_argument("--fit-dataset", default=None, help="fit variants without an artifact on first use on this "
                                                       "dataset (against --model)")
    e.add_argument("--prefixes", action="store_true",
                   help="progressive codecs (pnc, jpeg-progressive): also one row per number of chunks received "
                        "(LABEL@k: PNC blocks, JPEG scans), i.e. accuracy against what a deadline lets through")
    e.add_argument("--resume", action="store_true",
                   help="keep the units (variant rows, prefix rows) already in DIR/partial.jsonl and evaluate only "
                        "the rest (needs --out DIR and the same dataset, model, n, size, seed, batches)")
    e.add_argument("--progress-interval", type=float, default=30.0, metavar="S",
                   help="off a terminal: a plain progress line on stderr at most every S seconds and after each "
                        "variant (default 30; negative: none)")
    add_output(e, "output directory (default runs/codec-eval/<time>); rows are appended to DIR/partial.jsonl as "
                  "each variant completes", metavar="DIR", dest="out", aliases=("--out",))
    e.set_defaults(fn=_eval_defaults)


def _eval_defaults(args) -> int:
    if args.n is None and args.dataset == "synthetic":
        args.n = 1000
    return cmd_eval(args)
