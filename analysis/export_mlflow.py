"""Export run directories to MLflow (``hilbed export mlflow``, docs/cli.md).

One MLflow run per run directory (the *parent*), and one nested child run per
codec variant x condition cell of the summary:

* parent: params ``scenario``, ``testbed``, ``git_sha`` (and ``git_dirty``),
  ``hilbed_version``, ``cells``; tags ``hilbed.run_id``, ``hilbed.state``,
  ``hilbed.run_dir``; metrics over all the run's records (the summary grouped
  by ``run_id``); artifacts: ``manifest.json`` (already secret-redacted by the
  runner), ``trials.jsonl``, ``events.jsonl``, ``summary.csv`` (report/'s, or
  computed when the run has no report yet) and the ``report/`` directory
  (figures) when present.
* child (tag ``mlflow.parentRunId``): params ``codec_label``, ``codec``,
  ``codec.<param>`` for each codec parameter, ``condition`` and its fields
  (``jamming_level``, ``link_kind``, ``link_rate_kbps``, ``link_delay_ms``,
  ``trace_name``, ``deadline_ms``); metrics = that cell's summary row.

Metric names are the summary's column names (``top1``, ``top5``,
``miss_rate``, ``e2e_p50_ms``, ``e2e_p95_ms``, ``bytes_mean``,
``energy_mj_mean``, ...); NaN and infinite values are left out. mlflow is
imported lazily: :class:`MlflowMissing` when it is not installed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "pip install 'hilbed[mlflow]'"
DEFAULT_TRACKING_URI = "file:./mlruns"
DEFAULT_EXPERIMENT = "hilbed"

#: summary columns logged as metrics (those present and finite)
METRICS = ("n", "top1", "top1_lo", "top1_hi", "top5", "top5_lo", "top5_hi", "miss_rate", "miss_lo", "miss_hi",
           "decoded_rate", "no_reply", "bytes_mean", "bytes_delivered_mean", "delivered_frac", "goodput_kbps",
           "e2e_p10_ms", "e2e_p50_ms", "e2e_p90_ms", "e2e_p95_ms", "e2e_p99_ms", "miss_claim_max",
           "deadline_ms", "jammer_load_mean", "jammer_mbps_mean",
           "energy_n", "energy_encode_mj_mean", "energy_tx_mj_mean", "energy_mj_mean", "energy_per_correct_mj",
           "power_idle_mw_mean")

#: record fields that describe a condition, logged as child params
CONDITION_FIELDS = ("condition", "jamming_level", "link_kind", "link_rate_kbps", "link_delay_ms", "trace_name",
                    "deadline_ms")

_PARAM_MAX = 500  # the smallest limit of MLflow's stores on a param value


class MlflowMissing(RuntimeError):
    """mlflow is not installed."""


@dataclass
class Exported:
    run_dir: str
    run_id: str
    mlflow_run_id: str
    experiment_id: str
    cells: list[dict] = field(default_factory=list)  # {codec_label, condition, mlflow_run_id}
    artifacts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"run_dir": self.run_dir, "run_id": self.run_id, "mlflow_run_id": self.mlflow_run_id,
                "experiment_id": self.experiment_id, "cells": self.cells, "artifacts": self.artifacts}


def _mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise MlflowMissing(f"mlflow is not installed ({exc}); install it with: {INSTALL_HINT}") from None
    return MlflowClient, Metric, Param, RunTag


def _allow_file_store(uri: str) -> None:
    """MLflow 3 refuses its file store unless asked; a ``file:`` URI (or a plain path) is an explicit ask."""
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _pstr(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= _PARAM_MAX else s[:_PARAM_MAX - 3] + "..."


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _present(v) -> bool:
    if v is None:
        return False
    try:
        return not (isinstance(v, float) and math.isnan(v)) and str(v) not in ("<NA>", "nan", "NaT")
    except (TypeError, ValueError):
        return True


def metrics_of(row: dict) -> dict[str, float]:
    """The finite summary values of a row that MLflow gets as metrics."""
    out = {}
    for k in METRICS:
        if k in row:
            f = _num(row[k])
            if f is not None:
                out[k] = f
    return out


def _codec_params(v) -> dict:
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v:
        try:
            d = json.loads(v)
        except ValueError:
            return {"params": v}
        return d if isinstance(d, dict) else {"params": d}
    return {}


def cell_params(g) -> dict[str, str]:
    """Params of one codec x condition cell from its records (first record's values)."""
    first = g.iloc[0]
    out = {}
    for k in ("codec_label", "codec"):
        if k in g.columns and _present(first[k]):
            out[k] = _pstr(first[k])
    if "codec_params" in g.columns:
        for k, v in sorted(_codec_params(first["codec_params"]).items()):
            out[f"codec.{k}"] = _pstr(v)
    for k in CONDITION_FIELDS:
        if k in g.columns and _present(first[k]):
            out[k] = _pstr(first[k].item() if hasattr(first[k], "item") else first[k])
    return out


def _run_params(manifest: dict, df) -> dict[str, str]:
    sc = manifest.get("scenario") or {}
    tb = manifest.get("testbed") or {}
    git = manifest.get("git") or {}
    scenario = sc.get("name") if isinstance(sc, dict) else None
    if not scenario and "scenario" in df.columns and len(df):
        scenario = df["scenario"].iloc[0]
    out = {"scenario": scenario, "testbed": tb.get("name") if isinstance(tb, dict) else None,
           "git_sha": git.get("sha"), "git_dirty": git.get("dirty"), "git_branch": git.get("branch"),
           "hilbed_version": (manifest.get("versions") or {}).get("hilbed")}
    return {k: _pstr(v) for k, v in out.items() if v is not None}


def _artifacts(run_dir: Path) -> list[tuple[Path, str | None]]:
    """(local path, artifact sub-directory) to upload; report/ as a directory."""
    out: list[tuple[Path, str | None]] = []
    for name in ("manifest.json", "trials.jsonl", "events.jsonl"):
        if (run_dir / name).is_file():
            out.append((run_dir / name, None))
    summary_csv = run_dir / "report" / "summary.csv"
    if summary_csv.is_file():
        out.append((summary_csv, None))  # at the top as well: the one file people open
    if (run_dir / "report").is_dir():
        out.append((run_dir / "report", "report"))
    return out


def export_run(run_dir: str | Path, tracking_uri: str = DEFAULT_TRACKING_URI,
               experiment: str = DEFAULT_EXPERIMENT) -> Exported:
    """Log one run directory as a parent MLflow run with a child run per codec x condition cell."""
    from hilbed.analysis.load import load_manifest, load_run
    from hilbed.analysis.metrics import GROUP, summary, with_latency

    MlflowClient, Metric, Param, RunTag = _mlflow()
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    df = load_run(run_dir)
    run_id = str(manifest.get("run_id") or (df["run_id"].iloc[0] if "run_id" in df.columns and len(df)
                                            else run_dir.name))
    state = str(manifest.get("state") or "unknown")
    d = with_latency(df) if len(df) else df
    by_run = summary(d.assign(_all=1), by="_all") if len(d) else None
    cells = summary(d, by=GROUP) if len(d) else None

    _allow_file_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    now = int(time.time() * 1000)
    tags = {"hilbed.run_id": run_id, "hilbed.state": state, "hilbed.run_dir": str(run_dir.resolve()),
            "mlflow.runName": run_id}
    parent = client.create_run(exp_id, tags=tags, run_name=run_id)
    pid = parent.info.run_id
    out = Exported(str(run_dir), run_id, pid, exp_id)
    try:
        params = _run_params(manifest, df)
        params["cells"] = str(0 if cells is None else len(cells))
        metrics = metrics_of(by_run.iloc[0].to_dict()) if by_run is not None else {}
        client.log_batch(pid, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         params=[Param(k, v) for k, v in params.items()])
        if cells is not None:
            for _, row in cells.iterrows():
                g = d[(d["codec_label"] == row["codec_label"]) & (d["condition"] == row["condition"])]
                name = f"{row['codec_label']} / {row['condition']}"
                child = client.create_run(exp_id, run_name=name,
                                          tags={"mlflow.parentRunId": pid, "hilbed.run_id": run_id,
                                                "hilbed.state": state, "mlflow.runName": name})
                cid = child.info.run_id
                client.log_batch(cid, metrics=[Metric(k, v, now, 0) for k, v in metrics_of(row.to_dict()).items()],
                                 params=[Param(k, v) for k, v in cell_params(g).items()])
                client.set_terminated(cid, "FINISHED")
                out.cells.append({"codec_label": str(row["codec_label"]), "condition": str(row["condition"]),
                                  "mlflow_run_id": cid})
        for path, sub in _artifacts(run_dir):
            if path.is_dir():
                client.log_artifacts(pid, str(path), sub)
            else:
                client.log_artifact(pid, str(path), sub)
            out.artifacts.append(f"{sub}/" if path.is_dir() else path.name)
        if "summary.csv" not in out.artifacts and cells is not None:  # no report/ yet: the summary all the same
            with tempfile.TemporaryDirectory() as tmp:
                f = Path(tmp) / "summary.csv"
                cells.to_csv(f, index=False)
                client.log_artifact(pid, str(f))
            out.artifacts.append("summary.csv")
    except BaseException:
        client.set_terminated(pid, "FAILED")
        raise
    client.set_terminated(pid, "FINISHED")
    return out
