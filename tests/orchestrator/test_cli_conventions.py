"""The command line's conventions: ``--version``; ``--json`` is a switch that puts exactly one JSON
document on stdout; ``--output FILE`` writes a file; bad input exits 2 with one line on stderr."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from hilbed.orchestrator.cli.main import build_parser, main
from hilbed.orchestrator.cli.output import dumps, emit

REPO = Path(__file__).resolve().parents[2]
TINY_RUN = REPO / "tests" / "data" / "analysis" / "tiny-run"
LOADED_RUN = REPO / "tests" / "data" / "analysis" / "loaded-run"
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"
TESTBED = REPO / "testbed.yaml"

TINY_SCENARIO = """\
name: tiny-cli
workload: {images_per_trial: 4, image_size: 32}
stream: {period_ms: 50}
codecs:
  - {codec: jpeg, params: {quality: 60}, label: jpeg-q60}
conditions:
  - name: direct
    link: {kind: direct}
"""


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def cli_json(capsys, *args, rc: int = 0):
    code, out, err = cli(capsys, *args, "--json")
    assert code == rc, err
    return json.loads(out)  # the whole of stdout is one JSON document


# ---------------------------------------------------------------- helper ---

def test_emit_writes_sorted_strict_json_only_with_the_switch(capsys):
    class A:
        json = True
    data = {"b": float("nan"), "a": Path("/x"), "c": [1, float("inf")]}
    emit(A(), data, lambda d: print("table"))
    out = capsys.readouterr().out
    assert json.loads(out) == {"a": "/x", "b": None, "c": [1, None]}
    assert out.index('"a"') < out.index('"b"')  # stable order
    A.json = False
    emit(A(), data, lambda d: print("table"))
    assert capsys.readouterr().out == "table\n"
    np = pytest.importorskip("numpy")
    assert json.loads(dumps({"n": np.int64(3), "x": np.float64(math.nan), "v": np.arange(2)})) == \
        {"n": 3, "x": None, "v": [0, 1]}


# --------------------------------------------------------------- version ---

def test_version_prints_name_and_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as ex:
        main(["--version"])
    assert ex.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    import importlib.metadata as md
    assert lines[0] == f"hilbed {md.version('hilbed')}"
    assert lines[1].startswith("Python ")


def test_version_through_the_console_script():
    exe = Path(sys.executable).with_name("hilbed")
    if not exe.exists():
        pytest.skip("no hilbed console script next to this Python")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("hilbed ")


# ------------------------------------------------------ validate and plan ---

def test_validate_json(capsys):
    d = cli_json(capsys, "validate", QUICKSTART, TESTBED)
    assert d["ok"] is True and [f["kind"] for f in d["files"]] == ["scenario", "testbed"]
    assert all(f["error"] is None for f in d["files"])


def test_validate_json_bad_file_exit_2_one_line_on_stderr(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbogus: 1\n")
    rc, out, err = cli(capsys, "validate", QUICKSTART, bad, "--json")
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and str(bad) in err
    d = json.loads(out)
    assert d["ok"] is False and [f["ok"] for f in d["files"]] == [True, False]
    assert d["files"][1]["error"] == err.strip()


def test_plan_json_matrix(capsys):
    d = cli_json(capsys, "plan", QUICKSTART, "--testbed", TESTBED)
    assert d["n_trials"] == len(d["trials"]) == d["codec_variants"] * d["conditions"] * d["repetitions"]
    assert d["n_images"] == sum(t["images"] for t in d["trials"])
    t0 = d["trials"][0]
    assert {"id", "codec", "condition", "link", "jamming", "deadline_ms", "repetition", "images"} <= set(t0)
    assert t0["link"]["kind"] and d["estimated_s"] > 0


def test_plan_bad_input_exit_2_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbogus: 1\n")
    rc, out, err = cli(capsys, "plan", bad, "--testbed", TESTBED, "--json")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and str(bad) in err


# ---------------------------------------------------------------- trace ---

def _trace(tmp_path) -> Path:
    p = tmp_path / "t.up"
    p.write_text("\n".join(["500"] * 10 + ["1500"] * 29 + ["2000"]) + "\n")
    return p


def test_trace_info_json(tmp_path, capsys):
    d = cli_json(capsys, "trace", "info", _trace(tmp_path))
    assert d["format"] == "mahimahi" and d["duration_s"] == 2.0 and d["findings"] == []


def test_trace_lint_json_keeps_exit_codes(tmp_path, capsys):
    good = _trace(tmp_path)
    d = cli_json(capsys, "trace", "lint", good)
    assert d["ok"] is True and d["files"][0]["status"] == "ok"
    warn = tmp_path / "w.up"
    warn.write_text("500000\n")
    d = cli_json(capsys, "trace", "lint", good, warn, rc=1)
    assert [f["status"] for f in d["files"]] == ["ok", "warning"] and d["exit"] == 1
    crlf = tmp_path / "win.up"
    crlf.write_bytes(b"1\r\n2\r\n3\r\n")
    rc, out, err = cli(capsys, "trace", "lint", crlf, "--json")
    assert rc == 2 and json.loads(out)["files"][0]["status"] == "error" and f"{crlf}:1: error:" in err


# ------------------------------------------------------ report / compare ---

def test_report_json(tmp_path, capsys):
    d = cli_json(capsys, "report", TINY_RUN, "-o", tmp_path / "rep", "--no-figures")
    assert Path(d["report"]).exists() and Path(d["summary_md"]).exists()
    assert d["runs"] == [str(TINY_RUN)]


def test_report_bad_input_exit_2(tmp_path, capsys):
    rc, out, err = cli(capsys, "report", tmp_path / "missing", "--json")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_compare_json_switch_and_output_file(tmp_path, capsys):
    out_file = tmp_path / "cmp.json"
    d = cli_json(capsys, "compare", TINY_RUN, TINY_RUN, "--output", out_file)
    assert {"base", "run", "deltas", "regressions", "thresholds", "rule"} <= set(d)
    assert d["regressions"] == 0 and d["deltas"]
    assert json.loads(out_file.read_text()) == d
    # the switch before the positionals works too
    rc, out, _ = cli(capsys, "compare", "--json", TINY_RUN, TINY_RUN)
    assert rc == 0 and json.loads(out) == d


def test_compare_output_md_and_markdown_switch(tmp_path, capsys):
    md = tmp_path / "cmp.md"
    rc, out, _ = cli(capsys, "compare", TINY_RUN, TINY_RUN, "-o", md)
    assert rc == 0 and "|" in md.read_text()
    assert "{" not in out  # a table for people on stdout, not JSON
    rc, out, _ = cli(capsys, "compare", TINY_RUN, TINY_RUN, "--markdown")
    assert rc == 0 and out == md.read_text()


def test_compare_old_json_file_form_still_works_with_a_note(tmp_path, capsys):
    js = tmp_path / "old.json"
    md = tmp_path / "old.md"
    rc, out, err = cli(capsys, "compare", TINY_RUN, TINY_RUN, "--json", js, "--markdown", md)
    assert rc == 0
    assert "deprecated" in err and "--output" in err
    assert "deltas" in json.loads(js.read_text()) and "|" in md.read_text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)  # the old form keeps the table on stdout


def test_compare_bad_input_exit_2(tmp_path, capsys):
    rc, out, err = cli(capsys, "compare", TINY_RUN, tmp_path / "nope", "--json")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_schedule_list_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HILBED_SCHEDULE_DIR", str(tmp_path))
    assert cli_json(capsys, "schedule", "list", "--state-dir", tmp_path) == []


# ------------------------------------------------------------ the parser ---

def _subparsers(parser):
    import argparse
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            yield from a.choices.items()


@pytest.mark.parametrize("path", [("run",), ("resume",), ("plan",), ("validate",), ("report",), ("compare",),
                                  ("trace", "info"), ("trace", "lint"), ("eval-codecs",), ("schedule", "list")])
def test_json_is_a_switch_and_output_takes_a_path(path):
    p = build_parser()
    for name in path:
        p = dict(_subparsers(p))[name]
    acts = {s: a for a in p._actions for s in a.option_strings}
    assert "--json" in acts, path
    a = acts["--json"]
    assert a.nargs == 0 and a.const is True, path  # a switch, never a file
    if "--output" in acts:
        assert acts["--output"].nargs is None, path  # takes exactly one value


# ------------------------------------------------------------ eval-codecs ---

def test_eval_codecs_json_only_json_on_stdout(tmp_path, synthetic_model, capsys):
    d = cli_json(capsys, "eval-codecs", "--codecs", "jpeg:quality=30", "png", "--n", "8",
                 "--output", tmp_path / "ev")
    assert [r["label"] for r in d["rows"]] == ["jpeg(quality=30)", "png"]
    assert {"meta", "rows", "vs_jpeg", "files"} <= set(d) and d["meta"]["n"] == 8
    assert (tmp_path / "ev" / "results.json").exists()


def test_eval_codecs_bad_variant_exit_2(tmp_path, capsys):
    rc, out, err = cli(capsys, "eval-codecs", "--codecs", "no-such-codec", "--n", "4", "--out", tmp_path, "--json")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1


# -------------------------------------------------------------- run (slow) ---

@pytest.mark.slow
def test_run_and_resume_json_through_a_real_run(tmp_path, repo, synthetic_model):
    """`hilbed run --json` in a subprocess: stdout is exactly the outcome, progress went to stderr."""
    sc = tmp_path / "tiny.yaml"
    sc.write_text(TINY_SCENARIO)
    out_file = tmp_path / "outcome.json"
    cmd = [sys.executable, "-m", "hilbed.orchestrator.cli", "run", str(sc), "--testbed", str(repo / "testbed.yaml"),
           "--results-dir", str(tmp_path / "runs"), "--no-report", "--json", "--output", str(out_file)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["state"] == "complete" and d["ok"] is True and d["records"] == d["planned"] == 4
    assert Path(d["run_dir"]).is_dir() and d["run_id"] == Path(d["run_dir"]).name
    assert json.loads(out_file.read_text()) == d
    r = subprocess.run([sys.executable, "-m", "hilbed.orchestrator.cli", "resume", d["run_dir"], "--json"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["run_dir"] == d["run_dir"]


def test_fit_json_summary(tmp_path, synthetic_model, capsys):
    d = cli_json(capsys, "fit", "grace", "--probe-images", "16", "--store", tmp_path)
    assert d["family"] == "grace" and len(d["artifacts"]) == 1 and d["store"] == str(tmp_path.resolve())
    assert set(d["facts"]) == set(d["artifacts"]) and d["seconds"] >= 0


def test_legacy_argv_rewrites_only_old_file_values(tmp_path, capsys):
    from hilbed.orchestrator.cli.analysis import legacy_argv
    base, run = str(tmp_path), str(TINY_RUN)
    assert legacy_argv(["compare", "--json", base, run]) == ["compare", "--json", base, run]  # a run dir: a switch
    assert legacy_argv(["compare", base, run, "--json", "--by", "x"]) == ["compare", base, run, "--json", "--by", "x"]
    assert legacy_argv(["compare", base, run, "--json", "c.json", "--markdown=c.md"]) == \
        ["compare", base, run, "--json-file", "c.json", "--markdown-file", "c.md"]
    assert capsys.readouterr().err.count("deprecated") == 2
    assert legacy_argv(["report", base, "--json", "x"]) == ["report", base, "--json", "x"]  # only compare
