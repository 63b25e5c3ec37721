from __future__ import annotations

import json

from hilbed.analysis.load import dedup, load_run, write_parquet
from hilbed.analysis.schema import FIELDS
from hilbed.orchestrator.run.store import RunStore


def test_append_is_durable_and_torn_tail_is_repaired(tmp_path):
    st = RunStore.create(tmp_path, "s")
    st.write_manifest({"state": "running"})
    for i in range(3):
        st.append_record({"trial_id": "t", "client": "c", "image_index": i})
    st.close()
    with open(st.trials_path, "a") as f:
        f.write('{"trial_id": "t", "client": "c", "ima')  # killed mid-write
    assert len(list(st.records())) == 3
    assert st.done_keys() == {("t", "c", 0), ("t", "c", 1), ("t", "c", 2)}
    assert st.repair_tail() > 0
    st.append_record({"trial_id": "t", "client": "c", "image_index": 3})
    lines = st.trials_path.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(x) for x in lines)


def test_manifest_atomic_update(tmp_path):
    st = RunStore.create(tmp_path, "s")
    st.write_manifest({"a": 1})
    st.update_manifest(state="complete")
    assert st.read_manifest() == {"a": 1, "state": "complete"}
    assert not [p for p in st.root.iterdir() if p.name.endswith(".tmp")]


def test_parquet_has_every_field_and_dedups(tmp_path):
    recs = [{"trial_id": "t", "client": "c", "image_index": 1, "bytes_total": 10, "top5": [1, 2, 3, 4, 5]},
            {"trial_id": "t", "client": "c", "image_index": 1, "bytes_total": 11, "top5": [1, 2, 3, 4, 5]},
            {"trial_id": "t", "client": "c", "image_index": 2, "bytes_total": 12, "top5": []}]
    assert len(dedup(recs)) == 2
    write_parquet(recs, tmp_path / "results.parquet")
    df = load_run(tmp_path)
    assert list(df.columns) == list(FIELDS)
    assert sorted(df.bytes_total) == [11, 12]
