"""Loading run directories: JSONL vs Parquet, types, schema drift, several runs, the schema doc."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hilbed.analysis.load import NotARunDir, load_manifest, load_run, load_runs, read_jsonl, write_parquet
from hilbed.analysis.schema import FIELDS, schema_markdown

TINY = Path(__file__).resolve().parents[1] / "data" / "analysis" / "tiny-run"
REPO = Path(__file__).resolve().parents[2]


def test_read_jsonl_skips_torn_line():
    recs = read_jsonl(TINY / "trials.jsonl")
    assert len(recs) == 9  # 9 whole lines (one image written twice), torn tail dropped


def test_parquet_roundtrip_is_typed_and_exact(tmp_path):
    run = tmp_path / "r"
    shutil.copytree(TINY, run)
    write_parquet(read_jsonl(run / "trials.jsonl"), run / "results.parquet")
    t = pq.read_table(run / "results.parquet")
    assert t.num_rows == 8 and t.schema.field("t_arrival_ns").type == pa.int64()
    df = load_run(run)
    assert str(df["t_result_ns"].dtype) == "Int64" and str(df["deadline_met"].dtype) == "boolean"
    # nanoseconds survive even with nulls in the column (no float round trip)
    assert df["t_result_ns"].isna().sum() == 1
    assert int(df["t_result_ns"].dropna().iloc[0]) == 1_700_000_000_000_000_000 + 32_000_000
    assert list(df.columns) == list(FIELDS)


def test_newer_jsonl_wins_over_stale_parquet(tmp_path):
    run = tmp_path / "r"
    shutil.copytree(TINY, run)
    recs = read_jsonl(run / "trials.jsonl")
    write_parquet(recs[:3], run / "results.parquet")
    old = (run / "results.parquet").stat().st_mtime
    os.utime(run / "trials.jsonl", (old + 10, old + 10))  # a resume appended after the merge
    assert len(load_run(run)) == 8


def test_old_parquet_without_new_columns_is_conformed(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    recs = read_jsonl(TINY / "trials.jsonl")
    cols = {k: [r.get(k) for r in recs] for k in ("run_id", "codec_label", "condition", "correct1", "bytes_total")}
    pq.write_table(pa.table(cols), run / "results.parquet")
    df = load_run(run)
    assert list(df.columns) == list(FIELDS) and df["jammer_mbps"].isna().all() and len(df) == 9


def test_many_runs_and_bad_dirs(tmp_path):
    other = tmp_path / "tiny2"
    other.mkdir()
    recs = read_jsonl(TINY / "trials.jsonl")
    with open(other / "trials.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps({**r, "run_id": "tiny2"}) + "\n")
    df = load_runs([TINY, other])
    assert len(df) == 16 and set(df.run_id) == {"tiny-20270101-000000-0001", "tiny2"}
    assert load_manifest(other) == {}
    with pytest.raises(NotARunDir):
        load_run(tmp_path / "nothing")
    assert len(load_runs([])) == 0


def test_schema_doc_is_generated_from_fields():
    doc = (REPO / "docs" / "record-schema.md").read_text(encoding="utf-8")
    assert doc == schema_markdown(), "regenerate: python -m hilbed.analysis.schema > docs/record-schema.md"
    for name in FIELDS:
        assert f"| `{name}` |" in doc
