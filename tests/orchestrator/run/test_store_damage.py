"""The run store under hostile files and failing disks: damage is skipped and counted, writes fail in one line.

Full-disk and read-only cases use a small tmpfs (root only; skipped with the reason elsewhere).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from hilbed.analysis.load import jsonl_damage, load_run, read_jsonl, read_records, record_problem, run_damage
from hilbed.orchestrator.errors import RunError
from hilbed.orchestrator.run.store import RunStore, StoreError
from hilbed.orchestrator.run.store import record_problem as store_record_problem
from tests.disk_fixtures import fill_filesystem


def _rec(i: int, trial: str = "t") -> dict:
    return {"trial_id": trial, "client": "c", "image_index": i, "bytes_total": 100 + i, "top5": [1, 2, 3, 4, 5],
            "deadline_met": True, "link_rate_kbps": 250}


def _store(tmp_path: Path, n: int = 5) -> RunStore:
    st = RunStore.create(tmp_path, "s")
    st.write_manifest({"state": "running"})
    for i in range(n):
        st.append_record(_rec(i))
    st.close()
    return st


HOSTILE_LINES = [
    (b'{"trial_id":"t","client":"c","image_index":90,"codec":"\xff\xfe"}', "not UTF-8"),
    (b"this is not json", "not JSON"),
    (b"[1, 2, 3]", "not a record (a JSON list)"),
    (b'"a string"', "not a record (a JSON str)"),
    (b"null", "not a record (a JSON NoneType)"),
    (b'{"client":"c","image_index":91}', "not a record (no trial_id)"),
    (b'{"trial_id":"t","client":"c","image_index":"92"}', "image_index is not a non-negative integer"),
    (b'{"trial_id":"t","client":"c","image_index":true}', "image_index is not a non-negative integer"),
    (b'{"trial_id":"t","client":"c","image_index":-1}', "image_index is not a non-negative integer"),
    (b'{"trial_id":["t"],"client":"c","image_index":93}', "trial_id is not a string"),
    (b'{"trial_id":"t","client":"c","image_index":94,"bytes_total":"many"}', "bad type of bytes_total"),
    (b'{"trial_id":"t","client":"c","image_index":95,"t_result_ns":1e300}', "bad type of t_result_ns"),
    (b'{"trial_id":"t","client":"c","image_index":96,"top5":[1,"x"]}', "bad type of top5"),
    (b'{"trial_id":"t","client":"c","image_index":97,"deadline_met":"yes"}', "bad type of deadline_met"),
    (b'{"trial_id":"t","client":"c","image_index":98,"label":99999999999}', "bad type of label"),
]


def test_every_kind_of_bad_line_is_skipped_counted_and_named(tmp_path):
    st = _store(tmp_path)
    good = st.trials_path.read_bytes().splitlines(keepends=True)
    # hostile lines in the middle, between the good ones, and a torn final line
    body = good[:2] + [line + b"\n" for line, _ in HOSTILE_LINES] + good[2:] + [b'{"trial_id":"t","cli']
    st.trials_path.write_bytes(b"".join(body))

    d = st.scan()
    first_bad = 3  # lines 1-2 are good
    assert d.good == 5 and d.skipped == len(HOSTILE_LINES) + 1
    assert d.skipped_lines == [first_bad + k for k in range(len(HOSTILE_LINES))] + [len(body)]
    for k, (_, why) in enumerate(HOSTILE_LINES):
        assert why in d.reasons[first_bad + k], (k, d.reasons[first_bad + k])
    assert d.torn_tail and d.damaged
    assert "skipped 16 of 21 lines" in d.summary() and "3: not UTF-8" in d.summary()
    ev = d.as_dict()
    assert ev["skipped_lines"] == d.skipped_lines and json.dumps(ev)  # fits in an event as it is

    # every reader skips the same lines; nothing raises
    assert [r["image_index"] for r in st.records()] == [0, 1, 2, 3, 4]
    assert st.last_damage is not None and st.last_damage.skipped_lines == d.skipped_lines
    assert st.done_keys() == {("t", "c", i) for i in range(5)}
    assert len(st.merged_records()) == 5
    assert st.write_results() == 5  # a bad type would have made the Arrow table fail

    # analysis reads the same file the same way (its own copy of the rule)
    skipped: list = []
    recs = read_records(st.trials_path, skipped)
    assert [r["image_index"] for r in recs] == [0, 1, 2, 3, 4]
    assert [n for n, _ in skipped] == d.skipped_lines
    for line, _ in HOSTILE_LINES[1:]:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        assert (record_problem(obj) is None) == (store_record_problem(obj) is None)
    assert jsonl_damage(st.trials_path)["skipped_lines"] == d.skipped_lines
    assert run_damage(st.root)["trials.jsonl"]["skipped"] == d.skipped
    os.utime(st.trials_path)  # newer than results.parquet: the report reads what is intact
    assert sorted(load_run(st.root).image_index) == [0, 1, 2, 3, 4]


def test_a_torn_tail_alone_is_not_damage_and_is_repaired(tmp_path):
    st = _store(tmp_path, 3)
    with open(st.trials_path, "ab") as f:
        f.write(b'{"trial_id":"t","client":"c","ima')
    d = st.scan()
    assert d.torn_tail and d.skipped == 1 and not d.damaged
    assert run_damage(st.root) == {}
    assert st.repair_tail() == len(b'{"trial_id":"t","client":"c","ima')
    assert st.repair_tail() == 0
    st.append_record(_rec(3))
    assert st.scan().skipped == 0 and len(st.done_keys()) == 4


def test_repair_tail_of_a_file_that_is_one_torn_line(tmp_path):
    st = RunStore.create(tmp_path, "s")
    st.trials_path.write_bytes(b"x" * 200_000)  # longer than one read block, no newline at all
    assert st.repair_tail() == 200_000 and st.trials_path.read_bytes() == b""


def test_read_jsonl_of_events_skips_non_objects_and_bad_bytes(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_bytes(b'{"kind":"a"}\n\xff\xff\n[1]\n{"kind":"b"}\n')
    skipped: list = []
    assert [e["kind"] for e in read_jsonl(p, skipped=skipped)] == ["a", "b"]
    assert [n for n, _ in skipped] == [2, 3]


def test_a_truncated_manifest_is_one_line_naming_the_file_and_its_backup(tmp_path):
    st = RunStore.create(tmp_path, "s")
    st.write_manifest({"state": "created", "scenario": {"text": "x" * 100}})
    assert not st.backup_manifest_path.exists()  # nothing to back up yet
    st.write_manifest({"state": "running", "scenario": {"text": "x" * 100}})
    assert json.loads(st.backup_manifest_path.read_text())["state"] == "created"
    full = st.manifest_path.read_bytes()
    st.manifest_path.write_bytes(full[: len(full) // 2])
    with pytest.raises(StoreError) as ei:
        st.read_manifest()
    msg = str(ei.value)
    assert isinstance(ei.value, RunError) and "\n" not in msg
    assert str(st.manifest_path) in msg and "truncated" in msg and str(st.backup_manifest_path) in msg
    # a damaged manifest never replaces the good backup
    st.write_manifest({"state": "complete"})
    assert json.loads(st.backup_manifest_path.read_text())["state"] == "created"
    st.manifest_path.write_bytes(b"\xff\xfe")
    with pytest.raises(StoreError, match="not UTF-8"):
        st.read_manifest()
    st.manifest_path.write_text("[1, 2]")
    with pytest.raises(StoreError, match="JSON list, not an object"):
        st.read_manifest()


def test_a_damaged_manifest_without_backup_says_so(tmp_path):
    st = RunStore.create(tmp_path, "s")
    st.manifest_path.write_text('{"state": "runn')
    with pytest.raises(StoreError, match="no usable manifest.json.bak"):
        st.read_manifest()


def test_a_damaged_results_parquet_falls_back_to_trials_jsonl(tmp_path):
    st = _store(tmp_path, 4)
    st.write_results()
    pq = st.root / "results.parquet"
    pq.write_bytes(pq.read_bytes()[:100])  # a copy cut short
    os.utime(pq, (pq.stat().st_mtime + 10,) * 2)  # newer than trials.jsonl: it would be preferred
    assert sorted(load_run(st.root).image_index) == [0, 1, 2, 3]
    assert "unreadable" in run_damage(st.root)["results.parquet"]


def test_stale_temp_files_of_dead_writers_are_swept(tmp_path):
    st = RunStore.create(tmp_path, "s")
    p = subprocess.Popen(["true"])
    p.wait()
    stale = st.root / f".manifest.json.{p.pid}.abc123.tmp"
    stale.write_text("{")
    mine = st.root / f".results.parquet.{os.getpid()}.tmp"
    mine.write_text("")
    st.write_manifest({"a": 1})
    assert not stale.exists() and mine.exists()


# -- failing disks --------------------------------------------------------------------------------

@pytest.fixture
def tmpfs(make_tmpfs):
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    return make_tmpfs("1m")


def test_full_disk_append_fails_in_one_line_and_leaves_whole_lines(tmpfs):
    st = RunStore.create(tmpfs, "s")
    st.write_manifest({"state": "running"})
    for i in range(3):
        st.append_record(_rec(i))
    filler = fill_filesystem(tmpfs)
    before = st.trials_path.read_bytes()
    big = dict(_rec(3), error="x" * 20000)  # larger than any slack left
    with pytest.raises(StoreError) as ei:
        st.append_record(big)
    msg = str(ei.value)
    assert "\n" not in msg and str(st.trials_path) in msg and "ENOSPC" in msg and "hilbed resume" in msg
    assert ei.value.errno == errno.ENOSPC and isinstance(ei.value, RunError)
    assert st.trials_path.read_bytes() == before  # no half line
    # sticky: nothing more is appended, not even a small record that would fit
    with pytest.raises(StoreError):
        st.append_record(_rec(4))
    with pytest.raises(StoreError):
        st.append_event("trial_done", trial_id="t")
    assert st.trials_path.read_bytes() == before
    # the manifest write fails without leaving its temp file
    with pytest.raises(StoreError, match="ENOSPC") as ei:
        st.write_manifest({"state": "failed", "pad": "y" * 50000})
    assert "\n" not in str(ei.value)
    assert [p.name for p in st.root.iterdir() if p.name.endswith(".tmp")] == []
    assert json.loads(st.manifest_path.read_text()) == {"state": "running"}
    with pytest.raises(StoreError, match="results.parquet"):
        st.write_results([dict(_rec(i), error="z" * 5000) for i in range(400)])
    assert [p.name for p in st.root.iterdir() if p.name.endswith(".tmp")] == []
    st.close()
    filler.unlink()
    # a new store (resume) appends after what was intact
    st2 = RunStore(st.root)
    assert st2.done_keys() == {("t", "c", i) for i in range(3)} and st2.scan().skipped == 0
    st2.append_record(_rec(3))
    assert len(st2.done_keys()) == 4


def test_read_only_results_dir_and_run_dir(tmpfs):
    st = RunStore.create(tmpfs, "s")
    st.write_manifest({"state": "running"})
    st.append_record(_rec(0))
    st.close()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(StoreError) as ei:
        RunStore.create(tmpfs / "runs", "s")
    assert "EROFS" in str(ei.value) and str(tmpfs / "runs") in str(ei.value) and "\n" not in str(ei.value)
    ro = RunStore(st.root)
    with pytest.raises(StoreError, match="EROFS"):
        ro.check_writable()
    with pytest.raises(StoreError, match="EROFS") as ei:
        ro.append_record(_rec(1))
    assert str(ro.trials_path) in str(ei.value)
    with pytest.raises(StoreError, match="EROFS"):
        ro.write_manifest({"state": "x"})
    assert ro.done_keys() == {("t", "c", 0)}  # reading still works
    assert ro.read_manifest() == {"state": "running"}
