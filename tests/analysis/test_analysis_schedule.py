"""`hilbed schedule`: systemd user timer and crontab entries, pinned baseline, history, latest link.

Never touches the real user crontab or systemd: fake `crontab` and `systemctl`
programs on PATH record what they are asked, units go to a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from hilbed.analysis.report import build_report
from hilbed.orchestrator.cli import scheduled as sch
from hilbed.orchestrator.cli.main import main

DATA = Path(__file__).resolve().parents[1] / "data" / "analysis"
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(DATA))
import synth  # noqa: E402

FAKE_CRONTAB = """#!/bin/sh
f="$FAKE_CRONTAB_FILE"
case "$1" in
  -l) if [ -f "$f" ]; then cat "$f"; else echo "no crontab for tester" >&2; exit 1; fi ;;
  -) cat > "$f" ;;
  *) exit 2 ;;
esac
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$@" >> "$FAKE_SYSTEMCTL_LOG"
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in (("crontab", FAKE_CRONTAB), ("systemctl", FAKE_SYSTEMCTL)):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod((bin_ / name).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("HILBED_CRONTAB", raising=False)
    monkeypatch.setenv("FAKE_CRONTAB_FILE", str(tmp_path / "crontab.txt"))
    monkeypatch.setenv("FAKE_SYSTEMCTL_LOG", str(tmp_path / "systemctl.log"))
    monkeypatch.setenv("HILBED_SYSTEMD_USER_DIR", str(tmp_path / "units"))
    monkeypatch.setenv("HILBED_SCHEDULE_DIR", str(tmp_path / "state"))
    scenario = tmp_path / "nightly.yaml"
    shutil.copy(REPO / "scenarios" / "quickstart.yaml", scenario)
    base = synth.make_run(tmp_path / "runs", "base", seed=1)
    return {"tmp": tmp_path, "scenario": scenario, "base": base, "testbed": REPO / "testbed.yaml"}


def test_calendar_specs():
    assert sch.calendar_specs("daily", "04:30", None, None) == ("*-*-* 04:30:00", "30 4 * * *")
    assert sch.calendar_specs("hourly", "00:15", None, None) == ("*-*-* *:15:00", "15 * * * *")
    assert sch.calendar_specs("weekly", None, None, None) == ("Mon *-*-* 03:00:00", "0 3 * * 1")
    assert sch.calendar_specs(None, None, None, "*/30 2-5 * * 1-5")[1] == "*/30 2-5 * * 1-5"
    for bad in (("daily", "25:00", None, None), (None, None, None, "0 3 * *"), (None, None, None, "0 3 * * * rm")):
        with pytest.raises(sch.ScheduleError):
            sch.calendar_specs(*bad)
    if shutil.which("systemd-analyze"):
        with pytest.raises(sch.ScheduleError, match="bogus"):
            sch.calendar_specs(None, None, "bogus", None)


def test_systemd_install_list_remove(env, capsys):
    t = env["tmp"]
    rc = main(["schedule", "install", "nightly", "--scenario", str(env["scenario"]), "--baseline", str(env["base"]),
               "--testbed", str(env["testbed"]), "--backend", "systemd", "--every", "daily", "--at", "04:30"])
    assert rc == 0, capsys.readouterr().err
    timer = (t / "units" / "hilbed-nightly.timer").read_text()
    service = (t / "units" / "hilbed-nightly.service").read_text()
    assert "OnCalendar=*-*-* 04:30:00" in timer and "Persistent=true" in timer and "WantedBy=timers.target" in timer
    assert f"ExecStart={sys.executable} -m hilbed.orchestrator.cli schedule run nightly --state-dir {t / 'state'}" in service
    assert "Type=oneshot" in service and f"Environment=HILBED_SCHEDULE_DIR={t / 'state'}" in service
    log = (t / "systemctl.log").read_text().splitlines()
    assert log == ["--user daemon-reload", "--user enable --now hilbed-nightly.timer"]
    pinned = t / "state" / "nightly" / "baseline"
    assert (pinned / "trials.jsonl").read_bytes() == (env["base"] / "trials.jsonl").read_bytes()
    cfg = json.loads((t / "state" / "nightly" / "schedule.json").read_text())
    assert cfg["baseline"] == str(pinned) and cfg["scenario"] == str(env["scenario"].resolve())
    capsys.readouterr()
    assert main(["schedule", "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "nightly" and row["installed"] and row["when"] == "*-*-* 04:30:00" and row["runs"] == 0
    assert main(["schedule", "remove", "nightly"]) == 0
    assert not (t / "units" / "hilbed-nightly.timer").exists()
    assert "--user disable --now hilbed-nightly.timer" in (t / "systemctl.log").read_text()
    assert (t / "state" / "nightly" / "schedule.removed.json").exists()
    assert main(["schedule", "remove", "nightly"]) == 2


def test_cron_install_keeps_other_entries(env):
    t = env["tmp"]
    (t / "crontab.txt").write_text("MAILTO=lab@example.org\n15 1 * * * /usr/bin/backup\n")
    for _ in range(2):  # installing twice replaces, never duplicates
        sch.install("nightly", env["scenario"], env["base"], testbed=env["testbed"], backend="cron", cron="0 2 * * *")
    lines = (t / "crontab.txt").read_text().splitlines()
    assert lines[:2] == ["MAILTO=lab@example.org", "15 1 * * * /usr/bin/backup"]
    (ours,) = [ln for ln in lines if "hilbed-schedule:nightly" in ln]
    assert ours.startswith("0 2 * * * cd ") and "-m hilbed.orchestrator.cli schedule run nightly" in ours
    assert ours.endswith("# hilbed-schedule:nightly") and "cron.log" in ours
    assert sch.list_schedules()[0]["installed"]
    sch.remove("nightly", purge=True)
    assert (t / "crontab.txt").read_text().splitlines() == lines[:2]
    assert not (t / "state" / "nightly").exists()


def test_scheduled_runs_history_and_latest(env):
    t = env["tmp"]
    sch.install("nightly", env["scenario"], env["base"], testbed=env["testbed"], backend="systemd", enable=False)
    made = iter([dict(seed=1), dict(seed=1, worse={("jpeg-q80", "r64-none"): 0.8})])

    def fake_runner(s: sch.Schedule, results: Path) -> Path:
        """Stands in for Runner.execute: writes a run directory with its (tables-only) report."""
        n = len(list(results.iterdir()))
        run = synth.make_run(results, f"synthetic-run{n}", **next(made))
        build_report([run], figures=False)
        return run

    rc, entry = sch.run_scheduled("nightly", execute=fake_runner)
    assert rc == 0 and entry["verdict"] == "ok" and entry["regressions"] == []
    sdir = t / "state" / "nightly"
    assert (sdir / "latest").resolve() == (sdir / "runs" / "synthetic-run0" / "report").resolve()
    assert (sdir / "latest" / "compare.md").exists() and (sdir / "latest" / "index.html").exists()
    rc, entry = sch.run_scheduled("nightly", execute=fake_runner)
    assert rc == 1 and entry["verdict"] == "regression"
    assert [(r["codec_label"], r["metric"]) for r in entry["regressions"]] == [("jpeg-q80", "top1_drop_points")]
    assert (sdir / "latest-run").resolve() == (sdir / "runs" / "synthetic-run1").resolve()

    def broken(s, results):
        raise RuntimeError("edge node unreachable")

    rc, entry = sch.run_scheduled("nightly", execute=broken)
    assert rc == 1 and entry["verdict"] == "run-failed" and "unreachable" in entry["error"]
    hist = [json.loads(ln) for ln in (sdir / "history.jsonl").read_text().splitlines()]
    assert [h["verdict"] for h in hist] == ["ok", "regression", "run-failed"]
    assert (sdir / "latest").resolve().parent.name == "synthetic-run1"  # a failed run does not move the link
    (row,) = sch.list_schedules()
    assert row["runs"] == 3 and row["last_verdict"] == "run-failed" and row["installed"]  # units written


def test_install_rejects_bad_input(env):
    with pytest.raises(sch.ScheduleError, match="not a run directory"):
        sch.install("x", env["scenario"], env["tmp"], testbed=env["testbed"], backend="cron")
    with pytest.raises(sch.ScheduleError, match="name"):
        sch.install("bad name", env["scenario"], env["base"], testbed=env["testbed"], backend="cron")
    assert main(["schedule", "install", "x", "--scenario", "nope.yaml", "--baseline", str(env["base"]),
                 "--backend", "cron"]) == 2
