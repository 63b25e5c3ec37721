"""Datasets and weights by name: the data root, the mirror, checksums, the download path (never the network)."""

from __future__ import annotations

import ast
import hashlib
import http.server
import importlib.util
import io
import json
import pickle
import shutil
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hilbed.nodes.workload import catalog, open_dataset
from hilbed.nodes.workload.catalog import CatalogError, DatasetMissing, weights_path
from hilbed.nodes.workload.dataset_specs import DATASET_NAMES, check_dataset_spec


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """An empty data root; no mirror and no network unless a test sets them."""
    d = tmp_path / "root"
    monkeypatch.setenv("HILBED_DATA_DIR", str(d))
    monkeypatch.delenv("HILBED_DATA_MIRROR", raising=False)
    monkeypatch.setenv("HILBED_DATA_OFFLINE", "1")
    return d


@pytest.fixture
def mirror(shared_data, monkeypatch) -> Path:
    monkeypatch.setenv("HILBED_DATA_MIRROR", str(shared_data))
    return shared_data


# ------------------------------------------------------------ catalog ---

def test_cifar_checksums_are_torchvisions():
    """Read from torchvision's source (importing it needs its C extension to match torch)."""
    spec = importlib.util.find_spec("torchvision")
    src = Path(spec.origin).parent / "datasets" / "cifar.py" if spec and spec.origin else None
    if src is None or not src.is_file():
        pytest.skip("torchvision is not installed")
    cls = next(n for n in ast.parse(src.read_text()).body if isinstance(n, ast.ClassDef) and n.name == "CIFAR10")
    tv = {t.targets[0].id: ast.literal_eval(t.value) for t in cls.body
          if isinstance(t, ast.Assign) and isinstance(t.targets[0], ast.Name)}
    test, train = catalog.CATALOG["cifar10:test"], catalog.CATALOG["cifar10:train"]
    for e in (test, train):
        assert (e.url, e.archive, e.archive_md5) == (tv["url"], tv["filename"], tv["tgz_md5"])
        assert e.meta == (tv["meta"]["filename"], tv["meta"]["md5"])
        assert Path(e.rel).name == tv["base_folder"]
    assert [list(f) for f in test.files] == tv["test_list"]
    assert [list(f) for f in train.files] == tv["train_list"]


def test_validator_names_match_the_catalog():
    names = {f"{p}:{n}" for p, ns in DATASET_NAMES.items() for n in ns}
    assert names == set(catalog.dataset_names())
    for n in names:
        assert check_dataset_spec(n) == n
    with pytest.raises(ValueError, match=r"allowed: cifar10:test, cifar10:train"):
        check_dataset_spec("cifar10:validation")


def test_mirror_names_match_the_shared_files(root, mirror):
    for c in catalog.check_all():
        if c.name in ("cifar10:test", "cifar10:train"):
            assert c.where == "missing" and c.ok is None  # the shared mirror holds JPEG trees, not the archive
        else:
            assert (c.where, c.ok) == ("mirror", True), c.detail


# ------------------------------------------------------------ weights ---

def test_weights_path_reads_the_mirror_in_place(root, mirror):
    p = weights_path("cifar10-resnet20")
    assert p == mirror / "models" / "resnet20-12fca82f.th"
    assert not root.exists()  # nothing copied


def test_weights_path_prefers_a_verified_root_copy_and_refetches_a_corrupt_one(root, mirror):
    got = catalog.fetch("cifar10-resnet56")
    assert got == root / "models" / "resnet56-4bfd9763.th"
    assert weights_path("cifar10-resnet56") == got
    got.write_bytes(b"x" + got.read_bytes()[1:])
    with pytest.raises(CatalogError, match="sha256"):  # offline: the corrupt copy is named, not served
        weights_path("cifar10-resnet56")
    catalog.fetch("cifar10-resnet56", force=True)
    assert hashlib.sha256(got.read_bytes()).hexdigest() == catalog.CATALOG["cifar10-resnet56"].sha256


