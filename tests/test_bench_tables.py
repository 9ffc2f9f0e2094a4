"""bench/tables.py: the documentation's tables are what bench/results/*.json give, and an edit by hand
is found. The script runs as a command (`python -m bench.tables`), as `make bench` and a contributor
run it; the tests do not import bench/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tables(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.tables", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def copy_of_the_project(dest: Path) -> Path:
    """What the script reads and writes: itself, the results, the committed reports, params.yaml, the
    documents."""
    (dest / "bench").mkdir(parents=True)
    for name in ("__init__.py", "tables.py"):
        shutil.copy2(ROOT / "bench" / name, dest / "bench" / name)
    shutil.copytree(ROOT / "bench" / "results", dest / "bench" / "results")
    shutil.copytree(ROOT / "reports", dest / "reports", ignore=shutil.ignore_patterns("*.html", "*.png"))
    shutil.copytree(ROOT / "docs", dest / "docs", ignore=shutil.ignore_patterns("*.png", "*.py"))
    shutil.copy2(ROOT / "README.md", dest / "README.md")
    shutil.copy2(ROOT / "params.yaml", dest / "params.yaml")
    return dest


def test_every_table_in_the_documents_is_what_the_results_files_give():
    out = tables(ROOT, "--check")
    assert out.returncode == 0, (
        f"{out.stdout[-4000:]}{out.stderr[-2000:]}\nA table differs from bench/results/ (or reports/): "
        "run `.venv/bin/python -m bench.tables` and commit the documents it rewrites."
    )


def test_a_figure_edited_by_hand_is_found_and_regenerated(tmp_path: Path):
    work = copy_of_the_project(tmp_path / "project")
    doc = work / "docs" / "benchmarks.md"
    text = doc.read_text()
    generated = text.split("<!-- bench.tables p8-night -->", 1)[1].split("<!-- /bench.tables -->", 1)[0]
    night = next(line for line in generated.splitlines() if line.startswith("| **in all** |"))
    doc.write_text(text.replace(night, night.replace("**", "", 2).replace(" |", " 1 |", 1)))
    found = tables(work, "--check")
    assert found.returncode == 1
    assert "docs/benchmarks.md" in found.stdout and night in found.stdout  # the diff shows the table's line
    assert "run `python -m bench.tables`" in found.stderr
    assert tables(work).returncode == 0  # regenerated
    assert doc.read_text() == text
    assert tables(work, "--check").returncode == 0


def test_a_new_result_changes_its_table(tmp_path: Path):
    import json

    work = copy_of_the_project(tmp_path / "project")
    results = work / "bench" / "results" / "P2.json"
    p2 = json.loads(results.read_text())
    p2["dvc_repro_noop_s"] = 4.25
    p2["measured"] = {
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "date": "2030-01-02T03:04:05Z",
        "load_average_1_5_15_min": [0.5, 0.6, 0.7],
        "machine": "a test machine",
    }
    results.write_text(json.dumps(p2))
    assert tables(work, "--check").returncode == 1
    assert tables(work).returncode == 0
    text = (work / "docs" / "benchmarks.md").read_text()
    p2_table = text.split("<!-- bench.tables p2 -->", 1)[1].split("<!-- /bench.tables -->", 1)[0]
    assert "| `dvc repro`, nothing changed | 4.2 s |" in p2_table
    assert "commit `0123456`, 2030-01-02, load 0.5/0.6/0.7, a test machine." in p2_table
    assert "recovered" not in p2_table


def test_an_unknown_table_and_a_table_shown_nowhere_are_errors(tmp_path: Path):
    work = copy_of_the_project(tmp_path / "project")
    readme = work / "README.md"
    text = readme.read_text()
    readme.write_text(text + "\n<!-- bench.tables p99 -->\n<!-- /bench.tables -->\n")
    unknown = tables(work, "--check")
    assert unknown.returncode != 0 and "no table named 'p99'" in unknown.stderr
    start = text.index("<!-- bench.tables make-run -->")
    end = text.index("<!-- /bench.tables -->", start) + len("<!-- /bench.tables -->")
    readme.write_text(text[:start] + text[end:])
    nowhere = tables(work, "--check")
    assert nowhere.returncode == 1 and "tables shown nowhere: make-run" in nowhere.stderr


def test_p10_shows_the_quick_harness_run_until_the_month_is_run(tmp_path: Path):
    """Until bench/results/P10.json holds a month, the P10 tables render P10-quick.json, said to be the
    quick harness run; once it does, `python -m bench.tables` alone shows the month and summarises it."""
    import json

    work = copy_of_the_project(tmp_path / "project")
    page = work / "docs" / "benchmarks.md"

    def block(name: str) -> str:
        after = page.read_text().split(f"<!-- bench.tables {name} -->", 1)[1]
        return after.split("<!-- /bench.tables -->")[0]

    (work / "bench" / "results" / "P10.json").unlink()  # before the month was run
    assert tables(work).returncode == 0
    assert "The quick harness run" in block("p10-nights") and "[P10](#p10)" not in block("summary")
    month = json.loads((work / "bench" / "results" / "P10-quick.json").read_text())
    month["figure"] = "full: 30 nights"
    month["bench_seconds"] = 3 * 3600.0
    month["per_night"][0]["seconds"] = 4321.0
    (work / "bench" / "results" / "P10.json").write_text(json.dumps(month))
    assert tables(work, "--check").returncode == 1
    assert tables(work).returncode == 0
    nights = block("p10-nights")
    assert "quick harness" not in nights and "The month:" in nights
    assert "| 0 | retrain-nightly | sample |" in nights and "| 4,321 |" in nights
    assert "[P10](#p10) | full: 30 nights |" in block("summary")
    assert "quick harness" not in block("p10-targets")


def test_a_params_table_shows_params_yaml_as_shipped(tmp_path: Path):
    work = copy_of_the_project(tmp_path / "project")
    params = work / "params.yaml"
    params.write_text(params.read_text().replace("  keep_runs: 30 ", "  keep_runs: 12 ", 1))
    assert tables(work, "--check").returncode == 1
    assert tables(work).returncode == 0
    nightly = (work / "docs" / "nightly.md").read_text()
    assert "| `pipeline.keep_runs` | `12` | versions kept (refs/pawflow/runs): the newest 30" in nightly
