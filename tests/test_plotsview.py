"""tasks/reports/plotsview.py: the committed template for `dvc plots show` is what the pinned packages build
(Vega, Vega-Lite and vega-embed inlined; no CDN), and DVC uses it. That its charts draw in headless
Chromium with the network off is checked where the project's plots are drawn (tests/test_dvc_yaml.py)."""

from __future__ import annotations

import configparser
from pathlib import Path

from tasks.reports import plotsview

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