def test_weights_path_plain_file_and_unknown(root, tmp_path):
    f = tmp_path / "mine.th"
    f.write_bytes(b"0")
    assert weights_path(str(f)) == f
    with pytest.raises(CatalogError, match=r"not a catalog name \(cifar10-resnet20, cifar10-resnet56\)"):
        weights_path("resnet-1000")
    with pytest.raises(CatalogError, match=r"not in HILBED_DATA_DIR .* run `hilbed data fetch cifar10-resnet20`"):
        weights_path("cifar10-resnet20")


def test_corrupt_mirror_weights_fail_in_one_line(root, shared_data, tmp_path, monkeypatch):
    m = tmp_path / "mirror"
    (m / "models").mkdir(parents=True)
    blob = bytearray((shared_data / "models" / "resnet20-12fca82f.th").read_bytes())
    blob[1000] ^= 1
    (m / "models" / "resnet20-12fca82f.th").write_bytes(bytes(blob))
    monkeypatch.setenv("HILBED_DATA_MIRROR", str(m))
    with pytest.raises(CatalogError) as ei:
        catalog.fetch("cifar10-resnet20")
    assert "\n" not in str(ei.value) and "sha256" in str(ei.value) and "corrupt" in str(ei.value)
    assert not (root / "models" / "resnet20-12fca82f.th").exists()


# ----------------------------------------------------- mirror datasets ---

def test_fetch_dev_from_the_mirror_verifies_and_opens(root, mirror):
    path = catalog.fetch("cifar10:dev")
    assert path == root / "cifar10" / "dev"
    c = catalog.CATALOG["cifar10:dev"].check()
    assert (c.where, c.ok, c.bytes) == ("root", True, 1842546)
    ds = open_dataset("cifar10:dev", 32, seed=0)
    assert len(ds) == 2000 and ds.classes[0] == "airplane"
    labels = {ds[i][1] for i in range(40)}
    assert len(labels) > 3  # seeded order, not one class after another


def test_corrupt_mirror_tree_fails_and_leaves_nothing(root, shared_data, tmp_path, monkeypatch):
    m = tmp_path / "mirror"
    shutil.copytree(shared_data / "cifar10" / "dev", m / "cifar10" / "dev")
    victim = m / "cifar10" / "dev" / "cat" / "0007.jpg"
    victim.write_bytes(victim.read_bytes()[:-10])
    monkeypatch.setenv("HILBED_DATA_MIRROR", str(m))
    c = catalog.CATALOG["cifar10:dev"].check()
    assert (c.where, c.ok) == ("mirror", False)
    with pytest.raises(CatalogError) as ei:
        catalog.fetch("cifar10:dev")
    msg = str(ei.value)
    assert "\n" not in msg and "tree digest" in msg and "same file count" in msg and str(m) in msg
    assert not (root / "cifar10").exists() or not any((root / "cifar10").iterdir())


def test_mirror_only_name_without_mirror_says_so(root):
    with pytest.raises(CatalogError, match="no public download.*HILBED_DATA_MIRROR"):
        catalog.fetch("cifar10:fit")


def test_missing_dataset_is_one_line_with_the_fetch_command(root):
    with pytest.raises(DatasetMissing) as ei:
        open_dataset("cifar10:test")
    msg = str(ei.value)
    assert msg.startswith(f"dataset cifar10:test is not in HILBED_DATA_DIR ({root})")
    assert msg.endswith("run `hilbed data fetch cifar10:test`") and "\n" not in msg
    with pytest.raises(ValueError, match="allowed: synthetic, imagefolder:PATH, cifar10:test"):
        open_dataset("cifar100:test")


# ------------------------------------------------------- download path ---

