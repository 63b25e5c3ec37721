"""``hilbed fit`` as tasks: one per preset of a family, each fitted in a scratch store and shipped back.

A family's "presets" here are the values of the option that makes it fit
several independent artifacts (AutoJPEG's ``--ratios``: one artifact per
constraint, each fitted on its own with the same seed); every other family
is one task. The worker fits into a temporary store, packs what appeared
there (:mod:`.transfer`) and returns it; the controller verifies each file's
digest and the content id, and installs the artifacts into its own store.
This works whether or not the workers share a disk with the controller.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

from hilbed.orchestrator.scale.executor import Executor, Task

# family -> the comma-list option whose values are fitted independently (one task each)
SPLIT_OPTION = {"autojpeg": "ratios"}


def split_args(family: str, args: argparse.Namespace) -> list[argparse.Namespace]:
    """One Namespace per task: the split option's values one by one, else ``args`` itself."""
    opt = SPLIT_OPTION.get(family)
    values = [v for v in str(getattr(args, opt, "") or "").split(",") if v.strip()] if opt else []
    if len(values) <= 1:
        return [args]
    return [argparse.Namespace(**{**vars(args), opt: v.strip()}) for v in values]


def fit_task(family: str, args: argparse.Namespace) -> dict:
    """Runs on a worker: ``fit_main`` into a scratch store; the artifacts' ids, summary and packed files."""
    from hilbed.nodes.codecs.artifacts import ArtifactStore
    from hilbed.nodes.codecs.fitting import fit_module
    from hilbed.orchestrator.scale.transfer import pack
    mod = fit_module(family)
    if mod is None:
        raise ValueError(f"family {family!r} cannot be fitted on this worker (its fitting module is missing)")
    old = os.environ.get("HILBED_ARTIFACTS")
    with tempfile.TemporaryDirectory(prefix="hilbed-fit-") as tmp:
        os.environ["HILBED_ARTIFACTS"] = tmp  # anything that opens the default store writes here too
        try:
            store = ArtifactStore(tmp)
            out = mod.fit_main(args, store)
            arts = out if isinstance(out, list) else [out]
            return {"ids": [a.id for a in arts], "summary": getattr(args, "summary", None), "packed": pack(store)}
        finally:
            if old is None:
                os.environ.pop("HILBED_ARTIFACTS", None)
            else:
                os.environ["HILBED_ARTIFACTS"] = old


def merge_summaries(parts: list[Any]) -> Any:
    """Summaries of split tasks -> one: lists concatenated and dicts merged key by key, else a list."""
    parts = [p for p in parts if p is not None]
    if len(parts) <= 1:
        return parts[0] if parts else None
    if all(isinstance(p, dict) for p in parts):
        keys = list(dict.fromkeys(k for p in parts for k in p))
        return {k: merge_summaries([p[k] for p in parts if k in p]) for k in keys}
    if all(isinstance(p, list) for p in parts):
        return [x for p in parts for x in p]
    return parts if any(p != parts[0] for p in parts) else parts[0]


def run_fit(executor: Executor, family: str, args: argparse.Namespace, store, num_cpus: float = 1,
            num_gpus: float = 0, progress=None) -> tuple[list, Any]:
    """Fit ``family`` with ``args`` on ``executor``; the artifacts (now in ``store``) in task order, and the summary.

    ``progress(done, total)`` after each task.
    """
    from hilbed.orchestrator.scale.transfer import unpack
    clean = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("progress", "summary")})
    clean.progress = None  # a callback cannot travel; workers report nothing until they finish
    subs = split_args(family, clean)
    tasks = [Task(k, fit_task, (family, a), num_cpus=num_cpus, num_gpus=num_gpus) for k, a in enumerate(subs)]
    results: dict[int, dict] = {}
    for k, out in executor.run(tasks):
        unpack(store, out["packed"])
        results[k] = out
        if progress:
            progress(len(results), len(tasks))
    ids = [aid for k in sorted(results) for aid in results[k]["ids"]]
    arts = [store.get(aid) for aid in dict.fromkeys(ids)]
    return arts, merge_summaries([results[k]["summary"] for k in sorted(results)])
