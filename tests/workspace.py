"""A DVC workspace on generated photos for the tests that run real entry points (dvc, the CLI, flows
as subprocesses), and what they check in it. The commands themselves are in commands.py."""

from __future__ import annotations

import json
from pathlib import Path

import imagegen
from commands import dvc
from conftest import make_workspace

# Train and evaluate in seconds: one epoch of a tiny model, and a gate that promotes any model.
FAST = {
    "train": {"epochs": 1, "image_size": 32, "width": 8, "batch_size": 8, "warmup_epochs": 0},
    "evaluate": {"min_accuracy": 0.0},
}


def workspace(tmp_path: Path, per_class: int = 20, **overrides: dict) -> tuple[Path, Path]:
    source = imagegen.make_dataset(tmp_path / "source", per_class=per_class)
    ws = make_workspace(tmp_path / "ws", source, **{**FAST, **overrides})
    remote = tmp_path / "remote"
    config = f"[core]\n    analytics = false\n    remote = local\n['remote \"local\"']\n    url = {remote}\n"
    (ws / ".dvc" / "config").write_text(config)
    return ws, source


def history(ws: Path) -> list[dict]:
    return [json.loads(line) for line in (ws / "reports/runs.jsonl").read_text().splitlines()]


def up_to_date(ws: Path, api: str, *stages: str) -> bool:
    """`dvc status` (of `stages`, default every stage) finds nothing changed."""
    out = dvc(ws, "status", *stages, api=api)
    return out.returncode == 0 and "up to date" in out.stdout


def assert_up_to_date(ws: Path, api: str) -> None:
    """Every stage up to date: `dvc status` says so and `dvc repro` runs nothing."""
    status = dvc(ws, "status", api=api)
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, status.stdout
    repro = dvc(ws, "repro", api=api)
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout
