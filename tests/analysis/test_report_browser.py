"""The HTML report in a real headless Chromium: no console errors, every image decoded, a screenshot.

A copy of the page gets a small probe script that records JS errors, failed
resources and console.error calls, and after `load` writes how many <img>
are complete with a natural width into the DOM, which --dump-dom returns.
Chromium's own console log (--enable-logging=stderr) is checked as well.
Skipped when Chromium is not installed (`apt-get install chromium`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "analysis"
sys.path.insert(0, str(DATA))
import synth  # noqa: E402

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"),
              pytest.mark.slow]  # starts headless Chromium: `make test` runs it, `make test-fast` does not

PROBE = """<script>
window.__errs = [];
window.addEventListener('error', function (e) {
  window.__errs.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href)) || 'resource'));
}, true);
(function () { var ce = console.error; console.error = function () {
  window.__errs.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); }; })();
window.addEventListener('load', function () {
  var imgs = [].slice.call(document.images);
  var res = {images: imgs.length, errors: window.__errs,
             loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length};
  var pre = document.createElement('pre'); pre.id = 'hilbed-check'; pre.textContent = JSON.stringify(res);
  document.body.appendChild(pre);
});
</script>"""


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120)


def probe(page: Path, tmp: Path) -> tuple[dict, list[str]]:
    """Load ``page`` with the probe; returns (probe result, console lines chromium logged)."""
    html = page.read_text(encoding="utf-8")
    check = page.with_name("browser-check.html")
    check.write_text(html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    p = chromium(["--virtual-time-budget=10000", "--dump-dom", check.as_uri()], tmp)
    m = re.search(r'<pre id="hilbed-check">(.*?)</pre>', p.stdout, re.S)
    assert m, f"probe result missing from the DOM (chromium rc {p.returncode}): {p.stderr[-2000:]}"
    console = [ln for ln in p.stderr.splitlines() if ":CONSOLE" in ln]
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&")), console


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return synth.cached_report(tmp_path_factory, n_images=20)


def test_report_renders_without_errors(report, tmp_path):
    res, console = probe(report, tmp_path)
    assert res["errors"] == [] and console == []
    assert res["images"] == 9 and res["loaded"] == 9  # every figure, accuracy vs energy included


def test_probe_catches_broken_images_and_console_errors(tmp_path):
    """The check above can fail: a broken image and a console error are both seen."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><html><head><meta charset="utf-8"></head><body>'
                    '<img src="data:image/png;base64,AAAA"><img src="missing.png">'
                    "<script>console.error('boom')</script></body></html>", encoding="utf-8")
    res, console = probe(page, tmp_path)
    assert res["images"] == 2 and res["loaded"] == 0
    assert any("boom" in e for e in res["errors"]) and any("missing.png" in e for e in res["errors"])
    assert any("boom" in ln for ln in console)


def test_screenshot(report, tmp_path):
    from PIL import Image
    shot = tmp_path / "report.png"
    chromium(["--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,4000", "--virtual-time-budget=10000",
              report.as_uri()], tmp_path)
    img = Image.open(shot)
    assert img.size == (1280, 4000)
    colours = img.convert("RGB").resize((160, 500)).getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text and figures, not a blank page
