"""Resume must notice when a run's input files changed under it (traces, dataset, weights, artifacts)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from hilbed.orchestrator.config import load_scenario, load_testbed
from hilbed.orchestrator.run.inputs import collect_inputs, verify_inputs

REPO = Path(__file__).resolve().parents[3]
SHIPPED = ("quickstart.yaml", "jamming.yaml")
TRACE = REPO / "scenarios" / "traces" / "ieee802154-116B.up"


@pytest.fixture(scope="module")
def testbed():
    return load_testbed(REPO / "testbed.yaml")


def _traced_jamming(tmp: Path) -> Path:
    """scenarios/jamming.yaml with its links on a trace file beside the copy (relative path)."""
    (tmp / "traces").mkdir()
    shutil.copy(TRACE, tmp / "traces" / "link.up")
    shutil.copy(TRACE, tmp / "traces" / "down.up")
    text = (REPO / "scenarios" / "jamming.yaml").read_text()
    assert text.count("rate_kbps: 250") == 3
    text = text.replace("rate_kbps: 250", "trace: traces/link.up", 2)
    text = text.replace("rate_kbps: 250", "trace: traces/link.up, downlink_trace: traces/down.up")
    p = tmp / "jamming-traced.yaml"
    p.write_text(text)
    return p


def _collect(path: Path, testbed, **kw) -> dict:
    return collect_inputs(load_scenario(path), testbed, path, **kw)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_collect_and_verify_clean(name, testbed):
    path = REPO / "scenarios" / name
    first = _collect(path, testbed)
    json.dumps(first)  # goes into manifest.json as is
    assert first["dataset"]["kind"] == "synthetic" and first["dataset"]["seed"] == 0
    assert first["model"]["kind"] == "synthetic-cnn"
    assert first["model"]["path"].endswith(f"synthetic-cnn-{first['model']['key']}.pt")
    assert first["model"]["sha256"] or first["model"]["reason"]
    assert verify_inputs(first, _collect(path, testbed)) == []
    t0 = time.perf_counter()
    _collect(path, testbed)
    assert time.perf_counter() - t0 < 0.5


def test_trace_byte_change_is_named(tmp_path, testbed):
    path = _traced_jamming(tmp_path)
    before = _collect(path, testbed)
    trace = tmp_path / "traces" / "link.up"
    entry = before["files"]["trace:jam-none"]
    assert entry["path"] == str(trace.resolve()) and entry["bytes"] == trace.stat().st_size
    assert set(before["files"]) == {"trace:jam-none", "trace:jam-light", "trace:jam-heavy",
                                    "downlink_trace:jam-heavy"}
    assert verify_inputs(before, _collect(path, testbed)) == []

    data = bytearray(trace.read_bytes())
    data[0] = ord("9") if data[0] != ord("9") else ord("8")
    trace.write_bytes(bytes(data))
    after = _collect(path, testbed)
    problems = verify_inputs(before, after)
    assert len(problems) == 3  # every condition that uses the file
    assert all(str(trace.resolve()) in p for p in problems)
    assert any("uplink trace of condition jam-light" in p for p in problems)
    old, new = entry["sha256"][:12], after["files"]["trace:jam-none"]["sha256"][:12]
    assert old != new and all(old in p and new in p for p in problems)
    assert not any("down.up" in p for p in problems)


def test_rewritten_and_deleted_trace(tmp_path, testbed):
    path = _traced_jamming(tmp_path)
    before = _collect(path, testbed)
    down = tmp_path / "traces" / "down.up"
    down.write_text("10\n" * 5)  # 250 -> a slower link
    problems = verify_inputs(before, _collect(path, testbed))
    assert len(problems) == 1 and "downlink trace of condition jam-heavy" in problems[0]
    assert str(down.resolve()) in problems[0] and "bytes" in problems[0]
    # gone between kill and resume: the recorded scenario text still names it
    scenario = load_scenario(path)
    down.unlink()
    problems = verify_inputs(before, collect_inputs(scenario, testbed, path))
    assert len(problems) == 1 and "now unavailable" in problems[0] and "down.up" in problems[0]


def _imagefolder(root: Path) -> None:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"{i}.png").write_bytes(f"{c}{i}".encode() * 40)
    (root / "cat" / "notes.txt").write_text("not an image")


def test_dataset_and_model_changes_are_named(tmp_path, testbed):
    _imagefolder(tmp_path / "data")
    (tmp_path / "w.th").write_bytes(b"weights" * 100)
    text = (REPO / "scenarios" / "quickstart.yaml").read_text()
    text = text.replace("dataset: synthetic", "dataset: imagefolder:data").replace(
        "model: synthetic-cnn", "model: cifar-resnet:w.th")
    path = tmp_path / "qs.yaml"
    path.write_text(text)
    before = _collect(path, testbed, workdir=tmp_path)
    ds = before["dataset"]
    assert ds["count"] == 6 and ds["classes"] == ["cat", "dog"] and ds["contents_hashed"]
    assert sorted(ds["listing"]) == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    assert before["model"]["path"] == str((tmp_path / "w.th").resolve())
    assert verify_inputs(before, _collect(path, testbed, workdir=tmp_path)) == []

    (tmp_path / "data" / "cat" / "notes.txt").write_text("ignored: ImageFolder does not read it")
    assert verify_inputs(before, _collect(path, testbed, workdir=tmp_path)) == []

    (tmp_path / "data" / "dog" / "1.png").write_bytes(b"other")
    (tmp_path / "data" / "dog" / "9.png").write_bytes(b"new")
    (tmp_path / "w.th").write_bytes(b"weights" * 99 + b"WEIGHTS")
    problems = verify_inputs(before, _collect(path, testbed, workdir=tmp_path))
    assert len(problems) == 2
    ds_line = next(p for p in problems if p.startswith("dataset"))
    assert "1 changed (dog/1.png)" in ds_line and "1 added (dog/9.png)" in ds_line
    m_line = next(p for p in problems if p.startswith("model"))
    assert str(tmp_path / "w.th") in m_line and before["model"]["sha256"][:12] in m_line


def test_codec_artifact_change_is_named(tmp_path, testbed):
    from hilbed.nodes.codecs.artifacts import ArtifactStore
    art = ArtifactStore(tmp_path / "store").put("pnc", {"weights.npz": b"w" * 64, "huffman.npz": b"h"}, {"v": 1})
    text = (REPO / "scenarios" / "quickstart.yaml").read_text().replace(
        "- {codec: png, label: png}", f"- {{codec: pnc, params: {{artifact: {art.id}}}, label: pnc-x}}")
    path = tmp_path / "qs.yaml"
    path.write_text(text)
    before = _collect(path, testbed, artifact_root=tmp_path / "store")
    key = f"artifact:pnc-x:{art.id}"
    assert before["files"][key]["sha256"] and before["files"][key]["files"] == 3
    assert verify_inputs(before, _collect(path, testbed, artifact_root=tmp_path / "store")) == []
    (art.path / "weights.npz").write_bytes(b"x" * 64)
    problems = verify_inputs(before, _collect(path, testbed, artifact_root=tmp_path / "store"))
    assert len(problems) == 1 and art.id in problems[0] and "codec pnc-x" in problems[0]


def test_auto_fitted_artifacts_are_noted_not_hashed(testbed):
    got = _collect(REPO / "scenarios" / "jpeg-family.yaml", testbed)
    assert {"grace-b0.5", "autojpeg-set-abbr", "adacompress-abbr"} <= set(got["codecs"])
    assert all(v["sha256"] is None and v["reason"] for v in got["codecs"].values())


def test_synthetic_cnn_key_matches_models():
    pytest.importorskip("torch")
    from hilbed.nodes.workload.models import TrainConfig
    from hilbed.orchestrator.run.inputs import _synthetic_cnn_key
    for size in (32, 64):
        assert _synthetic_cnn_key(size) == TrainConfig(size=size).key()


def test_model_cache_trained_after_start_is_not_a_change(tmp_path, testbed, monkeypatch):
    monkeypatch.setenv("HILBED_CACHE_DIR", str(tmp_path))
    path = REPO / "scenarios" / "quickstart.yaml"
    before = _collect(path, testbed)
    assert before["model"]["sha256"] is None and "not trained yet" in before["model"]["reason"]
    cached = Path(before["model"]["path"])
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"trained")
    mid = _collect(path, testbed)
    assert verify_inputs(before, mid) == []  # no baseline to compare with
    cached.write_bytes(b"retrained")
    problems = verify_inputs(mid, _collect(path, testbed))
    assert len(problems) == 1 and str(cached) in problems[0]


def test_files_on_ssh_nodes_are_not_hashed_by_the_controller(tmp_path):
    tb = load_testbed(REPO / "examples" / "lab-testbed.yaml")  # every node over ssh
    _imagefolder(tmp_path / "data")
    text = (REPO / "scenarios" / "quickstart.yaml").read_text().replace(
        "dataset: synthetic", "dataset: imagefolder:data")
    path = tmp_path / "qs.yaml"
    path.write_text(text)
    got = _collect(path, tb, workdir=tmp_path)
    assert got["dataset"]["sha256"] is None and "over ssh" in got["dataset"]["reason"]
    assert got["model"]["sha256"] is None and got["model"]["reason"]
    assert verify_inputs(got, _collect(path, tb, workdir=tmp_path)) == []


def test_unhashed_inputs_are_named_not_passed_as_unchanged():
    from hilbed.orchestrator.run.inputs import unhashed_inputs
    rec = {"files": {"trace:a": {"sha256": "ab"}, "trace:b": {"sha256": None, "reason": "remote"}},
           "dataset": {"spec": "synthetic", "kind": "synthetic"},
           "model": {"spec": "module:x.y:build", "kind": "module", "sha256": None}}
    assert unhashed_inputs(rec) == ["trace:b", "model:module:x.y:build"]
