"""Run directories -> typed DataFrames. Reads files only (never the orchestrator)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import FIELDS, SCHEMA


def read_jsonl(path: Path) -> list[dict]:
    out = []
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # torn final line of a killed run
    return out


def dedup(records: list[dict]) -> list[dict]:
    """One record per (trial, client, image): the last one written wins."""
    seen: dict[tuple, dict] = {}
    for r in records:
        seen[(r.get("trial_id"), r.get("client"), r.get("image_index"))] = r
    return list(seen.values())


def records_to_table(records: list[dict]) -> pa.Table:
    cols = {name: [r.get(name) for r in records] for name in FIELDS}
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def write_parquet(records: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(records_to_table(dedup(records)), tmp)
    tmp.replace(path)


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """The run's records as a DataFrame (results.parquet, else trials.jsonl)."""
    run_dir = Path(run_dir)
    pqf = run_dir / "results.parquet"
    jl = run_dir / "trials.jsonl"
    if pqf.exists() and (not jl.exists() or pqf.stat().st_mtime >= jl.stat().st_mtime):
        return pq.read_table(pqf).to_pandas()
    return records_to_table(dedup(read_jsonl(jl))).to_pandas()


def load_runs(run_dirs: list[str | Path]) -> pd.DataFrame:
    frames = [load_run(d) for d in run_dirs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(FIELDS))


def load_manifest(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "manifest.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
