"""`hilbed eval-codecs` hygiene: threads, progress off a terminal, partial results and resume, escaped
labels, fit defaults vs the documented ranges, shuffled order for learning codecs, model fingerprints."""

from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np
import pytest

from hilbed.nodes.codecs.base import Codec, Encoded
from hilbed.nodes.codecs.fitting import evaluate as E
from hilbed.orchestrator.cli.main import main

SWEEP = ["jpeg:quality=20,50,80"]


@pytest.fixture
def keep_threads(monkeypatch):
    """eval-codecs sets process-wide thread counts: put them back afterwards."""
    import torch
    before = torch.get_num_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "x"))  # restored (or removed) at teardown
    monkeypatch.delenv("HILBED_FIT_THREADS", raising=False)
    yield
    torch.set_num_threads(before)


def _spy(monkeypatch, on_call=None):
    """Wrap evaluate_variant; returns the list of (label, torch threads) it was called with."""
    import torch
    real = E.evaluate_variant
    calls = []

    def spy(v, *a, **kw):
        calls.append((v.label, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")))
        if on_call:
            on_call(len(calls))
        return real(v, *a, **kw)
    monkeypatch.setattr(E, "evaluate_variant", spy)
    return calls


def _eval(out, *extra):
    return main(["eval-codecs", "--dataset", "synthetic", "--codecs", *SWEEP, "--n", "16", "--out", str(out),
                 "--json", *extra])


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "encode_ms"} for r in rows]


# ------------------------------------------------------------ threads ---

def test_threads_option_limits_torch_inside_the_evaluation(tmp_path, synthetic_model, keep_threads, monkeypatch,
                                                           capsys):
    calls = _spy(monkeypatch)
    assert _eval(tmp_path / "a", "--threads", "3") == 0
    assert {c[1] for c in calls} == {3} and {c[2] for c in calls} == {"3"}
    assert json.loads(capsys.readouterr().out)["meta"]["threads"] == 3
    calls.clear()
    assert _eval(tmp_path / "b") == 0  # default: one thread (shared machines)
    assert {c[1] for c in calls} == {1} and {c[2] for c in calls} == {"1"}


# ---------------------------------------------------------- progress ---

def test_plain_progress_lines_off_a_terminal(tmp_path, synthetic_model, keep_threads, capsys):
    rc = main(["eval-codecs", "--dataset", "synthetic", "--codecs", "jpeg:quality=20,80", "--n", "16", "--batch", "8",
               "--out", str(tmp_path / "p"), "--progress-interval", "0"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "eval-codecs: 8/32 images (25 %)" in err and "eval-codecs: 32/32 images (100 %)" in err
    assert "jpeg(quality=80) done" in err
    rc = main(["eval-codecs", "--dataset", "synthetic", "--codecs", "jpeg:quality=20", "--n", "16",
               "--out", str(tmp_path / "q"), "--progress-interval", "-1"])
    assert rc == 0 and "eval-codecs:" not in capsys.readouterr().err


def test_fit_progress_off_a_terminal_is_throttled_plain_lines(capsys):
    from rich.console import Console

    from hilbed.orchestrator.cli.codecs import _progress_cb
    prog, cb = _progress_cb(Console(file=open(os.devnull, "w"), force_terminal=False), quiet=False, interval=3600)
    assert prog is None
    for k in range(5):  # the first line and the last (100 %) only: the rest fall inside the interval
        cb(f"stage 1 step {k}/4", k / 4)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fit: ")]
    assert len(lines) == 2 and "[  0.0%] stage 1 step 0/4" in lines[0] and "[100.0%] stage 1 step 4/4" in lines[1]
    assert _progress_cb(Console(file=open(os.devnull, "w")), quiet=True) == (None, None)


# --------------------------------------------------- partial + resume ---

def test_killed_run_keeps_partial_rows_and_resume_matches_an_uninterrupted_run(tmp_path, synthetic_model,
                                                                               keep_threads, monkeypatch, capsys):
    assert _eval(tmp_path / "full") == 0
    full = json.loads(capsys.readouterr().out)["rows"]

    class Killed(BaseException):
        pass

    def kill_on_second(k):
        if k == 2:
            raise Killed
    with monkeypatch.context() as m:
        _spy(m, kill_on_second)
        with pytest.raises(Killed):
            _eval(tmp_path / "cut")
    lines = [json.loads(x) for x in (tmp_path / "cut" / E.PARTIAL).read_text().splitlines()]
    assert "header" in lines[0] and [json.loads(d["key"])["label"] for d in lines[1:]] == ["jpeg(quality=20)"]
    assert not (tmp_path / "cut" / "results.json").exists()
    # a kill in the middle of a write leaves a torn line: it is dropped
    with open(tmp_path / "cut" / E.PARTIAL, "a") as f:
        f.write('{"key": "tor')
    capsys.readouterr()

    assert _eval(tmp_path / "cut") == 2  # results of an earlier run: not overwritten without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["eval-codecs", "--dataset", "synthetic", "--codecs", *SWEEP, "--n", "8", "--out",
                 str(tmp_path / "cut"), "--resume"]) == 2  # other settings
    assert "n 16 -> 8" in capsys.readouterr().err

    calls = _spy(monkeypatch)
    assert _eval(tmp_path / "cut", "--resume") == 0
    resumed = json.loads(capsys.readouterr().out)["rows"]
    assert [c[0] for c in calls] == ["jpeg(quality=50)", "jpeg(quality=80)"]
    assert _strip(resumed) == _strip(full)
    csv_full = (tmp_path / "full" / "results.csv").read_text().splitlines()
    csv_res = (tmp_path / "cut" / "results.csv").read_text().splitlines()
    enc = csv_full[0].split(",").index("encode_ms")
    assert [r.split(",")[:enc] for r in csv_res] == [r.split(",")[:enc] for r in csv_full]
    # everything done: a second resume evaluates nothing
    calls.clear()
    assert _eval(tmp_path / "cut", "--resume") == 0 and calls == []
    assert _strip(json.loads(capsys.readouterr().out)["rows"]) == _strip(full)


