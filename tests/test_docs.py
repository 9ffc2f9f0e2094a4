"""README.md and docs/*.md against the files they describe: links and their anchors, the tests, files,
modules, make targets, params keys and `pawflow` commands they name, the recipes they offer, the number
of stages, the figures they state, the pre-commit hooks; so that renaming any of them fails here rather
than misleading a reader."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
# Documents written in other branches of this round, which the README and guide already link to. An
# entry must name a file that does not exist yet: once it lands, remove it from here.
PENDING: set[str] = set()
LINK = re.compile(r"\]\(([^)\s]+)\)")
GENERATED = re.compile(r"<!-- bench\.tables [a-z0-9-]+ -->.*?<!-- /bench\.tables -->", re.S)
FENCED = re.compile(r"```.*?```", re.S)
# The stage docs/contributing.md adds as an example, and its files.
EXAMPLE_MODULES = {"flows.thumbs"}
EXAMPLE_FILES = {"tasks/thumbs.py", "flows/thumbs.py", "tests/test_thumbs.py", "tests/test_flows_thumbs.py"}
FILE_SUFFIXES = {"parquet", "json", "jsonl", "md", "py", "yaml", "html", "png", "keras", "npz", "txt"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCED.sub("", path.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def prose(path: Path) -> str:
    """A document without fenced code and generated tables."""
    return GENERATED.sub("", FENCED.sub("", path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("doc", DOCUMENTS, ids=rel)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(doc: Path):
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if rel(path) in PENDING:
            continue
        assert path.exists(), f"{rel(doc)} links to {target}: no such file"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{rel(doc)} links to {target}: no such heading in {rel(path)}"


def test_pending_documents_are_not_there_yet():
    landed = {p for p in PENDING if (ROOT / p).exists()}
    assert not landed, f"{landed} exist now: remove them from PENDING in tests/test_docs.py"


def test_every_test_named_exists():
    sources = {p.stem: p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py")}
    everything = "\n".join(sources.values())
    for doc in DOCUMENTS:
        named = r"`(test_[a-z0-9_]+)(?:\.py)?(?:::(test_[a-z0-9_*]+))?"
        for module, name in re.findall(named, doc.read_text()):
            pattern = name.replace("*", r"\w*") if name else None
            if pattern:
                assert module in sources, f"{rel(doc)} names {module}::{name}: no tests/{module}.py"
                assert re.search(rf"^def {pattern}\b", sources[module], re.M), f"{rel(doc)}: {module}::{name}"
            elif module not in sources:  # a function named alone, as in "test_a, test_b"
                bare = module.replace("*", r"\w*")
                found = re.search(rf"^def {bare}", everything, re.M)
                assert found, f"{rel(doc)} names {module}: no such test"


def test_every_module_run_with_python_m_exists():
    for doc in DOCUMENTS:
        for module in re.findall(r"python -m ((?:flows|tasks|bench)\.[a-z0-9_]+)", doc.read_text()):
            if module in EXAMPLE_MODULES:
                continue
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), f"{rel(doc)}: python -m {module}"


def test_every_make_target_named_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    for doc in DOCUMENTS:
        named = set(re.findall(r"`make ([a-z][a-z-]*)", doc.read_text()))
        assert named <= targets, f"{rel(doc)} names make targets that do not exist: {named - targets}"


def test_every_params_key_named_is_in_params_yaml():
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    sections = "|".join(shipped)
    for doc in DOCUMENTS:
        for key in re.findall(rf"`((?:{sections})\.[a-z_.]+)`", doc.read_text()):
            if key.rsplit(".", 1)[1] in FILE_SUFFIXES:  # a file (clean.parquet), not a key
                continue
            node: object = shipped
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{rel(doc)}: `{key}` is not in params.yaml"
                node = node[part]


def test_the_number_of_stages_is_dvc_yamls():
    stages = len(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
    for doc in DOCUMENTS:
        for said in re.findall(r"\b(\w+) stages\b", prose(doc), re.I):
            if said.lower() in words:
                said_n = words.index(said.lower())
                assert said_n == stages, f"{rel(doc)} says {said} stages; dvc.yaml has {stages}"


def test_no_issue_numbers_or_development_history_in_the_documents():
    history = (
        r"\bissues? #?\d+|\b(this|last|next|previous|earlier|later) round\b"
        r"|\bprevious version\b|\bthe \w+ helper\b"
    )
    for doc in DOCUMENTS:
        if doc.name == "CHANGELOG.md":  # a changelog is history by design
            continue
        text = doc.read_text()
        assert not re.search(history, text, re.I), f"{rel(doc)}: {re.search(history, text, re.I)[0]!r}"


def test_the_full_collection_recipes_are_valid_params():
    """docs/benchmarks.md "Full-collection recipe": each YAML block, merged into params.yaml as the page
    says to, is a valid params file (a renamed or misspelt key in the documentation fails here)."""
    from tasks.core.params import merged, parse_params

    page = (ROOT / "docs" / "benchmarks.md").read_text()
    section = page.split("\n## Full-collection recipe", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 2  # this machine, one GPU
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    for block in blocks:
        recipe = yaml.safe_load(block)
        assert recipe and set(recipe) <= set(shipped), recipe
        params = parse_params(merged(shipped, recipe))
        assert params.model_dump(mode="json") != parse_params(shipped).model_dump(mode="json")


def test_the_pre_commit_hooks_are_valid_and_run_the_projects_ruff():
    config = ROOT / ".pre-commit-config.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", str(config)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    hooks = {h["id"]: h for repo in yaml.safe_load(config.read_text())["repos"] for h in repo["hooks"]}
    # The pinned ruff of .venv, which `make lint` runs too: not a copy pre-commit downloads.
    assert hooks["ruff-check"]["entry"].startswith(".venv/bin/ruff check")
    assert hooks["ruff-format"]["entry"].startswith(".venv/bin/ruff format")
    lint = re.search(r"^lint:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "ruff check" in lint and "ruff format --check" in lint
    # The type checker: the same command in the hook and in `make lint`, its settings in pyproject.toml.
    assert hooks["typecheck"]["entry"] == ".venv/bin/mypy" and lint.endswith("$(BIN)/mypy")


# A figure is a number with a unit of time, size, rate or share, a decimal, or a count with thousands
# separators: what a measurement gives and what goes stale when typed by hand. Integers without a unit
# (exit codes, ports, counts in an example) are not figures.
UNIT = (
    r"(?:\s?(?:%|ms|s|min|minutes?|seconds?|hours?|days?|[kKMG]i?B|bytes|img/s|images/s|photos/s|px)\b|x\b)"
)
FIGURE = re.compile(rf"(?<![\w.-])(?:\d[\d,]*(?:\.\d+)?{UNIT}|\d+\.\d+|\d{{1,3}}(?:,\d{{3}})+)(?![\w-])")
NOT_FIGURES = re.compile(
    r"https?://\S+|\b\d+(?:\.\d+){3}\b"  # addresses
    r"|\b(?:Python|Prefect|DVC|TensorFlow|Keras|Pillow|Vega-Lite|Dask|distributed) \d+(?:\.\d+)*"  # versions
)
# Figures the documents take from constants in the code, checked here against the code: (document, the
# phrase with {} where the value goes, the file, the constant, the unit it is said in, in seconds).
CODE_FIGURES = [
    ("docs/guide.md", "after {:g} idle minutes", "flows/server.py", "IDLE_TIMEOUT_S", 60),
    ("docs/guide.md", "at the latest {:g} s after the signal", "flows/stops.py", "STOP_GRACE_S", 1),
    (
        "docs/reports.md",
        "A section shows at most {:g} pictures",
        "tasks/reports/datareport.py",
        "MAX_THUMBNAILS",
        1,
    ),
    ("docs/reports.md", "(a flag {:g},", "tasks/reports/datareport.py", "MAX_FLAGGED", 1),
    ("docs/reports.md", "a duplicate group {:g})", "tasks/reports/datareport.py", "MAX_COPIES", 1),
    (
        "docs/reports.md",
        "the {:g} most confident mistakes",
        "tasks/reports/summary.py",
        "MARKDOWN_MISTAKES",
        1,
    ),
    (
        "docs/reports.md",
        "with up to {:g} thumbnails per section",
        "tasks/reports/summary.py",
        "MARKDOWN_PICTURES",
        1,
    ),
]


def constant(path: str, name: str) -> object:
    """A module-level constant's value, read from the source without importing it."""
    for node in ast.parse((ROOT / path).read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} has no constant {name}")


