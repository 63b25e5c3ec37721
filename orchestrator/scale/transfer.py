"""Artifact directories as bytes, so a task on another machine can hand its artifacts to the controller.

A worker's store is not the controller's (other disk, other $HILBED_ARTIFACTS),
so a fit task returns the directories it produced, file by file, with each
file's SHA-256; :func:`unpack` checks those digests and that the directory's
name is still the content id of what arrived (:func:`content_id`), then moves
it into the local store atomically. The same packing carries the artifacts
an evaluation names to workers that do not hold them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from hilbed.nodes.codecs.artifacts import ArtifactStore, content_id

AUTO = "auto"  # the fit-on-first-use index (settings key -> artifact id), see fitting.auto_artifact


class TransferError(ValueError):
    """What arrived is not what was sent (a digest or the content id does not match)."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack_dir(path: Path) -> dict:
    """``{"files": {relpath: bytes}, "sha256": {relpath: hex}}`` for every file under ``path``."""
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}
    return {"files": files, "sha256": {k: _digest(v) for k, v in files.items()}}


def pack(store: ArtifactStore, ids: list[str] | None = None, with_members: bool = True) -> dict:
    """The artifacts ``ids`` of ``store`` (all of them when None), plus the members a bundle lists.

    With ``ids=None`` the fit-on-first-use index files come along too (under ``"auto"``).
    """
    out: dict = {"artifacts": {}, AUTO: {}}
    todo = [a.id for a in store.list()] if ids is None else list(ids)
    while todo:
        aid = todo.pop(0)
        if aid in out["artifacts"]:
            continue
        art = store.get(aid)
        out["artifacts"][aid] = pack_dir(art.path)
        if with_members:
            todo += [str(m) for m in art.meta.get("members") or []]
    if ids is None and (store.root / AUTO).is_dir():
        for p in sorted((store.root / AUTO).iterdir()):
            if p.is_file() and not p.name.startswith("."):
                out[AUTO][p.name] = p.read_text().strip()
    return out


def _check(aid: str, item: dict) -> None:
    files, sums = item["files"], item["sha256"]
    if set(files) != set(sums):
        raise TransferError(f"artifact {aid}: files and digests differ ({sorted(set(files) ^ set(sums))})")
    for name, data in files.items():
        if _digest(data) != sums[name]:
            raise TransferError(f"artifact {aid}: {name} arrived corrupted (SHA-256 differs)")
    if "meta.json" not in files:
        raise TransferError(f"artifact {aid}: no meta.json")
    meta = json.loads(files["meta.json"])
    kind = meta.pop("kind", None)
    meta.pop("id", None)
    body = {k: v for k, v in files.items() if k != "meta.json"}
    if kind is None or content_id(kind, body, meta) != aid:
        raise TransferError(f"artifact {aid}: its content hash is not its id (what arrived is another artifact)")


def unpack(store: ArtifactStore, packed: dict) -> list[str]:
    """Verify and install ``packed`` (from :func:`pack`) into ``store``; returns the ids, already-held ones included.

    Each directory is written beside its destination and renamed into place,
    so a reader never sees half an artifact and two writers of one id are harmless.
    """
    ids = []
    for aid, item in packed.get("artifacts", {}).items():
        _check(aid, item)
        ids.append(aid)
        dest = store.root / aid
        if (dest / "meta.json").exists():
            continue
        store.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{aid}.", dir=store.root))
        try:
            for name, data in item["files"].items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            try:
                os.replace(tmp, dest)
            except OSError:  # someone installed it first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if packed.get(AUTO):
        d = store.root / AUTO
        d.mkdir(parents=True, exist_ok=True)
        for key, aid in packed[AUTO].items():
            if (store.root / aid / "meta.json").exists() and not (d / key).exists():
                tmp = d / f".{key}.tmp-{os.getpid()}"
                tmp.write_text(aid + "\n")
                os.replace(tmp, d / key)
    return ids