def test_resume_needs_an_output_dir(capsys):
    assert main(["eval-codecs", "--codecs", "png", "--resume"]) == 2
    assert "--out" in capsys.readouterr().err


# ------------------------------------------------------------ labels ---

def test_labels_with_brackets_show_in_the_table(tmp_path, synthetic_model, keep_threads, capsys):
    rc = main(["eval-codecs", "--dataset", "synthetic", "--codecs", "jpeg:quality=50@[autojpeg-x]",
               "jpeg:quality=20,80@j", "--n", "8", "--out", str(tmp_path / "l")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[autojpeg-x]" in out and "j[20]" in out and "j[80]" in out


# ------------------------------------------------------- fit defaults ---

def _defaults(family: str) -> argparse.Namespace:
    from hilbed.nodes.codecs.fitting import fit_module
    p = argparse.ArgumentParser()
    fit_module(family).fit_cli(p)
    return p.parse_args([])


def test_fit_defaults_are_the_documented_ranges(repo):
    doc = (repo / "docs" / "codecs.md").read_text()
    measured = set()
    for line in doc.splitlines():
        if line.startswith("| AutoJPEG S = ") and "abbreviated" not in line:
            measured |= {float(s) for s in line.split("|")[1].split("=")[1].split("/")}
    ratios = [float(r) for r in _defaults("autojpeg").ratios.split(",")]
    assert set(ratios) == measured and min(ratios) >= 0.06
    budgets = {float(b) for b in _defaults("grace").budgets.split(",")}
    documented = {float(b) for b in re.search(r"\| GRACE G-YUV budget ([\d. /]+) \|", doc).group(1).split("/")}
    assert budgets == documented
    assert "`hilbed fit autojpeg`: 0.06, 0.09, 0.12, 0.15, 0.18, 0.22" in doc


# ------------------------------------------ learning codecs: the order ---

class _Recorder(Codec):
    """Sends raw pixels; remembers the labels of the replies it is given."""

    name = "recorder"
    learns_from_feedback = True
    seen: list[int] = []

    def encode(self, image):
        return Encoded([image.tobytes()])

    def decode(self, chunks, total):
        return np.frombuffer(chunks[0], np.uint8).reshape(4, 4, 3)

    def feedback(self, image, encoded, record, label=None):
        _Recorder.seen.append(int(label))


class _Uniform:
    classes = list(range(4))

    def predict(self, x):
        return np.full((len(x), 4), 0.25)


def _order(monkeypatch, seed, learns=True):
    monkeypatch.setattr(_Recorder, "learns_from_feedback", learns)
    monkeypatch.setattr(E, "make_codec", lambda name, params: _Recorder())
    x = np.zeros((40, 4, 4, 3), np.uint8)
    y = np.repeat(np.arange(4), 10)  # class order, as an ImageFolder lists its files
    x[:, 0, 0, 0] = np.arange(40)
    _Recorder.seen = []
    row = E.evaluate_variant(E.Variant("recorder"), x, y, _Uniform(), batch=8, feedback_batch=4, seed=seed)
    assert row["n"] == 40
    return list(_Recorder.seen)


def test_learning_codecs_see_a_seeded_shuffle_not_class_order(monkeypatch):
    a, b, c = _order(monkeypatch, 0), _order(monkeypatch, 0), _order(monkeypatch, 1)
    ordered = sorted(a)
    assert sorted(a) == sorted(c) == list(np.repeat(np.arange(4), 10))
    assert a != ordered and a == b and a != c
    # the first ten replies are not all one class (class order would give ten 0s)
    assert len(set(a[:10])) > 1
    assert _order(monkeypatch, None) == ordered


# --------------------------------------------------- model fingerprint ---

def test_warns_when_an_artifact_was_fitted_for_another_model(tmp_path, synthetic_model, keep_threads, capsys):
    assert main(["fit", "grace", "--probe-images", "16", "--store", str(tmp_path / "st"), "--json"]) == 0
    (aid,) = json.loads(capsys.readouterr().out)["artifacts"]
    ev = ["eval-codecs", "--codecs", f"grace:artifact={aid}:budget=0.3", "jpeg:quality=50", "--n", "8",
          "--store", str(tmp_path / "st"), "--json"]
    assert main([*ev, "--out", str(tmp_path / "ok")]) == 0
    cap = capsys.readouterr()
    assert "warning" not in cap.err
    assert all(r["model_mismatch"] == "" for r in json.loads(cap.out)["rows"])

    meta_path = tmp_path / "st" / aid / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model_fingerprint"] = "cifar-resnet:resnet56-other.th:0123456789abcdef"
    meta_path.write_text(json.dumps(meta))
    assert main([*ev, "--out", str(tmp_path / "bad")]) == 0
    cap = capsys.readouterr()
    warn = [ln for ln in cap.err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and aid in warn[0] and "resnet56-other.th" in warn[0]
    doc = json.loads(cap.out)
    grace, jpeg = doc["rows"]
    assert "resnet56-other.th" in grace["model_mismatch"] and jpeg["model_mismatch"] == ""
    assert doc["meta"]["model_fingerprint"].startswith("synthetic-cnn:")
    csv = (tmp_path / "bad" / "results.csv").read_text().splitlines()
    assert csv[0].endswith(",model_mismatch") and "resnet56-other.th" in csv[1] and csv[2].endswith(',""')
