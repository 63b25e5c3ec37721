"""Executors for offline codec work: local vs Ray give the same rows and artifacts; sharding; transfer checks."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hilbed.nodes.codecs.artifacts import ArtifactStore
from hilbed.nodes.codecs.fitting.evaluate import PartialLog, evaluate_variant, parse_variants
from hilbed.orchestrator.cli.main import main
from hilbed.orchestrator.scale import ExecutorError, LocalExecutor, Task, require_ray
from hilbed.orchestrator.scale.sweep import Settings, run_sweep, shard_bounds
from hilbed.orchestrator.scale.transfer import TransferError, pack, unpack

N = 40
CODECS = ["jpeg:quality=30,70", "webp"]


class Recording(LocalExecutor):
    """Runs locally and remembers the task keys it was given."""

    def __init__(self):
        self.keys = []

    def run(self, tasks):
        tasks = list(tasks)
        self.keys += [t.key for t in tasks]
        return super().run(tasks)


def _without_times(rows):
    return [{k: v for k, v in r.items() if k != "encode_ms"} for r in rows]


@pytest.fixture(scope="module")
def images():
    from hilbed.nodes.codecs.fitting import load_images, open_dataset
    return load_images(open_dataset("synthetic", 32, "test", N), N)


@pytest.fixture(scope="module")
def ray_local():
    """A 2-CPU local Ray for this module (its workers inherit HILBED_CACHE_DIR and the cached model)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# ------------------------------------------------------------ no ray needed ---

