"""Content hashes of the files a run's measurements depend on.

A run's trial ids come from the scenario text, not from the files it names,
so rewriting a trace (or a dataset, a checkpoint, a fitted codec artifact)
between a kill and ``hilbed resume`` would silently mix two experiments under
one set of ids. The run records :func:`collect_inputs` in its manifest and
resume compares a fresh collection with :func:`verify_inputs`, which names
the file that differs.

Torch-free and cheap: files are streamed through sha256 once per call; the
dataset listing is bounded (:data:`DATASET_MAX_FILES`, :data:`DATASET_MAX_BYTES`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

INPUTS_VERSION = 1
#: the agents' working directory (``orchestrator/lab/transport.py``): relative
#: dataset / model paths in a scenario are read from here on local testbeds
REPO_ROOT = Path(__file__).resolve().parents[2]
#: above these the dataset's contents are not hashed (names, sizes and mtimes are)
DATASET_MAX_FILES = 50_000
DATASET_MAX_BYTES = 512 * 1024 * 1024
#: per-file entries kept in the manifest so a change can be named; above, only the digest
LISTING_MAX_ENTRIES = 5_000
_CHUNK = 1 << 20
_ARTIFACT_ID = re.compile(r"[a-z0-9_.+-]+-[0-9a-f]{12}")
_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}  # = workload.imagefolder.EXTS


# ------------------------------------------------------------------ hashing ---

def file_sha256(path: str | Path) -> tuple[str, int]:
    """(hex sha256, size) of a file, read in chunks so large checkpoints stay cheap on memory."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n


def _file_entry(path: Path, role: str, cache: dict[Path, tuple[str, int]]) -> dict:
    """``{path, sha256, bytes, role}``; ``sha256`` None plus ``reason`` when it cannot be read."""
    path = path.resolve()
    entry: dict[str, Any] = {"path": str(path), "role": role}
    try:
        if path not in cache:
            cache[path] = file_sha256(path)
        entry["sha256"], entry["bytes"] = cache[path]
    except OSError as exc:
        entry["sha256"], entry["bytes"] = None, None
        entry["reason"] = f"cannot read: {exc.strerror or exc}"
    return entry


def artifact_entry(aid: str, root: str | Path | None = None, role: str | None = None) -> dict:
    """Hash of a codec artifact directory ``<root>/<aid>`` (meta.json included).

    Same formula as provisioning's ``artifact_asset``, so the hash equals the
    asset hash pushed to SSH nodes. The runner can call this for artifact ids
    a codec resolved itself (auto-fitted ones, see ``Encoded.meta['artifact']``).
    """
    if root is None:
        from hilbed.nodes.codecs.artifacts import default_root
        root = default_root()
    d = Path(root) / aid
    entry: dict[str, Any] = {"path": str(d), "role": role or f"codec artifact {aid}", "id": aid}
    if not (d / "meta.json").is_file():
        entry.update(sha256=None, bytes=None, reason=f"artifact {aid} is not in the local store {root}")
        return entry
    h = hashlib.sha256()
    total = 0
    files = 0
    for p in sorted(d.rglob("*")):
        if p.is_file():
            sha, n = file_sha256(p)
            h.update(str(p.relative_to(d)).encode() + b"\0" + bytes.fromhex(sha))
            total += n
            files += 1
    entry.update(sha256=h.hexdigest(), bytes=total, files=files)
    return entry


# ---------------------------------------------------------------- pieces ---

def _resolve(p: str, base: Path) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def _remote_nodes(testbed: Any, role: str) -> list[str]:
    """Nodes of ``role`` that read their files on another machine (their copies are not hashed here)."""
    if testbed is None:
        return []
    return [n for n in testbed.nodes_with(role) if testbed.nodes[n].transport.kind != "local"]