def code_figure_phrases() -> dict[str, list[str]]:
    phrases: dict[str, list[str]] = {}
    for doc, phrase, path, name, unit in CODE_FIGURES:
        phrases.setdefault(doc, []).append(phrase.format(constant(path, name) / unit))
    return phrases


def test_the_figures_taken_from_the_code_are_the_codes():
    for doc, phrases in code_figure_phrases().items():
        text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
        for phrase in phrases:
            assert phrase in text, f"{doc} should say {phrase!r}, as the code has it"


@pytest.mark.parametrize("doc", [d for d in DOCUMENTS if d.name != "CHANGELOG.md"], ids=rel)
def test_figures_come_only_from_generated_tables_or_the_code(doc: Path):
    """Outside the tables `python -m bench.tables` writes (and code), a document states no figure: a
    figure typed by hand goes stale. Measure it (a bench script writing bench/results/), render it, or
    say it in words; a constant of the code goes in CODE_FIGURES."""
    text = re.sub(r"`[^`]+`|\]\([^)]*\)", "", prose(doc))
    text = NOT_FIGURES.sub("", " ".join(text.split()))
    for phrase in code_figure_phrases().get(rel(doc), []):
        text = text.replace(phrase, "")
    found = [m.group(0) for m in FIGURE.finditer(text)]
    context = [text[max(0, m.start() - 40) : m.end() + 20] for m in FIGURE.finditer(text)]
    assert not found, f"{rel(doc)} types figures by hand: {context}"


