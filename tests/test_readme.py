"""README.md: its first screen (what pawflow is, the two commands, what they need), its length, its
pictures, and no figure typed by hand. tests/test_docs.py checks its links and names with the docs'."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FIRST_SCREEN = README.split("\n## ", 1)[0]  # the title, the two commands and the prerequisites
MAX_LINES = 250  # a reference a newcomer reads to the end; the rest lives in docs/
PYTHON = re.search(r'requires-python = ">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text()).group(1)


def test_first_screen_names_the_prerequisites_and_what_make_run_writes_outside_the_clone():
    assert f"Python {PYTHON}" in FIRST_SCREEN
    source = yaml.safe_load((ROOT / "params.yaml").read_text())["ingest"]["source"]
    assert f"`{source}`" in FIRST_SCREEN  # where the photos are expected, as params.yaml says
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    remote = config["core"]["remote"]
    url = config[f"'remote \"{remote}\"'"]["url"]  # relative to .dvc/: one level up is the clone
    outside = Path(url).relative_to("..")
    assert f"`{outside}`" in FIRST_SCREEN and "outside the clone" in FIRST_SCREEN


def test_the_two_commands_come_first():
    block = re.search(r"```bash\n(.*?)```", FIRST_SCREEN, re.S).group(1)
    assert [line.split()[:2] for line in block.splitlines()] == [["make", "run"], ["make", "test"]]


def test_the_readme_is_short():
    lines = README.count("\n")
    assert lines <= MAX_LINES, f"README.md has {lines} lines: move detail into docs/"


def test_every_picture_is_shown_and_every_picture_shown_exists():
    documents = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    shown = set()
    for doc in documents:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", doc.read_text()):
            path = (doc.parent / target).resolve()
            assert path.is_file(), f"{doc.name} shows {target}: no such file"
            shown.add(path)
    assert shown == {p.resolve() for p in (ROOT / "docs").glob("*.png")}
    assert "](docs/evaluation-report.png)" in README  # what you get, on the first page
    assert all(p.stat().st_size < 300_000 for p in shown)


def test_figures_come_only_from_generated_tables():
    """Outside the tables bench.tables writes (and code), the README holds no number but the Python
    version: a figure typed by hand goes stale."""
    text = re.sub(r"<!-- bench\.tables [a-z0-9-]+ -->.*?<!-- /bench\.tables -->", "", README, flags=re.S)
    text = re.sub(r"```.*?```|`[^`]*`|\]\([^)]*\)", "", text, flags=re.S)
    text = text.replace(f"Python {PYTHON}", "")
    numbers = r"(?<![\w.-])\d[\d,.]*(?![\w-])"  # 0.850, 4,007, 11 (not x86-64, AVX2, sha256)
    assert not re.findall(rf".{{0,30}}{numbers}.{{0,30}}", text)


def test_the_first_page_covers_everyday_use():
    """What a user needs without opening docs/: getting the photos, correcting the collection, the nightly
    service left alone, the offline views, stopping a run and its exit codes, scale-out; each linking on."""
    needed = {
        "getting the photos": ["make data", "pawflow data", "docs/guide.md#your-own-data"],
        "correcting the collection": [
            "data/exclude.txt",
            "--accept-removals",
            "PAWFLOW_ACCEPT_REMOVALS",
            "docs/collection.md",
        ],
        "the nightly service": [
            "pawflow serve",
            "pawflow history",
            "pawflow restore",
            "pawflow diff",
            "pawflow logs",
            "pawflow gc",
            "pipeline.alert_url",
            "git fetch origin '+refs/pawflow/*:refs/pawflow/*'",
            "docs/nightly.md",
        ],
        "offline views": ["dvc metrics show", "dvc plots show", "dvc exp show", "docs/views.md"],
        "stopping a run": ["Ctrl-C", "SIGTERM", "`130`", "`143`", "docs/guide.md#stopping-a-run"],
        "scale-out": ["runner.kind", "docs/scale-out.md"],
    }
    for topic, words in needed.items():
        missing = [w for w in words if w not in README]
        assert not missing, f"README.md, {topic}: {missing}"


def test_watch_is_not_said_to_show_log_lines():
    """`prefect deployment run --watch` prints state changes only; `pawflow logs` shows a run's lines."""
    for paragraph in README.split("\n\n"):
        if "--watch" in paragraph:
            assert "state changes only" in paragraph and "pawflow logs" in paragraph, paragraph
