"""Offline rate-accuracy evaluation, the variant grammar, and the `hilbed fit` / `hilbed eval-codecs` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hilbed.nodes.codecs.fitting.evaluate import (
    Variant,
    bytes_for_accuracy,
    compare_to_reference,
    evaluate_variant,
    pareto,
    parse_variants,
)
from hilbed.orchestrator.cli.main import main


def test_variant_grammar_expands_sweeps():
    vs = parse_variants(["jpeg:quality=10..30/10", "grace:artifact=grace-abc:budget=0.1,0.5@g",
                         "autojpeg:artifacts=[autojpeg-a+autojpeg-b]:headers=abbreviated", "png"])
    assert [v.params for v in vs[:3]] == [{"quality": 10}, {"quality": 20}, {"quality": 30}]
    assert vs[3].params == {"artifact": "grace-abc", "budget": 0.1} and vs[3].label == "g[grace-abc,0.1]"
    assert vs[5].params == {"artifacts": ["autojpeg-a", "autojpeg-b"], "headers": "abbreviated"}
    assert vs[6].codec == "png" and vs[6].params == {}
    assert parse_variants(["jpeg:optimize=false@x"])[0].params == {"optimize": False}
    with pytest.raises(ValueError):
        parse_variants(["jpeg:quality"])


def test_pareto_and_reference_comparison_on_hand_made_rows():
    rows = [
        {"codec": "jpeg", "label": "j10", "bytes_payload": 100.0, "top1": 0.50},
        {"codec": "jpeg", "label": "j50", "bytes_payload": 200.0, "top1": 0.60},
        {"codec": "jpeg", "label": "j40", "bytes_payload": 180.0, "top1": 0.55},
        {"codec": "jpeg", "label": "j75", "bytes_payload": 300.0, "top1": 0.80},
        {"codec": "x", "label": "x1", "bytes_payload": 150.0, "top1": 0.62},
        {"codec": "x", "label": "x2", "bytes_payload": 90.0, "top1": 0.40},
    ]
    assert [r["label"] for r in pareto([r for r in rows if r["codec"] == "jpeg"])] == ["j10", "j40", "j50", "j75"]
    assert bytes_for_accuracy(rows[:4], 0.70) == pytest.approx(250.0)
    assert bytes_for_accuracy(rows[:4], 0.40) is None and bytes_for_accuracy(rows[:4], 0.9) is None
    c = compare_to_reference(rows)["x"]
    assert c["point_ratio"] == pytest.approx(150 / 200) and c["point"] == ("x1", "j50")
    assert c["front_ratio"] == pytest.approx(150 / (200 + 100 * 0.02 / 0.20))


def test_evaluate_variant_counts_bytes_and_accuracy(synthetic_model):
    from hilbed.nodes.codecs.fitting import load_images, open_dataset
    x, y = load_images(open_dataset("synthetic", 32, "test", 96), 96)
    lo = evaluate_variant(Variant("jpeg", {"quality": 10}), x, y, synthetic_model, batch=32)
    hi = evaluate_variant(Variant("jpeg", {"quality": 90}), x, y, synthetic_model, batch=32)
    clean = float((synthetic_model.predict(x).argmax(1) == y).mean())
    assert lo["bytes_payload"] < hi["bytes_payload"] and lo["top1"] < hi["top1"] <= clean + 0.05
    assert hi["bytes_sent"] == pytest.approx(hi["bytes_payload"] + hi["bytes_header"])
    assert hi["top5"] >= hi["top1"] and hi["decode_failures"] == 0 and hi["n"] == 96


def test_cli_eval_codecs_writes_table_files_and_json(tmp_path, synthetic_model, capsys):
    out = tmp_path / "ev"
    rc = main(["eval-codecs", "--dataset", "synthetic", "--codecs", "jpeg:quality=20,80", "png", "--n", "48",
               "--out", str(out), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in doc["rows"]] == ["jpeg(quality=20)", "jpeg(quality=80)", "png"]
    assert (out / "results.json").exists() and (out / "results.csv").exists() and (out / "rate_accuracy.png").exists()
    assert doc["meta"]["n"] == 48 and doc["rows"][2]["top1"] == pytest.approx(doc["meta"]["clean_top1"])
    rc = main(["eval-codecs", "--dataset", "synthetic", "--codecs", "jpeg:quality=50", "--n", "16",
               "--out", str(tmp_path / "ev2")])
    assert rc == 0 and "rate-accuracy" in capsys.readouterr().out


def test_cli_fit_prints_artifact_ids_and_refuses_bad_input(tmp_path, synthetic_model, capsys):
    rc = main(["fit", "grace", "--probe-images", "16", "--store", str(tmp_path), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    (aid,) = doc["artifacts"]
    assert aid.startswith("grace-") and (tmp_path / aid / "probe.json").exists()
    assert main(["fit", "no-such-codec"]) == 2
    assert main(["fit", "grace", "--dataset", "/no/such/dir", "--store", str(tmp_path)]) == 2
    capsys.readouterr()
    # a fitted artifact works in eval-codecs by id
    rc = main(["eval-codecs", "--codecs", f"grace:artifact={aid}:budget=0.3,0.6", "--n", "16", "--store",
               str(tmp_path), "--out", str(tmp_path / "ev"), "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rc == 0 and rows[0]["bytes_payload"] > rows[1]["bytes_payload"]


def test_eval_refuses_unfitted_variants_on_foreign_data(tmp_path, capsys):
    d = tmp_path / "folder"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True)
        from PIL import Image
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / c / "0.png")
    rc = main(["eval-codecs", "--dataset", str(d), "--codecs", "grace", "--out", str(tmp_path / "o")])
    assert rc == 2 and "hilbed fit grace" in capsys.readouterr().err


def test_cifar_dev_with_resnet20(shared_data, tmp_path, capsys):
    """Real data: the ResNet-20 checkpoint on a CIFAR-10 dev slice, JPEG q75 ~ the q75 source."""
    rc = main(["eval-codecs", "--dataset", str(shared_data / "cifar10" / "dev"),
               "--model", str(shared_data / "models" / "resnet20-12fca82f.th"),
               "--codecs", "jpeg:quality=10,75", "--n", "200", "--out", str(tmp_path / "c"), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    q10, q75 = doc["rows"]
    assert doc["meta"]["clean_top1"] > 0.7
    assert q75["top1"] >= doc["meta"]["clean_top1"] - 0.03 and q10["top1"] < q75["top1"] - 0.15


def test_jpeg_family_scenario_is_valid(repo):
    from hilbed.orchestrator.config import load_scenario
    sc = load_scenario(repo / "scenarios" / "jpeg-family.yaml")
    names = {c.codec for c in sc.codecs}
    assert {"jpeg", "grace", "autojpeg", "adacompress"} <= names
    assert all(c.link.kind == "trace" for c in sc.conditions)


@pytest.mark.slow
def test_jpeg_family_codecs_run_end_to_end(tmp_path, repo, synthetic_model, monkeypatch):
    """The three families through real agents and the trace shaper, fitting on first use."""
    import pandas as pd

    from hilbed.orchestrator.run.runner import Runner
    monkeypatch.setenv("HILBED_ARTIFACTS", str(tmp_path / "artifacts"))
    text = (repo / "scenarios" / "jpeg-family.yaml").read_text()
    text = text.replace("images_per_trial: 40", "images_per_trial: 6")
    (tmp_path / "s.yaml").write_text(text)
    # keep the two slower fits small: two AutoJPEG sets, few steps
    (tmp_path / "s.yaml").write_text(text.replace(
        "params: {headers: abbreviated, bandwidth_kbps: 0, deadline_ms: 150, margin: 0.8}",
        "params: {headers: abbreviated, bandwidth_kbps: 0, deadline_ms: 150, margin: 0.8, ratios: [0.05, 0.1], "
        "fit_steps: 30}"))
    out = Runner(repo / "testbed.yaml", tmp_path / "s.yaml", results_dir=tmp_path / "runs", quiet=True).execute()
    assert out.state == "complete" and out.records == out.planned
    df = pd.read_parquet(out.run_dir / "results.parquet")
    assert df.error.isna().all()
    fast = df[df.condition == "802154-250k"]
    for label in ("grace-b0.5-abbr", "autojpeg-set-abbr", "adacompress-abbr"):
        rows = fast[fast.codec_label == label]
        assert len(rows) == 6 and rows.deadline_met.all() and rows.decoded.all(), label
    abbr = fast[fast.codec_label == "grace-b0.5-abbr"].bytes_total.mean()
    full = fast[fast.codec_label == "grace-b0.5"].bytes_total.mean()
    assert abbr < full - 200  # the pre-shared tables stay home