def test_every_file_and_module_named_exists():
    """A path of the project's code (`tasks/x.py`, `bench/x.py`...) or a dotted name of its modules
    (`tasks.x.name`, `python -m flows.x`) that a document names exists: moving a module shows here."""
    for doc in DOCUMENTS:
        text = doc.read_text(encoding="utf-8")
        for path in re.findall(r"`((?:flows|tasks|bench|tests|docs)/[\w/.-]+\.(?:py|md|png))`", text):
            assert (ROOT / path).exists() or path in EXAMPLE_FILES, f"{rel(doc)} names {path}: no such file"
        for dotted in re.findall(r"`((?:flows|tasks)\.[a-z_][\w.]*)", text):
            parts = dotted.split(".")
            prefixes = [ROOT / "/".join(parts[:n]) for n in range(2, len(parts) + 1)]
            found = any(p.with_suffix(".py").is_file() or p.is_dir() for p in prefixes)
            assert found, f"{rel(doc)} names {dotted}: no such module"


def pawflow_commands() -> dict[str, list[str]]:
    """Every `pawflow` command (subcommands as "server status") with its long options."""
    import click
    import typer.main

    from flows.cli import app

    found: dict[str, list[str]] = {}

    def walk(group: click.Command, prefix: str) -> None:
        for name, cmd in getattr(group, "commands", {}).items():
            params = cmd.get_params(click.Context(cmd))
            options = [
                o for p in params for o in (*p.opts, *getattr(p, "secondary_opts", [])) if o.startswith("--")
            ]
            found[prefix + name] = [o for o in options if o != "--help"]
            walk(cmd, prefix + name + " ")

    walk(typer.main.get_command(app), "")
    return found


def test_every_pawflow_command_and_option_is_in_the_guide():
    guide = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    section = guide.split("\n## The `pawflow` command", 1)[1].split("\n## ", 1)[0]
    for command, options in pawflow_commands().items():
        assert f"`pawflow {command}" in section, f"docs/guide.md does not describe `pawflow {command}`"
        for option in options:
            assert option in section, f"docs/guide.md does not describe `pawflow {command} {option}`"
