"""README.md against the files it describes: its first screen, its make targets, its pictures."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FIRST_SCREEN = README.split("\n## ", 1)[0]  # the title, the two commands and the prerequisites


def test_first_screen_names_the_prerequisites_and_what_make_run_writes_outside_the_clone():
    python = re.search(r'requires-python = ">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"Python {python}" in FIRST_SCREEN
    source = yaml.safe_load((ROOT / "params.yaml").read_text())["ingest"]["source"]
    assert f"`{source}`" in FIRST_SCREEN  # where the photos are expected, as params.yaml says
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    remote = config["core"]["remote"]
    url = config[f"'remote \"{remote}\"'"]["url"]  # relative to .dvc/: one level up is the clone
    outside = Path(url).relative_to("..")
    assert f"`{outside}`" in FIRST_SCREEN and "outside the clone" in FIRST_SCREEN


def test_every_make_target_named_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", README))
    assert named and named <= targets, named - targets


def test_every_picture_is_shown_and_every_picture_shown_exists():
    shown = set(re.findall(r"!\[[^\]]*\]\((docs/[^)]+)\)", README))
    assert shown == {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.png")}
    assert {"docs/training-progress.png", "docs/evaluation-report.png"} <= shown
    assert all((ROOT / p).stat().st_size < 300_000 for p in shown)


def test_the_full_collection_recipes_are_valid_params():
    """README 'Full-collection recipe': each YAML block, merged into params.yaml as the README says to,
    is a valid params file (a renamed or misspelt key in the documentation fails here)."""
    from tasks.params import merged, parse_params

    section = README.split("### Full-collection recipe", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 2  # this machine, one GPU
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    for block in blocks:
        recipe = yaml.safe_load(block)
        assert recipe and set(recipe) <= set(shipped), recipe
        params = parse_params(merged(shipped, recipe))
        assert params.model_dump(mode="json") != parse_params(shipped).model_dump(mode="json")
