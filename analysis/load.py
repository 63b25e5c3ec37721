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
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hilbed.nodes.record import KEY_FIELDS, record_problem  # noqa: F401  (re-exported: analysis' readers use them)

from .schema import FIELDS, SCHEMA

_PANDAS_TYPES = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype(), pa.bool_(): pd.BooleanDtype()}


class NotARunDir(ValueError):
    """The path has neither manifest.json nor trials.jsonl."""


def _object_problem(obj) -> str | None:
    return None if isinstance(obj, dict) else f"not an object (a JSON {type(obj).__name__})"


def read_jsonl(path: str | Path, *, check: Callable[[object], str | None] | None = None,
               skipped: list[tuple[int, str]] | None = None) -> list[dict]:
    """The objects of a JSONL file in file order. A line that is not UTF-8, not JSON, not an object, or
    that ``check`` finds a problem with is skipped; ``skipped`` (when given) receives (line number, reason)
    for each, so a caller can report damage instead of hiding it. A torn final line is one of them."""
    out: list[dict] = []
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return out
    problem = check or _object_problem
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                why = f"not UTF-8 (byte {exc.start + 1})"
            except ValueError:
                why = "not JSON" if raw.endswith(b"\n") else "torn final line (no newline)"
            else:
                why = _object_problem(rec) or problem(rec)
                if why is None:
                    out.append(rec)
                    continue
            if skipped is not None:
                skipped.append((lineno, why))
    return out


def read_records(path: str | Path, skipped: list[tuple[int, str]] | None = None) -> list[dict]:
    """The usable records of a trials.jsonl (see :func:`record_problem`); damaged lines go to ``skipped``."""
    return read_jsonl(path, check=record_problem, skipped=skipped)


def jsonl_damage(path: str | Path, records: bool = True) -> dict:
    """What reading a JSONL file skips, for reports: ``{"file", "skipped", "skipped_lines", "reasons",
    "torn_tail"}`` (``reasons``: line number -> why). ``records``: judge lines as trial records."""
    skipped: list[tuple[int, str]] = []
    read_jsonl(path, check=record_problem if records else None, skipped=skipped)
    last = skipped[-1][1] if skipped else ""
    return {"file": Path(path).name, "skipped": len(skipped), "skipped_lines": [n for n, _ in skipped],
            "reasons": {n: why for n, why in skipped}, "torn_tail": last.startswith("torn final line")}


def run_damage(run_dir: str | Path) -> dict:
    """Damage in a run directory's files: ``{"trials.jsonl": {...}, "events.jsonl": {...},
    "results.parquet": "why it is unreadable"}``, listing only damaged ones ({} when all is well; a torn
    final line of trials.jsonl alone is a killed run, not damage, and is not listed)."""
    run_dir = Path(run_dir)
    out: dict = {}
    for name, recs in (("trials.jsonl", True), ("events.jsonl", False)):
        d = jsonl_damage(run_dir / name, records=recs)
        if d["skipped"] > (1 if d["torn_tail"] else 0):
            out[name] = d
    pqf = run_dir / "results.parquet"
    if pqf.exists():
        why = _parquet_problem(pqf)
        if why:
            out["results.parquet"] = why
    return out


def _parquet_problem(path: Path) -> str | None:
    try:
        pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        return f"unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


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
        try:
            return conform(pq.read_table(pqf))
        except (OSError, pa.ArrowException):
            if not jl.exists():  # nothing to fall back on
                raise NotARunDir(f"{pqf}: {_parquet_problem(pqf)} and there is no trials.jsonl to rebuild it from") \
                    from None
            # a damaged parquet (a copy cut short): the records it was built from are still in trials.jsonl
    return records_to_table(dedup(read_records(jl)))


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
