"""``hilbed export mlflow``: a run directory logged into a temporary MLflow file store and read back with
MLflow's own client (params, metrics equal to the summary's, artifacts, nested cell runs)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from hilbed.orchestrator.cli.main import main

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "analysis"


def _copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(DATA / name, dst)
    return dst


def _export(capsys, tmp_path: Path, *runs: Path, experiment: str = "hilbed-test") -> tuple[str, dict]:
    uri = (tmp_path / "mlruns").as_uri()
    rc = main(["export", "mlflow", *map(str, runs), "--tracking-uri", uri, "--experiment", experiment, "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return uri, json.loads(out.out)


def _children(client, exp_id: str, parent_id: str):
    return client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_export_reads_back_params_metrics_tags_and_artifacts(capsys, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from hilbed.analysis.load import load_run
    from hilbed.analysis.metrics import summary
    run = _copy(tmp_path, "tiny-run")
    uri, doc = _export(capsys, tmp_path, run)
    assert doc["tracking_uri"] == uri and len(doc["runs"]) == 1
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("hilbed-test")
    assert exp is not None and exp.experiment_id == doc["runs"][0]["experiment_id"]

    parent = client.get_run(doc["runs"][0]["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    p = parent.data.params
    assert p["scenario"] == "tiny" and p["testbed"] == "embedded"
    assert p["git_sha"] == "feedfacefeedfacefeedfacefeedfacefeedface"
    assert p["cells"] == "2"
    assert parent.data.tags["hilbed.run_id"] == "tiny-20270101-000000-0001"
    assert parent.data.tags["hilbed.state"] == "complete"
    assert parent.data.metrics["n"] == 8  # all the run's records
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"manifest.json", "trials.jsonl", "summary.csv"} <= arts

    # one nested child run per codec x condition cell, metrics equal to that summary row
    want = summary(load_run(run))
    kids = _children(client, exp.experiment_id, parent.info.run_id)
    assert sorted(k.data.params["codec_label"] for k in kids) == sorted(want["codec_label"])
    for k in kids:
        row = want[(want.codec_label == k.data.params["codec_label"])
                   & (want.condition == k.data.params["condition"])].iloc[0]
        m = k.data.metrics
        for col in ("n", "top1", "top5", "miss_rate", "e2e_p50_ms", "e2e_p95_ms", "bytes_mean"):
            assert m[col] == pytest.approx(float(row[col]), rel=1e-12, abs=1e-12), col
        assert "energy_mj_mean" not in m  # NaN in a run without energy: left out, not logged as NaN
        assert k.data.params["jamming_level"] == "light" and k.data.params["link_kind"] == "trace"
        assert k.data.params["link_rate_kbps"] == "64"
        assert k.data.tags["mlflow.parentRunId"] == parent.info.run_id
    jpeg = next(k for k in kids if k.data.params["codec_label"] == "jpeg-q10")
    assert jpeg.data.params["codec"] == "jpeg" and jpeg.data.params["codec.quality"] == "10"

    # the logged summary.csv has the same numbers as the summary
    local = Path(client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path / "dl")))
    import pandas as pd
    got = pd.read_csv(local)
    assert list(got["top1"]) == pytest.approx(list(want["top1"]))


def test_export_energy_metrics_and_report_folder(capsys, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from hilbed.analysis.load import load_run
    from hilbed.analysis.metrics import summary
    from hilbed.analysis.report import build_report
    run = _copy(tmp_path, "energy-run")
    build_report([run], None, figures=False)
    assert (run / "report" / "summary.csv").is_file()
    uri, doc = _export(capsys, tmp_path, run)
    client = MlflowClient(tracking_uri=uri)
    pid = doc["runs"][0]["mlflow_run_id"]
    top = {a.path for a in client.list_artifacts(pid)}
    assert "report" in top and "summary.csv" in top
    in_report = {a.path for a in client.list_artifacts(pid, "report")}
    assert "report/summary.csv" in in_report
    want = summary(load_run(run))
    exp_id = doc["runs"][0]["experiment_id"]
    kids = _children(client, exp_id, pid)
    assert len(kids) == len(want)
    for k in kids:
        row = want[(want.codec_label == k.data.params["codec_label"])
                   & (want.condition == k.data.params["condition"])].iloc[0]
        if math.isfinite(float(row["energy_mj_mean"])):
            assert k.data.metrics["energy_mj_mean"] == pytest.approx(float(row["energy_mj_mean"]))
    assert any("energy_mj_mean" in k.data.metrics for k in kids)


def test_two_runs_two_parent_runs_in_one_experiment(capsys, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    a, b = _copy(tmp_path, "tiny-run"), _copy(tmp_path, "energy-run")
    uri, doc = _export(capsys, tmp_path, a, b, experiment="two")
    assert len({r["mlflow_run_id"] for r in doc["runs"]}) == 2
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("two")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`hilbed.run_id` != ''")
    top = [r for r in parents if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 2


def test_without_mlflow_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    run = _copy(tmp_path, "tiny-run")
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    rc = main(["export", "mlflow", str(run), "--tracking-uri", (tmp_path / "m").as_uri()])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'hilbed[mlflow]'" in lines[0]
    assert not (tmp_path / "m").exists()


def test_missing_or_non_run_directory_exit_2(capsys, tmp_path):
    rc = main(["export", "mlflow", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"hilbed export mlflow: {tmp_path / 'nope'}: no such directory"
    (tmp_path / "empty").mkdir()
    rc = main(["export", "mlflow", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a run directory" in err and len(err.strip().splitlines()) == 1
