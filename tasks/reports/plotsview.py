"""The page `dvc plots show` writes, made to work offline: DVC's own HTML loads Vega, Vega-Lite and
vega-embed from a CDN, so on a machine without internet (or in an offline browser) it is blank.

`.dvc/plots-offline.html` is DVC's HTML template (`plots.html_template` in .dvc/config) with the three
libraries inlined: the bundle vl-convert-python (a pinned dev dependency) builds, with no npm and no
network. The template is committed, so `dvc plots show` works in any clone without a build step;
`make plots-template` rebuilds it, and tests/test_plotsview.py checks that the committed file is what
the pinned packages build (and that its charts draw in headless Chromium with the network off).

The template has no `{scripts}` placeholder: DVC puts its CDN <script> tags there, and they are left out.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.core.fileio import write_bytes

TEMPLATE = Path(__file__).resolve().parents[2] / ".dvc" / "plots-offline.html"
# The Vega-Lite major DVC's plot templates are written for ($schema .../vega-lite/v5.json): vega-embed
# warns when the library's major differs from the spec's.
VEGA_LITE = "5.21"
# DVC fills these in (dvc_render.html.HTML.embed): the bundle must not contain them.
PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>pawflow: dvc plots</title>
    <!-- {versions}; built by `make plots-template` (tasks/reports/plotsview.py). BSD-3-Clause licensed. -->
    <script>
{bundle}
    </script>
    <style>
        body { font-family: sans-serif; margin: 1.5em; }
        table { border-spacing: 15px; }
        .vega-embed { margin: 1em 0; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def versions() -> str:
    """The library versions the bundle holds (vl-convert pins them)."""
    import vl_convert as vlc

    return (
        f"Vega {vlc.get_vega_version()}, Vega-Lite {VEGA_LITE}, vega-embed {vlc.get_vega_embed_version()} "
        f"(vl-convert-python bundle)"
    )


def build() -> str:
    """The template's text: DVC's page with the libraries inlined (a classic script that sets
    window.vegaEmbed, window.vega and window.vegaLite before DVC's inline calls run)."""
    import vl_convert as vlc

    bundle = vlc.javascript_bundle(vl_version=VEGA_LITE)  # type: ignore[call-arg]  # stub wrong: snippet is optional
    clash = [p for p in (*PLACEHOLDERS, "</script") if p in bundle]
    if clash:
        raise RuntimeError(f"the Vega bundle contains {clash}: DVC would fill it in or the page would break")
    # Plain replacements (not str.format): the page's CSS braces and DVC's placeholders stay as they are.
    return PAGE.replace("{versions}", versions()).replace("{bundle}", bundle)


def main() -> int:
    write_bytes(TEMPLATE, build().encode("utf-8"))
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size:,} bytes): {versions()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
