"""The run store: ``runs/<run-id>/``.

- ``manifest.json``: configs as loaded (text and parsed), git sha, package
  versions, host and node facts, clock offsets, state. Rewritten atomically.
- ``trials.jsonl``: one record per image, appended and fsynced as it arrives,
  so a killed controller loses nothing already measured.
- ``events.jsonl``: incidents and progress marks (agent deaths, retries).
- ``logs/<node>-<role>.log``: each agent's stderr.
- ``results.parquet``: the merged, typed table (built from trials.jsonl).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterator

from hilbed.nodes.events import RunEvent, run_event_kind
from hilbed.nodes.record import arrow_schema


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def new_run_id(scenario: str) -> str:
    return f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.trials_path = self.root / "trials.jsonl"
        self.events_path = self.root / "events.jsonl"
        self.manifest_path = self.root / "manifest.json"
        self.logs = self.root / "logs"
        self._trials_f = None
        self._events_f = None

    @property
    def run_id(self) -> str:
        return self.root.name

    @classmethod
    def create(cls, results_dir: Path, scenario: str) -> "RunStore":
        results_dir.mkdir(parents=True, exist_ok=True)
        while True:
            root = results_dir / new_run_id(scenario)
            try:
                root.mkdir()
                break
            except FileExistsError:
                continue
        store = cls(root)
        store.logs.mkdir()
        return store

    # -- manifest ---------------------------------------------------------
    def read_manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")

    def update_manifest(self, **fields: Any) -> dict:
        m = self.read_manifest() if self.manifest_path.exists() else {}
        m.update(fields)
        self.write_manifest(m)
        return m

    # -- records ----------------------------------------------------------
    def _open(self, path: Path):
        f = open(path, "a", encoding="utf-8")
        return f

    def append_record(self, rec: dict) -> None:
        if self._trials_f is None:
            self._trials_f = self._open(self.trials_path)
        self._trials_f.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")
        self._trials_f.flush()
        os.fsync(self._trials_f.fileno())

    def append_event(self, kind: str | RunEvent, **fields: Any) -> None:
        kind = run_event_kind(kind)
        if self._events_f is None:
            self._events_f = self._open(self.events_path)
        self._events_f.write(json.dumps({"t_ns": time.time_ns(), "kind": kind, **fields}, default=str) + "\n")
        self._events_f.flush()
        os.fsync(self._events_f.fileno())

    def records(self) -> Iterator[dict]:
        """Records in file order; a torn last line (killed mid-write) is skipped."""
        if not self.trials_path.exists():
            return
        with open(self.trials_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def repair_tail(self) -> int:
        """Drop a torn final line so appends start on a fresh line. Returns bytes dropped."""
        if not self.trials_path.exists():
            return 0
        data = self.trials_path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        cut = data.rfind(b"\n") + 1
        with open(self.trials_path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        return len(data) - cut

    def merged_records(self) -> list[dict]:
        """One record per (trial, client, image): the last one written wins (a re-run supersedes)."""
        out: dict[tuple, dict] = {}
        for r in self.records():
            if isinstance(r, dict):
                out[(r.get("trial_id"), r.get("client"), r.get("image_index"))] = r
        return list(out.values())

    def write_results(self) -> int:
        """``results.parquet`` from trials.jsonl (typed by the record contract), atomically; returns rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = self.merged_records()
        schema = arrow_schema()
        table = pa.Table.from_pydict({f.name: [r.get(f.name) for r in records] for f in schema}, schema=schema)
        path = self.root / "results.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.root)
        return len(records)

    def done_keys(self) -> set[tuple[str, str, int]]:
        return {(r["trial_id"], r["client"], int(r["image_index"])) for r in self.records()}

    def close(self) -> None:
        for f in (self._trials_f, self._events_f):
            if f is not None:
                f.close()
        self._trials_f = self._events_f = None
