"""``hilbed eval-codecs`` as tasks: one per (variant, shard of the images), merged into the local run's rows.

Why shards: a sweep's cost is variants x images, and a few variants over
thousands of images would otherwise keep most workers idle. A codec that
learns from feedback (``Codec.learns_from_feedback``: AdaCompress, AutoJPEG's
rate estimate) must see every image in order, its state carried from one to
the next, so such a variant is ONE task over all images, never sharded.

Exactness: a shard starts at a multiple of ``batch`` (the shard size is
rounded up to one), so the model sees the same mini-batches as in one pass,
and shards return per-image measurements that are concatenated before
averaging (:func:`hilbed.nodes.codecs.fitting.evaluate.concat_measures`): the
merged row equals a local run's, timings aside.

Data placement: the controller loads the images once and hands them to the
executor (Ray's object store ships them to each worker machine once); the
artifacts a variant names travel with its tasks (:mod:`.transfer`). The
target model is loaded on each worker from the same spec, so a checkpoint
path or catalog name must resolve there (docs/scale.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from hilbed.orchestrator.scale.executor import Executor, Task

DEFAULT_SHARD = 500
_MODELS: dict[tuple, Any] = {}  # per worker process: the target model, loaded once for all its tasks
_THREADS: dict[str, int] = {}


@dataclass(frozen=True)
class Settings:
    """What every task of one sweep shares (the model is loaded from ``model`` on the worker)."""

    model: str
    device: str = "cpu"
    size: int = 32
    batch: int = 64
    feedback_batch: int = 16
    seed: int = 0
    threads: int = 1
    num_cpus: float = 1
    num_gpus: float = 0


def shard_bounds(n: int, shard_size: int, batch: int) -> list[tuple[int, int]]:
    """``[(lo, hi), ...]`` covering ``range(n)``, each ``lo`` a multiple of ``batch`` (same mini-batches)."""
    step = max(1, batch) * max(1, math.ceil(max(1, shard_size) / max(1, batch)))
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)] or [(0, 0)]


def _load_model(s: Settings):
    key = (s.model, s.device, s.size)
    if key not in _MODELS:
        from hilbed.nodes.codecs.fitting import load_target
        _MODELS[key] = load_target(s.model, s.device, s.size)
    return _MODELS[key]


def eval_task(kind: str, variant: tuple, lo: int, hi: int, s: Settings, x, y, artifacts: dict | None) -> dict:
    """Runs on a worker: one variant on ``x[lo:hi]`` (``kind`` "variant") or its prefix rows ("prefixes").

    Expected failures of a variant (bad params, missing artifact) come back as
    ``{"error": ...}`` so the other variants go on, as in a local run.
    """
    from hilbed.nodes.codecs import CodecParamsError
    from hilbed.nodes.codecs.fitting import evaluate as E
    from hilbed.nodes.codecs.fitting import set_threads
    if _THREADS.get("n") != s.threads:
        _THREADS["n"] = set_threads(s.threads)
    if artifacts:
        from hilbed.nodes.codecs.artifacts import ArtifactStore
        from hilbed.orchestrator.scale.transfer import unpack
        unpack(ArtifactStore(), artifacts)
    v = E.Variant(*variant)
    model = _load_model(s)
    if kind == "prefixes":
        return {"rows": E.evaluate_prefixes(v, x, y, model, s.batch)}
    try:
        return {"measures": E.measure_variant(v, x[lo:hi], y[lo:hi], model, s.batch, s.feedback_batch,
                                              seed=s.seed)}
    except (CodecParamsError, FileNotFoundError, ValueError) as exc:
        return {"error": str(exc)}


def _ship(variant, store) -> dict | None:
    """The artifacts ``variant`` names that this machine's store holds, packed for the workers."""
    from hilbed.nodes.codecs.fitting.evaluate import artifact_ids
    from hilbed.orchestrator.scale.transfer import pack
    ids = [a for a in artifact_ids(variant.params) if (store.root / a / "meta.json").exists()]
    return pack(store, ids) if ids else None


