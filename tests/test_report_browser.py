"""Open report.html in headless Chromium: no JavaScript errors, every chart drawn, offline.

Chromium runs with networking features off and a throwaway profile; `--dump-dom` gives the DOM after
the scripts ran (report.js sets `<body data-charts-rendered=N>` once every `Plotly.newPlot` resolved)
and `--enable-logging=stderr` carries console messages and uncaught exceptions.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from test_report_html import HOSTILE_DIR, HOSTILE_OP, npu_report
from npu_advise.render import html

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0"]
# Console output chromium logs for page scripts: `...:INFO:CONSOLE:12] "message", source: file:///...`
# (older builds write `CONSOLE(12)`).
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)?\]\s*(.*)")


def open_in_chromium(page, tmp_path, action=("--dump-dom",)):
    """(stdout: the dumped DOM by default, console lines) of `page` after its scripts ran."""
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *action,
                           page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [m.group(1) for m in map(CONSOLE.search, proc.stderr.splitlines()) if m]
    return proc.stdout, console


def body_attrs(dom: str) -> dict:
    tag = re.search(r"<body([^>]*)>", dom).group(1)
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag))


@pytest.fixture(scope="module")
def gpu_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("browser") / HOSTILE_DIR / "report.html"
    html.write_report(npu_report(), out)       # 2 ranks: every chart kind the report has
    return out


def test_charts_render_without_errors(gpu_page, tmp_path):
    dom, console = open_in_chromium(gpu_page, tmp_path)
    specs = json.loads(re.search(r'id="npa-chart-data">(.*?)</script>', gpu_page.read_text(), re.S).group(1))
    attrs = body_attrs(dom)
    assert console == [], console
    assert "data-charts-error" not in attrs
    assert attrs.get("data-charts-expected") == str(len(specs)) == "5"
    assert attrs.get("data-charts-rendered") == "5"
    # plotly drew an SVG in every chart container
    for spec in specs:
        block = dom[dom.index(f'id="{spec["id"]}"'):]
        assert 'class="main-svg"' in block[:20000], spec["id"]
    # the hostile op name stayed text: no element was created from it
    assert HOSTILE_OP not in dom


def test_harness_sees_script_errors(tmp_path):
    """The checks above can fail: a page whose plotly bundle is missing reports it in the console."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><script type="application/json" id="npa-chart-data">[]</script>'
                    '<script type="application/json" id="npa-plotly-config">{}</script>'
                    f"<script>{html._assets()['js']}</script><script>undefinedFunction()</script></body></html>")
    dom, console = open_in_chromium(page, tmp_path)
    assert body_attrs(dom).get("data-charts-error") == "plotly.js did not load; charts are unavailable"
    assert any("plotly.js did not load" in c for c in console)
    assert any("undefinedFunction" in c for c in console)


def test_screenshot(gpu_page, tmp_path):
    """A full-width screenshot renders (kept under /tmp for a human look)."""
    shot = tmp_path / "report.png"
    _, console = open_in_chromium(gpu_page, tmp_path, action=["--hide-scrollbars", "--window-size=1280,2400",
                                                              f"--screenshot={shot}"])
    assert console == [], console
    assert shot.stat().st_size > 50_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
