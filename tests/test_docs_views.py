"""docs/views.md against what it describes: the `dvc exp show` command it gives fits 120 columns with
nothing cut, and shows no false difference for a source outside the repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import tool_env

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "views.md").read_text(encoding="utf-8")


def documented_exp_show() -> list[str]:
    (line,) = [m for m in re.findall(r"^dvc exp show .*$", DOC, re.M)]
    return [a.strip("'") for a in re.findall(r"'[^']*'|\S+", line)][
        3:
    ]  # as a shell splits it, less `dvc exp show`


def git(ws: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=ws, check=True)


def test_the_documented_exp_show_fits_120_columns_without_false_differences(tmp_path: Path):
    """Three commits that change train params and the scores, and a workspace with one more change, on
    the project's dvc.yaml and dvc.lock (whose ingest dependency lies outside the repository)."""
    ws = tmp_path / "ws"
    for rel in ("dvc.yaml", "dvc.lock", "params.yaml", ".dvc/config", "reports/scores.json"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ws / rel)
    git(ws, "init", "-q")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for epochs, accuracy in ((8, 0.81), (16, 0.84)):
        git(ws, "add", "-A")
        git(ws, "commit", "-qm", f"before {epochs}")
        params["train"]["epochs"] = epochs
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        scores = json.loads((ws / "reports/scores.json").read_text())
        (ws / "reports/scores.json").write_text(json.dumps({**scores, "accuracy": accuracy}))
    params["train"]["learning_rate"] = 0.001
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def show(*args: str) -> list[str]:
        env = {**tool_env(), "COLUMNS": "120"}
        cmd = [sys.executable, "-m", "dvc", "exp", "show", "--no-pager", "-n", "3", *args]
        out = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.rstrip("\n").splitlines()

    lines = show(*documented_exp_show())
    assert max(len(line) for line in lines) <= 120
    body = "\n".join(lines)
    assert "…" not in body, body
    header = lines[1].split()
    assert header == ["Experiment", "accuracy", "train.epochs", "train.learning_rate"], body
    assert "shared" not in body and "/" not in body  # no dependency columns, so no false difference