def _dataset(spec: str, seed: int, size: int, base: Path, remote: list[str]) -> dict:
    if spec == "synthetic":
        from hilbed.nodes.workload.synthetic import GENERATOR_VERSION
        return {"spec": spec, "kind": "synthetic", "generator": "hilbed.nodes.workload.synthetic.make_image",
                "generator_version": GENERATOR_VERSION, "seed": seed, "image_size": size,
                "note": "generated from (seed, index); no files"}
    if remote:  # the path is the node's, relative to its own working directory
        return {"spec": spec, "kind": "imagefolder", "path": spec.split(":", 1)[1], "sha256": None,
                "reason": f"read on {', '.join(remote)} over ssh; not hashed by the controller"}
    if not spec.startswith("imagefolder:"):  # a catalog name: hash the files it resolves to here
        from hilbed.nodes.workload.catalog import CatalogError, dataset_path
        try:
            found = dataset_path(spec)
        except CatalogError as exc:
            return {"spec": spec, "kind": "catalog", "sha256": None, "reason": str(exc)}
        if found.is_file():
            e = _file_entry(found, "dataset", {})
            return {"spec": spec, "kind": "catalog", "path": str(found),
                    **{k: e[k] for k in ("sha256", "bytes", "reason") if k in e}}
        return {**_dataset(f"imagefolder:{found}", seed, size, base, remote), "spec": spec, "kind": "catalog"}
    root = _resolve(spec.split(":", 1)[1], base).resolve()
    out: dict[str, Any] = {"spec": spec, "kind": "imagefolder", "path": str(root)}
    if not root.is_dir():
        out.update(sha256=None, reason=f"{root} is not a directory")
        return out
    # exactly what ImageFolder reads: class dirs (sorted) and their image files (sorted, not recursive)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    items: list[tuple[str, os.stat_result, Path]] = []
    for c in classes:
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in _IMAGE_EXTS:
                items.append((f"{c}/{f.name}", f.stat(), f))
    total = sum(st.st_size for _, st, _ in items)
    hash_contents = len(items) <= DATASET_MAX_FILES and total <= DATASET_MAX_BYTES
    h = hashlib.sha256(json.dumps(classes).encode() + b"\0")
    listing: dict[str, str] = {}
    for rel, st, f in items:
        if hash_contents:
            with open(f, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()  # small images: one read each
            h.update(rel.encode() + b"\0" + str(st.st_size).encode() + b"\0" + bytes.fromhex(digest))
            listing[rel] = f"{st.st_size}:{digest[:16]}"
        else:
            h.update(rel.encode() + b"\0" + str(st.st_size).encode() + b"\0" + str(st.st_mtime_ns).encode())
            listing[rel] = f"{st.st_size}:mtime{st.st_mtime_ns}"
    out.update(classes=classes, count=len(items), bytes=total, sha256=h.hexdigest(),
               contents_hashed=hash_contents)
    if not hash_contents:
        out["note"] = (f"{len(items)} files, {total} bytes: over the bound ({DATASET_MAX_FILES} files, "
                       f"{DATASET_MAX_BYTES} bytes); names, sizes and mtimes hashed, not contents")
    if len(listing) <= LISTING_MAX_ENTRIES:
        out["listing"] = listing  # "size:sha256[:16]" per file, to name what changed
    else:
        out["listing_omitted"] = f"{len(listing)} files > {LISTING_MAX_ENTRIES}: only the digest is kept"
    return out


def _synthetic_cnn_key(size: int) -> str:
    """``TrainConfig(size=size).key()`` of ``nodes/workload/models.py`` without importing torch.

    Mirrors its fields and defaults; tests/orchestrator/run/test_inputs.py
    checks it against the real one so the two cannot drift apart unnoticed.
    """
    from hilbed.nodes.workload.synthetic import GENERATOR_VERSION
    cfg = {"size": size, "seed": 0, "n_train": 6000, "n_val": 1000, "epochs": 8, "batch": 128, "lr": 3e-3,
           "width": 32}
    blob = json.dumps({**cfg, "gen": GENERATOR_VERSION, "arch": "SmallCNN-v1"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _weights_file(spec: str, base: Path) -> Path | None:
    """The weights file a model spec loads, where it names one (cifar-resnet NAME or PATH, torchscript:,
    onnx:, torchvision:NAME@FILE); None for models made or found elsewhere."""
    prefix, _, arg = spec.partition(":")
    if prefix == "cifar-resnet":
        from hilbed.nodes.workload.catalog import CATALOG, weights_path
        return weights_path(arg) if arg in CATALOG else _resolve(arg, base)
    if prefix in ("torchscript", "onnx"):
        return _resolve(arg, base)
    if prefix == "torchvision" and "@" in arg:
        return _resolve(arg.split("@", 1)[1], base)
    return None


def _model(spec: str, size: int, base: Path, remote: list[str], cache: dict) -> dict:
    if spec != "synthetic-cnn":
        try:
            path = _weights_file(spec, base)
        except Exception as exc:  # a catalog name not fetched: nothing to hash yet
            return {"spec": spec, "kind": spec.split(":", 1)[0], "sha256": None, "reason": str(exc)}
        if path is None:
            return {"spec": spec, "kind": spec.split(":", 1)[0], "sha256": None,
                    "reason": "the model is built by code or found by the edge; its facts hold its checksum"}
        out = {"spec": spec, "kind": spec.split(":", 1)[0], "path": str(path.resolve())}
        if remote:
            out.update(path=spec.split(":", 1)[1], sha256=None, bytes=None,
                       reason=f"loaded on {', '.join(remote)} over ssh; not hashed by the controller")
            return out
        e = _file_entry(path, "model weights", cache)
        out.update({k: e[k] for k in ("sha256", "bytes", "reason") if k in e})
        return out
    from hilbed.nodes.paths import cache_dir
    key = _synthetic_cnn_key(size)
    path = cache_dir() / "models" / f"synthetic-cnn-{key}.pt"
    out = {"spec": spec, "kind": "synthetic-cnn", "key": key, "path": str(path),
           "note": "trained on first use by the edge and cached; the key covers the training settings"}
    if remote:
        out.update(sha256=None, bytes=None,
                   reason=f"trained/cached on {', '.join(remote)}; not hashed by the controller")
    elif path.is_file():
        e = _file_entry(path, "model weights (cache)", cache)
        out.update({k: e[k] for k in ("sha256", "bytes", "reason") if k in e})
    else:
        out.update(sha256=None, bytes=None, reason="not trained yet (the edge trains it on first use)")
    return out


def _codec_inputs(codec: Any, art_root: Path, base: Path, cache: dict,
                  files: dict[str, dict], notes: dict[str, dict]) -> None:
    label = codec.display
    params = codec.params or {}
    ids: list[str] = []
    for key, v in params.items():
        vals = v if isinstance(v, (list, tuple)) else [v]
        for s in vals:
            if isinstance(s, str) and s and (key in ("artifact", "artifacts") or _ARTIFACT_ID.fullmatch(s)):
                if s not in ids:
                    ids.append(s)
    for aid in ids:
        files[f"artifact:{label}:{aid}"] = artifact_entry(aid, art_root, f"artifact {aid} of codec {label}")
    if "artifact" in params and not ids:
        fit = {k: v for k, v in params.items() if k.startswith("fit_")}
        notes[label] = {
            "codec": codec.codec, "auto_artifact": True, "fit": fit, "sha256": None,
            "reason": "artifact fitted on first use; its id comes from the codec's own settings key, so it is "
                      "not hashed here (record the ids the codec reports with artifact_entry())"}
        fm = params.get("fit_model")
        if isinstance(fm, str) and fm != "synthetic-cnn":
            p = _resolve(fm.split(":", 1)[1] if fm.startswith("cifar-resnet:") else fm, base)
            # the auto artifact's key includes this checkpoint's hash: a new file means a new fit
            files[f"fit_model:{label}"] = _file_entry(p, f"fit_model of codec {label}", cache)


# --------------------------------------------------------------- public ---

def collect_inputs(scenario: Any, testbed: Any = None, scenario_path: str | Path | None = None, *,
                   workdir: str | Path | None = None, artifact_root: str | Path | None = None) -> dict:
    """Content hashes of every input file a run of ``scenario`` on ``testbed`` depends on.

    Traces resolve against the scenario file's folder (``load_scenario`` has
    already made them absolute); dataset and model paths against ``workdir``,
    default the agents' working directory (the repository root). Returns a
    JSON-able dict::

        {"version": 1,
         "files":   {"trace:<cond>" | "downlink_trace:<cond>" | "artifact:<label>:<id>" | "fit_model:<label>":
                         {"path", "sha256", "bytes", "role"[, "reason" when sha256 is None]}},
         "dataset": {"spec", "kind", "sha256", "count", "bytes", "listing": {rel: "size:sha16"}, ...}
                    | {"spec": "synthetic", "generator", "generator_version", "seed", "image_size"},
         "model":   {"spec", "kind", "path", "sha256" | None, "bytes", "reason"?},
         "codecs":  {label: {"auto_artifact": True, "fit": {...}, "sha256": None, "reason"}},
         "elapsed_ms": float}
    """
    t0 = time.perf_counter()
    sbase = Path(scenario_path).resolve().parent if scenario_path else Path.cwd()
    base = Path(workdir) if workdir else REPO_ROOT
    if artifact_root is None:
        from hilbed.nodes.codecs.artifacts import default_root
        artifact_root = default_root()
    cache: dict[Path, tuple[str, int]] = {}
    files: dict[str, dict] = {}
    for cond in scenario.conditions:
        for attr, what in (("trace", "uplink trace"), ("downlink_trace", "downlink trace")):
            rel = getattr(cond.link, attr, None)
            if rel:
                files[f"{attr}:{cond.name}"] = _file_entry(_resolve(rel, sbase), f"{what} of condition {cond.name}",
                                                           cache)
    notes: dict[str, dict] = {}
    for codec in scenario.codecs:
        _codec_inputs(codec, Path(artifact_root), base, cache, files, notes)
    w = scenario.workload
    out = {
        "version": INPUTS_VERSION,
        "files": files,
        "dataset": _dataset(w.dataset, w.seed, w.image_size, base, _remote_nodes(testbed, "client")),
        "model": _model(w.model, w.image_size, base, _remote_nodes(testbed, "edge"), cache),
        "codecs": notes,
    }
    out["elapsed_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    return out


def _short(h: str | None) -> str:
    return f"{h[:12]}…" if h else "none"


def _size_change(old: dict, new: dict) -> str:
    a, b = old.get("bytes"), new.get("bytes")
    return f", {a} -> {b} bytes" if a is not None and b is not None and a != b else ""


def _file_problem(what: str, old: dict, new: dict) -> str | None:
    """One line if a recorded hash no longer holds; None when equal or nothing was recorded to compare."""
    o, n = old.get("sha256"), new.get("sha256")
    if o is None or o == n:
        return None
    path = new.get("path") or old.get("path")
    moved = f" (recorded at {old['path']})" if old.get("path") and old.get("path") != path else ""
    if n is None:
        return f"{what} {path}{moved}: recorded sha256 {_short(o)}, now unavailable ({new.get('reason', 'missing')})"
    return f"{what} {path}{moved} changed: sha256 {_short(o)} -> {_short(n)}{_size_change(old, new)}"


def _names(xs: list[str], k: int = 3) -> str:
    return ", ".join(xs[:k]) + (f" and {len(xs) - k} more" if len(xs) > k else "")


def _dataset_problem(old: dict, new: dict) -> str | None:
    if old.get("spec") != new.get("spec"):
        return f"dataset changed: {old.get('spec')} -> {new.get('spec')}"
    if old.get("kind") == "synthetic":
        keys = ("generator", "generator_version", "seed", "image_size")
        diff = [f"{k} {old.get(k)} -> {new.get(k)}" for k in keys if old.get(k) != new.get(k)]
        return f"synthetic dataset changed: {', '.join(diff)}" if diff else None
    o, n = old.get("sha256"), new.get("sha256")
    if o is None or o == n:
        return None
    path = new.get("path") or old.get("path")
    if n is None:
        return f"dataset {path}: recorded sha256 {_short(o)}, now unavailable ({new.get('reason', 'missing')})"
    detail = []
    ol, nl = old.get("listing"), new.get("listing")
    if isinstance(ol, dict) and isinstance(nl, dict):
        changed = [k for k in ol if k in nl and ol[k] != nl[k]]
        added = [k for k in nl if k not in ol]
        removed = [k for k in ol if k not in nl]
        for label, xs in (("changed", changed), ("added", added), ("removed", removed)):
            if xs:
                detail.append(f"{len(xs)} {label} ({_names(xs)})")
    if old.get("classes") != new.get("classes"):
        detail.append(f"classes {old.get('classes')} -> {new.get('classes')}")
    if not detail:
        detail.append(f"{old.get('count')} -> {new.get('count')} files")
    return f"dataset {path} changed: {'; '.join(detail)}; sha256 {_short(o)} -> {_short(n)}"


def verify_inputs(recorded: dict, current: dict) -> list[str]:
    """One line per input whose content differs from what the run recorded; empty when all match.

    Entries recorded without a hash (not yet trained, read on an SSH node)
    have no baseline and are skipped; inputs used now but not recorded
    (an older hilbed) are skipped too. A recorded input that is gone, or
    unreadable now, is a problem.
    """
    problems: list[str] = []
    rf, cf = recorded.get("files") or {}, current.get("files") or {}
    for key, old in rf.items():
        what = old.get("role") or key
        new = cf.get(key)
        if new is None:
            if old.get("sha256") is not None:
                problems.append(f"{what} {old.get('path')}: recorded (sha256 {_short(old.get('sha256'))}) "
                                f"but the scenario no longer uses it")
            continue
        p = _file_problem(what, old, new)
        if p:
            problems.append(p)
    if "dataset" in recorded and "dataset" in current:
        p = _dataset_problem(recorded["dataset"], current["dataset"])
        if p:
            problems.append(p)
    if "model" in recorded and "model" in current:
        old, new = recorded["model"], current["model"]
        if old.get("spec") != new.get("spec"):
            problems.append(f"model changed: {old.get('spec')} -> {new.get('spec')}")
        else:
            what = "model weights" + (" (trained cache)" if old.get("kind") == "synthetic-cnn" else "")
            p = _file_problem(what, old, new)
            if p:
                problems.append(p)
    return problems


def fill_missing_hashes(recorded: dict, current: dict) -> dict:
    """``recorded`` with the entries it could not hash (not made yet: a model trained or an artifact fitted
    on first use) taken from ``current``; entries that were hashed stay as recorded (the baseline)."""
    out = dict(recorded)
    files = dict(out.get("files", {}))
    for key, entry in current.get("files", {}).items():
        if key not in files or files[key].get("sha256") is None:
            files[key] = entry
    out["files"] = files
    for key in ("model", "dataset"):
        if isinstance(out.get(key), dict) and out[key].get("sha256") is None and key in current:
            out[key] = current[key]
    return out


def unhashed_inputs(recorded: dict) -> list[str]:
    """The recorded inputs that carry no hash (remote files, models made on a node): resume cannot verify them."""
    out = [key for key, e in recorded.get("files", {}).items() if isinstance(e, dict) and e.get("sha256") is None]
    for key in ("dataset", "model"):
        e = recorded.get(key)
        if isinstance(e, dict) and e.get("sha256") is None and e.get("kind") != "synthetic":
            out.append(f"{key}:{e.get('spec')}")
    return out
