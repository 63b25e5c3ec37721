"""Command-line polish: shell completion, a quiet broken pipe, `report` of a missing directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hilbed.orchestrator.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"
CLI = [sys.executable, "-m", "hilbed.orchestrator.cli"]


def _subcommands() -> list[str]:
    import argparse
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


# ------------------------------------------------------------ completion ---

@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_prints_a_script_naming_every_subcommand(capsys, shell):
    pytest.importorskip("shtab")
    rc = main(["completion", shell])
    out = capsys.readouterr()
    assert rc == 0 and out.err == ""
    names = _subcommands()
    assert {"run", "plan", "report", "compare", "export", "completion"} <= set(names)
    for name in names:
        assert name in out.out, name
    # nested sub-commands and their options come along (the script is built from the real table)
    assert "mlflow" in out.out and "--tracking-uri" in out.out and "--accept-changed-inputs" in out.out
    if shell == "bash":
        assert "complete " in out.out and "hilbed" in out.out
    else:
        assert out.out.startswith("#compdef hilbed")


def test_completion_script_is_valid_bash(tmp_path, capsys):
    pytest.importorskip("shtab")
    bash = subprocess.run(["bash", "--version"], capture_output=True).returncode == 0
    if not bash:
        pytest.skip("no bash")
    main(["completion", "bash"])
    script = tmp_path / "hilbed.bash"
    script.write_text(capsys.readouterr().out)
    r = subprocess.run(["bash", "-c", f"source {script} && complete -p hilbed"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "hilbed" in r.stdout


def test_completion_without_shtab_one_line_exit_2(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "shtab", None)
    rc = main(["completion", "bash"])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    assert out.err.count("\n") == 1 and "pip install 'hilbed[completion]'" in out.err


# ----------------------------------------------------------- broken pipe ---

def _closed_reader(*args: str) -> tuple[int, str]:
    """Run the CLI with stdout a pipe whose reader is gone before it writes (as `| head` that has its line)."""
    r, w = os.pipe()
    p = subprocess.Popen([*CLI, *args], stdout=w, stderr=subprocess.PIPE, cwd=REPO)
    os.close(w)
    os.close(r)
    _, err = p.communicate(timeout=120)
    return p.returncode, err.decode()


@pytest.mark.parametrize("extra", [["--json"], []], ids=["json", "table"])
def test_broken_pipe_is_quiet(extra):
    rc, err = _closed_reader("plan", str(QUICKSTART), *extra)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert err == ""
    assert rc == 141


def test_head_reads_one_line_then_closes(tmp_path):
    """The real thing: `| head -1` takes a line and goes; nothing on stderr whatever the timing."""
    cmd = " ".join(f"'{a}'" for a in [*CLI, "plan", str(QUICKSTART), "--json"])
    r = subprocess.run(["bash", "-c", f"{cmd} 2>'{tmp_path}/err.txt' | head -1"], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.stdout == "{\n"
    assert (tmp_path / "err.txt").read_text() == ""


# ---------------------------------------------------------------- report ---

def test_report_of_a_missing_directory(capsys, tmp_path):
    rc = main(["report", "/nope"])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    assert out.err == "hilbed report: /nope: no such directory\n"
    rc = main(["report", str(tmp_path / "a" / "b"), "--json"])
    out = capsys.readouterr()
    assert rc == 2 and out.out == ""
    assert out.err == f"hilbed report: {tmp_path / 'a' / 'b'}: no such directory\n"


def test_report_of_a_file_is_not_a_directory(capsys, tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("x")
    rc = main(["report", str(f)])
    assert rc == 2
    assert capsys.readouterr().err == f"hilbed report: {f}: not a directory\n"