def test_require_ray_says_how_to_install_and_cli_prints_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ExecutorError, match=r"pip install 'hilbed\[ray\]'"):
        require_ray()
    rc = main(["eval-codecs", "--codecs", "jpeg:quality=30", "--n", "4", "--out", str(tmp_path / "e"),
               "--executor", "ray"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "pip install 'hilbed[ray]'" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    rc = main(["fit", "grace", "--store", str(tmp_path / "s"), "--executor", "ray"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("hilbed fit grace: ") and "hilbed[ray]" in err and len(err.splitlines()) == 1


def test_executor_options_are_checked(tmp_path, capsys):
    rc = main(["eval-codecs", "--codecs", "jpeg", "--n", "4", "--out", str(tmp_path / "a"), "--ray-address", "h:1"])
    assert rc == 2 and "--ray-address need --executor ray" in capsys.readouterr().err
    rc = main(["eval-codecs", "--codecs", "jpeg", "--n", "4", "--out", str(tmp_path / "b"), "--executor", "ray",
               "--shard-size", "0"])
    assert rc == 2 and "--shard-size must be >= 1" in capsys.readouterr().err


def test_an_address_nothing_listens_on_is_refused_at_once():
    import socket

    from hilbed.orchestrator.scale.executor import _reachable
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ExecutorError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        _reachable(f"127.0.0.1:{port}", timeout=2)
    _reachable("auto")  # forms Ray resolves itself are left to it


def test_shards_cover_the_images_and_start_on_batch_boundaries():
    assert shard_bounds(130, 50, 32) == [(0, 64), (64, 128), (128, 130)]
    assert shard_bounds(10, 500, 64) == [(0, 10)]
    b = shard_bounds(1000, 300, 64)
    assert b[0][0] == 0 and b[-1][1] == 1000 and all(lo % 64 == 0 for lo, _ in b)
    assert all(p[1] == q[0] for p, q in zip(b, b[1:]))


def test_local_sharded_sweep_equals_one_pass_and_learning_codecs_are_one_task(images, synthetic_model):
    x, y = images
    vs = parse_variants(CODECS)
    ex = Recording()
    out = run_sweep(ex, vs, x, y, Settings("synthetic-cnn", batch=8), shard_size=16,
                    learns=lambda v: v.codec == "webp")
    ref = [evaluate_variant(v, x, y, synthetic_model, batch=8) for v in vs]
    assert [v.label for v, _ in out] == [v.label for v in vs]
    assert _without_times([r for _, rows in out for r in rows]) == _without_times(ref)
    per_variant = [sum(1 for k in ex.keys if k[1] == i) for i in range(len(vs))]
    assert per_variant == [3, 3, 1]  # 40 images in shards of 16; webp (said to learn) whole, in order


def test_sweep_records_units_resumes_without_work_and_isolates_a_broken_variant(images, tmp_path):
    x, y = images
    vs = parse_variants(["jpeg:quality=50", "jpeg:quality=banana", "png"])
    s = Settings("synthetic-cnn", batch=8)
    log = PartialLog.open(tmp_path, {"n": N}, resume=False)
    errors = []
    out = run_sweep(Recording(), vs, x, y, s, shard_size=16, log=log, on_error=lambda v, m: errors.append(v.label))
    assert [v.label for v, _ in out] == ["jpeg(quality=50)", "png"] and errors == ["jpeg(quality=banana)"]
    lines = [json.loads(line) for line in (tmp_path / "partial.jsonl").read_text().splitlines()]
    assert sum("key" in d for d in lines) == 2  # one line per finished variant, none for the broken one
    again = Recording()
    out2 = run_sweep(again, vs, x, y, s, shard_size=16, log=PartialLog.open(tmp_path, {"n": N}, resume=True))
    assert all(k[1] == 1 for k in again.keys)  # only the broken variant is tried again
    assert [rows for _, rows in out2] == [rows for _, rows in out]


def test_transfer_verifies_digests_and_content_id(tmp_path):
    src = ArtifactStore(tmp_path / "a")
    art = src.put("demo", {"t.json": b"[1,2]"}, {"ratio": 0.1})
    packed = pack(src)
    dst = ArtifactStore(tmp_path / "b")
    assert unpack(dst, packed) == [art.id] and dst.get(art.id).read_bytes("t.json") == b"[1,2]"
    bad = pack(src)
    bad["artifacts"][art.id]["files"]["t.json"] = b"[1,3]"
    with pytest.raises(TransferError, match="corrupted"):
        unpack(ArtifactStore(tmp_path / "c"), bad)
    forged = pack(src)
    item = forged["artifacts"][art.id]
    item["files"]["t.json"] = b"[9]"
    item["sha256"]["t.json"] = __import__("hashlib").sha256(b"[9]").hexdigest()
    with pytest.raises(TransferError, match="content hash"):
        unpack(ArtifactStore(tmp_path / "d"), forged)
    assert not (tmp_path / "c" / art.id).exists() and not (tmp_path / "d" / art.id).exists()


# ------------------------------------------------------------------- ray ---

def test_ray_executor_yields_every_result_and_raises_the_tasks_own_error(ray_local):
    from hilbed.orchestrator.scale import RayExecutor
    ex = RayExecutor()
    assert not ex.started  # an already initialised Ray is used, and left running
    got = dict(ex.run([Task(k, json.loads, (str(k),)) for k in range(6)]))
    assert got == {k: k for k in range(6)}
    with pytest.raises(ValueError):
        list(ex.run([Task(0, json.loads, ("{",))]))
    ex.close()
    assert ray_local.is_initialized()


def test_ray_sweep_equals_local_run(images, synthetic_model, ray_local):
    from hilbed.orchestrator.scale import RayExecutor
    x, y = images
    vs = parse_variants(CODECS)
    out = run_sweep(RayExecutor(), vs, x, y, Settings("synthetic-cnn", batch=8), shard_size=16)
    ref = [evaluate_variant(v, x, y, synthetic_model, batch=8) for v in vs]
    rows = [r for _, rs in out for r in rs]
    assert _without_times(rows) == _without_times(ref)
    assert [r["bytes_sent"] for r in rows] == [r["bytes_sent"] for r in ref]  # exactly, not approximately


def test_cli_eval_codecs_on_ray_writes_the_local_files(tmp_path, synthetic_model, ray_local, capsys):
    base = ["eval-codecs", "--codecs", *CODECS, "png", "--n", str(N), "--batch", "8", "--json"]
    assert main([*base, "--out", str(tmp_path / "local")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main([*base, "--out", str(tmp_path / "ray"), "--executor", "ray", "--shard-size", "16"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert _without_times(remote["rows"]) == _without_times(local["rows"])
    for name in ("results.json", "results.csv", "partial.jsonl"):
        assert (tmp_path / "ray" / name).exists()
    csv_l = (tmp_path / "local" / "results.csv").read_text().splitlines()
    csv_r = (tmp_path / "ray" / "results.csv").read_text().splitlines()
    assert csv_l[0] == csv_r[0] and len(csv_l) == len(csv_r) == 5
    keys = [json.loads(line).get("key") for line in (tmp_path / "ray" / "partial.jsonl").read_text().splitlines()]
    assert sum(k is not None for k in keys) == 4


def test_cli_fit_on_ray_gives_the_local_artifacts(tmp_path, synthetic_model, ray_local, capsys):
    fit = ["fit", "autojpeg", "--images", "32", "--steps", "3", "--min-steps", "1", "--ratios", "0.1,0.2", "--json"]
    assert main([*fit, "--store", str(tmp_path / "local")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main([*fit, "--store", str(tmp_path / "ray"), "--executor", "ray", "--ray-cpus", "1"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert len(local["artifacts"]) == 2 and remote["artifacts"] == local["artifacts"]
    assert remote["summary"]["set"] == local["summary"]["set"]
    for aid in local["artifacts"]:
        a, b = tmp_path / "local" / aid, tmp_path / "ray" / aid
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        for p in a.iterdir():
            assert p.read_bytes() == (b / p.name).read_bytes()


def test_cli_fit_grace_on_ray_single_task(tmp_path, synthetic_model, ray_local, capsys):
    fit = ["fit", "grace", "--probe-images", "16", "--json"]
    assert main([*fit, "--store", str(tmp_path / "local")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main([*fit, "--store", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    remote = json.loads(capsys.readouterr().out)
    (aid,) = local["artifacts"]
    assert remote["artifacts"] == [aid] and np.array_equal(
        np.frombuffer((tmp_path / "local" / aid / "probe.json").read_bytes(), np.uint8),
        np.frombuffer((tmp_path / "ray" / aid / "probe.json").read_bytes(), np.uint8))