def _fake_cifar(shared_data: Path, per_class: int) -> tuple[bytes, np.ndarray, np.ndarray, list[str]]:
    """An archive in CIFAR-10's upstream layout holding real (decoded dev JPEG) images."""
    dev = shared_data / "cifar10" / "dev"
    classes = sorted(p.name for p in dev.iterdir())
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for f in sorted((dev / c).iterdir())[:per_class]:
            xs.append(np.asarray(Image.open(f).convert("RGB")))
            ys.append(ci)
    x = np.stack(xs)
    rows = x.transpose(0, 3, 1, 2).reshape(len(xs), 3072)  # upstream: R plane, G plane, B plane
    files = {"test_batch": {"batch_label": "testing batch 1 of 1", "labels": ys, "data": rows},
             "batches.meta": {"label_names": classes, "num_cases_per_batch": len(ys), "num_vis": 3072}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, obj in files.items():
            blob = pickle.dumps(obj, protocol=2)
            ti = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            ti.size = len(blob)
            tf.addfile(ti, io.BytesIO(blob))
    return buf.getvalue(), x, np.asarray(ys), classes


@pytest.fixture
def http_dir(tmp_path):
    """python's http.server on 127.0.0.1 serving a folder, in a thread."""
    d = tmp_path / "www"
    d.mkdir()

    class H(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(d), **k)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield d, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@pytest.fixture
def fake_test_split(shared_data, monkeypatch):
    """``cifar10:test`` pointed at a 50-image archive in the upstream layout (its own md5s)."""
    archive, x, y, classes = _fake_cifar(shared_data, per_class=5)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        md5s = {m.name.split("/")[-1]: _md5(tf.extractfile(m).read()) for m in tf.getmembers()}
    fake = replace(catalog.CATALOG["cifar10:test"], archive_md5=_md5(archive),
                   files=(("test_batch", md5s["test_batch"]),), meta=("batches.meta", md5s["batches.meta"]))
    monkeypatch.setitem(catalog.CATALOG, "cifar10:test", fake)
    return archive, x, y, classes


def _same_images(ds, x, y) -> bool:
    got = sorted((ds[i][1], ds[i][0].tobytes()) for i in range(len(ds)))
    return got == sorted((int(y[i]), x[i].tobytes()) for i in range(len(y)))


def test_download_extract_verify_then_open_cifar_batches(root, http_dir, fake_test_split, monkeypatch):
    www, base = http_dir
    archive, x, y, classes = fake_test_split
    (www / "cifar-10-python.tar.gz").write_bytes(archive)
    monkeypatch.setitem(catalog.CATALOG, "cifar10:test",
                        replace(catalog.CATALOG["cifar10:test"], url=f"{base}/cifar-10-python.tar.gz"))
    monkeypatch.delenv("HILBED_DATA_OFFLINE")
    seen = []
    path = catalog.fetch("cifar10:test", progress=lambda done, total: seen.append((done, total)))
    assert path == root / "cifar10" / "cifar-10-batches-py"
    assert seen[-1] == (len(archive), len(archive))
    assert catalog.CATALOG["cifar10:test"].check().ok is True

    ds = open_dataset("cifar10:test", 32, seed=3)
    assert len(ds) == 50 and ds.classes == tuple(classes)
    assert _same_images(ds, x, y)  # the reader undoes the upstream plane layout exactly
    big = open_dataset("cifar10:test", 64, seed=3)
    assert big[0][0].shape == (64, 64, 3)


def test_mirror_archive_is_used_offline_and_checked(root, tmp_path, fake_test_split, monkeypatch):
    archive, x, y, _ = fake_test_split
    m = tmp_path / "mirror"
    (m / "cifar10").mkdir(parents=True)
    (m / "cifar10" / "cifar-10-python.tar.gz").write_bytes(archive[:-1] + bytes([archive[-1] ^ 1]))
    monkeypatch.setenv("HILBED_DATA_MIRROR", str(m))
    with pytest.raises(CatalogError, match="mirror archive .* fails its md5"):
        catalog.fetch("cifar10:test")
    (m / "cifar10" / "cifar-10-python.tar.gz").write_bytes(archive)
    catalog.fetch("cifar10:test")  # HILBED_DATA_OFFLINE is set: no network was needed
    assert _same_images(open_dataset("cifar10:test"), x, y)
    # an extracted mirror is read in place, without a fetch
    shutil.move(str(root / "cifar10" / "cifar-10-batches-py"), str(m / "cifar10"))
    assert catalog.CATALOG["cifar10:test"].check().where == "mirror"
    assert _same_images(open_dataset("cifar10:test"), x, y)


def test_download_with_a_wrong_md5_keeps_nothing(root, http_dir, monkeypatch):
    www, base = http_dir
    (www / "w.th").write_bytes(b"not the weights")
    fake = replace(catalog.CATALOG["cifar10-resnet20"], url=f"{base}/w.th")
    monkeypatch.setitem(catalog.CATALOG, "cifar10-resnet20", fake)
    monkeypatch.delenv("HILBED_DATA_OFFLINE")
    with pytest.raises(CatalogError) as ei:
        weights_path("cifar10-resnet20")
    assert "sha256" in str(ei.value) and "discarded" in str(ei.value) and "\n" not in str(ei.value)
    assert not any((root / "models").iterdir())
    good = replace(fake, sha256=hashlib.sha256(b"not the weights").hexdigest())
    monkeypatch.setitem(catalog.CATALOG, "cifar10-resnet20", good)
    assert weights_path("cifar10-resnet20").read_bytes() == b"not the weights"


def test_offline_refuses_the_network(root):
    with pytest.raises(CatalogError, match="HILBED_DATA_OFFLINE"):
        catalog.fetch("cifar10:train")


def test_cifar_reader_refuses_pickled_code(tmp_path):
    from hilbed.nodes.workload.imagefolder import CifarBatches

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        CifarBatches(tmp_path, ["test_batch"])


# ---------------------------------------------------------------- CLI ---

def test_cli_list_json_and_fetch(root, mirror, capsys):
    from hilbed.orchestrator.cli.main import main
    assert main(["data", "list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by = {e["name"]: e for e in out["entries"]}
    assert out["data_dir"] == str(root) and out["mirror"] == str(mirror)
    assert by["cifar10:dev"]["where"] == "mirror" and by["cifar10:dev"]["checksum"] == "ok"
    assert by["cifar10:test"]["where"] == "missing"
    assert main(["data", "fetch", "cifar10-resnet20", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["checksum"] == "ok" and got["path"] == str(root / "models" / "resnet20-12fca82f.th")
    assert main(["data", "fetch", "cifar10:test"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hilbed data fetch: download of") and "HILBED_DATA_OFFLINE" in err[-1]
    assert main(["data", "fetch", "imagenet"]) == 2


def test_scenario_with_a_wrong_split_is_one_line(repo, tmp_path):
    from hilbed.orchestrator.config import load_scenario
    from hilbed.orchestrator.yamlsrc import ConfigError
    text = (repo / "scenarios" / "quickstart.yaml").read_text().replace("dataset: synthetic", "dataset: cifar10:val")
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_scenario(tmp_path / "s.yaml")
    line = ei.value.one_line()
    assert "s.yaml:7" in line and "cifar10:test, cifar10:train, cifar10:dev, cifar10:fit" in line
    (tmp_path / "s.yaml").write_text(text.replace("cifar10:val", "cifar10:test"))
    assert load_scenario(tmp_path / "s.yaml").workload.dataset == "cifar10:test"


def test_fitters_take_catalog_names_for_data_and_weights(root, mirror):
    """`hilbed fit ... --dataset cifar10:dev --model cifar-resnet:cifar10-resnet20` reads the catalog, not paths
    named like the specs in the current directory."""
    from hilbed.nodes.codecs.fitting.neural import load_images, resolve_model_spec
    t = load_images("cifar10:dev", 32, limit=16, seed=0)
    assert t.x.shape == (16, 32, 32, 3) and t.x.dtype == np.uint8 and len(set(t.y.tolist())) > 3
    assert resolve_model_spec("cifar-resnet:cifar10-resnet20") == "cifar-resnet:cifar10-resnet20"
    assert resolve_model_spec("cifar-resnet:w/r20.th").endswith("/w/r20.th")  # a path is made absolute
    with pytest.raises(ValueError, match="unknown dataset 'cifar10:nope'"):
        load_images("cifar10:nope", 32)
