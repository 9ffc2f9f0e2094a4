"""Open an HTML report in headless Chromium (Debian's package) and ask it which images loaded."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Debian's names: the full browser (`chromium`) or the smaller headless-only build.
NAMES = ("chromium", "chromium-headless-shell", "chromium-browser", "google-chrome")
# No network, no first-run or background work: only the page itself is loaded.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
]
MARKER = "pawflow-image-check"
# Runs after every image has loaded or failed (the load event), and writes what it saw into the page.
PROBE = f"""<script>
window.addEventListener("load", () => {{
  const seen = Array.from(document.images, (im) => [im.alt, im.complete && im.naturalWidth > 0]);
  const out = document.createElement("pre");
  out.id = "{MARKER}";
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
}});
</script>"""


def chromium() -> str:
    """The browser's path; the test is skipped, saying why, where none is installed."""
    for name in NAMES:
        if path := shutil.which(name):
            return path
    pytest.skip(
        f"headless Chromium not found (looked for {', '.join(NAMES)} on PATH): install it with "
        "`apt-get install -y chromium` (.ci/run does so when it can)"
    )


def image_status(page: Path, timeout_s: float = 60) -> list[tuple[str, bool]]:
    """(alt, loaded) for every <img> of the page, as Chromium renders it from disk (file://)."""
    with tempfile.TemporaryDirectory(prefix="pawflow-chromium-") as tmp:
        probed = Path(tmp) / page.name
        text = page.read_text(encoding="utf-8")
        assert "</body>" in text, f"{page} has no </body>"
        probed.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
        out = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={Path(tmp) / 'profile'}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probed.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    found = re.search(rf'<pre id="{MARKER}">(.*?)</pre>', out.stdout, re.S)
    assert found, f"the page's load event never ran: {out.stdout[:500]!r} {out.stderr[-1000:]!r}"
    return [(alt, ok) for alt, ok in json.loads(html.unescape(found.group(1)))]


# Every request off this page fails: a proxy that does not exist, and no name resolves.
NO_NETWORK = [
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
CHART_MARKER = "pawflow-chart-check"
# Put first in <head>: records every script error and rejected promise, then (after the load event and
# the charts' asynchronous drawing) which top-level chart divs hold an SVG or a canvas.
CHART_PROBE = f"""<script>
window.pawflowErrors = [];
window.addEventListener("error", (e) => window.pawflowErrors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", (e) => window.pawflowErrors.push(String(e.reason)));
window.addEventListener("load", () => setTimeout(() => {{
  const charts = Array.from(document.querySelectorAll("body div[id]"), (d) =>
    [d.id, d.querySelector("svg, canvas") !== null]);
  const out = document.createElement("pre");
  out.id = "{CHART_MARKER}";
  out.textContent = JSON.stringify({{charts: charts, errors: window.pawflowErrors}});
  document.body.appendChild(out);
}}, 2000));
</script>"""


def chart_status(page: Path, timeout_s: float = 90) -> tuple[list[tuple[str, bool]], list[str]]:
    """(div id, drew an SVG or canvas) for every chart div of the page, and the script errors met, as
    Chromium renders it from disk with every network request failing."""
    with tempfile.TemporaryDirectory(prefix="pawflow-chromium-") as tmp:
        probed = Path(tmp) / page.name
        text = page.read_text(encoding="utf-8")
        assert "<head>" in text, f"{page} has no <head>"
        probed.write_text(text.replace("<head>", "<head>" + CHART_PROBE, 1), encoding="utf-8")
        out = subprocess.run(
            [
                chromium(),
                *FLAGS,
                *NO_NETWORK,
                f"--user-data-dir={Path(tmp) / 'profile'}",
                "--virtual-time-budget=15000",
                "--dump-dom",
                probed.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    found = re.search(rf'<pre id="{CHART_MARKER}">(.*?)</pre>', out.stdout, re.S)
    assert found, f"the page's load event never ran: {out.stdout[:500]!r} {out.stderr[-1000:]!r}"
    seen = json.loads(html.unescape(found.group(1)))
    return [(name, drew) for name, drew in seen["charts"]], seen["errors"]


def dom_of(url: str, timeout_s: float = 90, budget_ms: int = 15000) -> str:
    """The page's DOM after its scripts ran (a live page, e.g. the Prefect UI on a loopback port)."""
    with tempfile.TemporaryDirectory(prefix="pawflow-chromium-") as tmp:
        out = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={Path(tmp) / 'profile'}",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout
