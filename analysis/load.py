"""Run directories -> typed DataFrames. Reads files only (never the orchestrator).

A run directory holds ``manifest.json``, ``trials.jsonl`` (one record per image,
appended as measured) and, once the run finished, ``results.parquet`` (the same
records, deduplicated and typed by :data:`hilbed.analysis.schema.SCHEMA`). Loading
prefers the Parquet file unless the JSONL is newer (a resumed run appended to
it). The DataFrame uses pandas' nullable dtypes (``Int64``, ``Int32``,
``boolean``) so nanosecond timestamps stay exact even when some are null.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import FIELDS, SCHEMA

_PANDAS_TYPES = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype()}


class NotARunDir(ValueError):
    """The path has neither manifest.json nor trials.jsonl."""


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file in file order; a torn or non-object line is skipped."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # torn final line of a killed run
            if isinstance(rec, dict):
                out.append(rec)
    return out


def dedup(records: list[dict]) -> list[dict]:
    """One record per (trial, client, image, repetition): the last one written wins."""
    seen: dict[tuple, dict] = {}
    for r in records:
        seen[(r.get("trial_id"), r.get("client"), r.get("image_index"), r.get("repetition"))] = r
    return list(seen.values())


def records_to_table(records: list[dict]) -> pa.Table:
    """Records -> Arrow table with exactly the schema's columns (unknown keys dropped, missing ones null)."""
    cols = {name: [r.get(name) for r in records] for name in FIELDS}
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def conform(table: pa.Table) -> pa.Table:
    """A table from an older or newer writer -> the current schema (missing columns null, extra dropped)."""
    cols = []
    for field in SCHEMA:
        if field.name in table.column_names:
            col = table.column(field.name)
            cols.append(col if col.type == field.type else col.cast(field.type))
        else:
            cols.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get)


def write_parquet(records: list[dict], path: str | Path) -> None:
    """Deduplicate, type and write atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(records_to_table(dedup(records)), tmp)
    tmp.replace(path)


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "manifest.json").exists() or (p / "trials.jsonl").exists() or (p / "results.parquet").exists()


def load_table(run_dir: str | Path) -> pa.Table:
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise NotARunDir(f"{run_dir}: not a run directory (no manifest.json, trials.jsonl or results.parquet)")
    pqf = run_dir / "results.parquet"
    jl = run_dir / "trials.jsonl"
    if pqf.exists() and (not jl.exists() or pqf.stat().st_mtime >= jl.stat().st_mtime):
        return conform(pq.read_table(pqf))
    return records_to_table(dedup(read_jsonl(jl)))


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """The run's records as a typed DataFrame (results.parquet, else trials.jsonl)."""
    return to_pandas(load_table(run_dir))


def load_runs(run_dirs: list[str | Path]) -> pd.DataFrame:
    """Several runs in one frame; ``run_id`` tells them apart."""
    tables = [load_table(d) for d in run_dirs]
    if not tables:
        return to_pandas(SCHEMA.empty_table())
    return to_pandas(pa.concat_tables(tables))


def load_manifest(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "manifest.json"
    if not p.exists():
        return {}
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return m if isinstance(m, dict) else {}


def load_events(run_dir: str | Path) -> list[dict]:
    """``events.jsonl`` of a run (incidents, jammer levels as resolved, link stats); [] when absent."""
    return read_jsonl(Path(run_dir) / "events.jsonl")


def scenario_of(manifest: dict) -> dict:
    """The parsed scenario stored in a manifest ({} when absent)."""
    sc = manifest.get("scenario") or {}
    parsed = sc.get("parsed") if isinstance(sc, dict) else None
    return parsed if isinstance(parsed, dict) else {}