def run_sweep(executor: Executor, variants: list, x, y, s: Settings, *, shard_size: int = DEFAULT_SHARD,
              log=None, prefixes: Callable[[Any], bool] = lambda v: False,
              learns: Callable[[Any], bool] | None = None, progress: Callable[[int], None] | None = None,
              on_error: Callable[[Any, str], None] | None = None,
              on_unit: Callable[[Any, str], None] | None = None) -> list[tuple[Any, list[dict]]]:
    """Evaluate ``variants`` on images ``x``/labels ``y``; ``[(variant, rows), ...]`` in variant order.

    ``log`` (a PartialLog): units already in it are not run again, and each
    unit is added as soon as it is complete (a sharded variant: when its last
    shard arrives). ``prefixes(v)``: also the prefix rows of ``v``.
    ``learns(v)``: whether ``v`` learns from feedback (default: its codec
    class says so). ``progress(k)``: k more images done. ``on_error(v, msg)``:
    a variant that failed (it gets no rows). ``on_unit(v, note)``: a variant
    finished (``note`` "done" or "(from partial results)").
    """
    from hilbed.nodes.codecs.artifacts import ArtifactStore
    from hilbed.nodes.codecs.fitting import evaluate as E
    if learns is None:
        from hilbed.nodes.codecs import codec_class

        def learns(v) -> bool:
            return bool(getattr(codec_class(v.codec), "learns_from_feedback", False))
    n = len(x)
    store = ArtifactStore()
    xr, yr = executor.put(x), executor.put(y)
    results: dict[int, dict] = {}  # variant index -> {"row": ..., "prefix": ..., "error": ...}
    parts: dict[int, dict[int, dict]] = {}
    expect: dict[int, int] = {}
    tasks: list[Task] = []
    for i, v in enumerate(variants):
        key, pkey = E.unit_key(v), E.unit_key(v, "prefixes")
        res = results.setdefault(i, {})
        done = log.get(key) if log is not None else None
        if done is not None:
            res["rows"] = done
            if progress:
                progress(n)
            if on_unit:
                on_unit(v, "(from partial results)")
        if prefixes(v):
            pdone = log.get(pkey) if log is not None else None
            if pdone is not None:
                res["prefix"] = pdone
        need_rows, need_prefix = "rows" not in res, prefixes(v) and "prefix" not in res
        if not (need_rows or need_prefix):
            continue
        arts = _ship(v, store)
        arts = executor.put(arts) if arts else None
        spec = (v.codec, v.params, v.label)
        res_cpus = dict(num_cpus=s.num_cpus, num_gpus=s.num_gpus)
        if need_rows:
            bounds = [(0, n)] if learns(v) else shard_bounds(n, shard_size, s.batch)
            expect[i] = len(bounds)
            for j, (lo, hi) in enumerate(bounds):
                tasks.append(Task(("variant", i, j, hi - lo), eval_task,
                                  ("variant", spec, lo, hi, s, xr, yr, arts), **res_cpus))
        if need_prefix:
            tasks.append(Task(("prefixes", i, 0, 0), eval_task, ("prefixes", spec, 0, n, s, xr, yr, arts),
                              **res_cpus))

    def settle(i: int) -> None:
        """Record variant ``i`` once its row (or error) and, if wanted, its prefix rows are all in."""
        res, v = results[i], variants[i]
        if "rows" not in res and "error" not in res:
            return
        if prefixes(v) and "prefix" not in res and "error" not in res:
            return
        if res.get("settled"):
            return
        res["settled"] = True
        if log is not None and "error" not in res:
            if log.get(E.unit_key(v)) is None:
                log.add(E.unit_key(v), res["rows"])
            if prefixes(v) and log.get(E.unit_key(v, "prefixes")) is None:
                log.add(E.unit_key(v, "prefixes"), res["prefix"])

    for (kind, i, j, count), out in executor.run(tasks):
        res, v = results[i], variants[i]
        if kind == "prefixes":
            res["prefix"] = out["rows"]
        elif "error" in out:
            if "error" not in res:
                res["error"] = out["error"]
                if on_error:
                    on_error(v, out["error"])
            if progress:
                progress(count)
        else:
            parts.setdefault(i, {})[j] = out["measures"]
            if progress:
                progress(count)
            if len(parts[i]) == expect[i] and "error" not in res:
                m = E.concat_measures([parts[i][k] for k in sorted(parts[i])])
                res["rows"] = [E.variant_row(v, m)]
                parts.pop(i)
                if on_unit:
                    on_unit(v, "done")
        settle(i)
    for i in results:
        settle(i)
    out_rows = []
    for i, v in enumerate(variants):
        res = results[i]
        if "error" in res:
            continue
        out_rows.append((v, list(res["rows"]) + (list(res["prefix"]) if prefixes(v) else [])))
    return out_rows
