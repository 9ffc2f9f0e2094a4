"""tasks/plotsview.py: `dvc plots show` draws every chart offline, from the committed template that
the pinned packages build (Vega, Vega-Lite and vega-embed inlined; no CDN)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import chart_status
from conftest import tool_env

from tasks import plotsview

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_template_is_what_the_pinned_packages_build():
    built = plotsview.build()
    assert plotsview.TEMPLATE.read_text(encoding="utf-8") == built, "run `make plots-template`"
    assert "{plot_divs}" in built and "{refresh_tag}" in built
    assert "{scripts}" not in built  # where DVC would put its CDN <script src=...> tags
    assert "<script src" not in built and "window.vegaEmbed=" in built


def test_dvc_uses_the_template():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    assert (ROOT / ".dvc" / config["plots"]["html_template"]) == plotsview.TEMPLATE  # relative to .dvc/
    assert "/dvc_plots/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.slow
def test_dvc_plots_show_draws_every_chart_with_the_network_off(tmp_path: Path):
    """The project's own plots (dvc.yaml `plots:`, the committed reports' files) through `dvc plots
    show`, opened in headless Chromium where every request off the page fails."""
    ws = tmp_path / "ws"
    for rel in ("dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots-offline.html", "reports/plots"):
        src, dest = ROOT / rel, ws / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest)
    shutil.copytree(ROOT / "reports/train/plots", ws / "reports/train/plots")
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show"], cwd=ws, env=tool_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    page = ws / "dvc_plots" / "index.html"
    charts, errors = chart_status(page)
    assert errors == []
    assert len(charts) == 8 and all(drew for _, drew in charts), charts  # 4 training curves + 4 test plots
