"""Content-hashed codec artifacts (quantisation tables, weights, agents).

An artifact is a directory ``<root>/<kind>-<sha12>/`` with ``meta.json`` and
any files; its id is the hash of its file contents and metadata, so the same
fit gives the same id on every machine and a node that already holds it is
skipped when the controller pushes artifacts. Scenarios refer to artifacts by
id in codec params (``artifact: grace-0123456789ab``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


def default_root() -> Path:
    env = os.environ.get("HILBED_ARTIFACTS")
    if env:
        return Path(env)
    from hilbed.nodes.paths import cache_dir
    return cache_dir() / "artifacts"


@dataclass(frozen=True)
class Artifact:
    id: str
    path: Path
    meta: dict

    def file(self, name: str) -> Path:
        return self.path / name

    def read_bytes(self, name: str) -> bytes:
        return (self.path / name).read_bytes()


def content_id(kind: str, files: dict[str, bytes], meta: dict) -> str:
    h = hashlib.sha256()
    h.update(kind.encode() + b"\0")
    h.update(json.dumps(meta, sort_keys=True, separators=(",", ":"), default=str).encode() + b"\0")
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return f"{kind}-{h.hexdigest()[:12]}"


class ArtifactStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_root()

    def put(self, kind: str, files: dict[str, bytes], meta: dict) -> Artifact:
        """Store files + meta atomically; returns the (possibly existing) artifact."""
        aid = content_id(kind, files, meta)
        dest = self.root / aid
        if dest.exists():
            return self.get(aid)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{aid}.", dir=self.root))
        try:
            for name, data in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_bytes(data)
            (tmp / "meta.json").write_text(json.dumps({"id": aid, "kind": kind, **meta}, indent=2, default=str))
            try:
                os.replace(tmp, dest)
            except OSError:  # another process stored the same artifact first
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.get(aid)

    def get(self, aid: str) -> Artifact:
        path = self.root / aid
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"artifact {aid!r} not found in {self.root} (run `hilbed fit ...` or provision)")
        return Artifact(aid, path, json.loads(meta_path.read_text()))

    def list(self, kind: str | None = None) -> list[Artifact]:
        if not self.root.exists():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").exists():
                if kind is None or p.name.startswith(kind + "-"):
                    out.append(self.get(p.name))
        return out
