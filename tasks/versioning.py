"""DVC bookkeeping for runs that do not go through `dvc repro`: status, commit, push, run history."""

from __future__ import annotations

import io
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from tasks.errors import PawflowError
from tasks.fileio import append_history
from tasks.params import parse_params

STAGES = ("ingest", "clean", "dedup", "shard", "base", "train", "evaluate")


def stage_status(root: Path, stage: str) -> dict:
    """What DVC sees changed for one stage ({} when its deps, params and outs match dvc.lock)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.status(targets=[stage]).get(stage, {}) or {}


def commit_stage(root: Path, stage: str) -> None:
    """Record a stage's current deps, params and outs in dvc.lock (and outs in the DVC cache)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.commit(stage, force=True)


def has_default_remote(root: Path) -> bool:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.config["core"].get("remote"))


def push(root: Path) -> int:
    """`dvc push` to the default remote; returns how many files were sent."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        try:
            return int(repo.push())
        except Exception as err:  # DVC raises many kinds; the message is what matters
            raise PawflowError(
                f"dvc push failed: {err}", "Check the remote (`dvc remote list`); the run itself is complete."
            ) from None


def set_params(path: Path, updates: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Write dotted-key updates (e.g. {"train.epochs": 3}) into params.yaml, keeping its comments.

    The new file is validated first; returns {key: (old, new)} for what really changed.
    """
    ry = YAML()
    ry.preserve_quotes = True
    doc = ry.load(path.read_text(encoding="utf-8"))
    changed: dict[str, tuple[Any, Any]] = {}
    for key, value in updates.items():
        *parents, leaf = key.split(".")
        node = doc
        for part in parents:
            node = node[part]
        if node.get(leaf) != value:
            changed[key] = (node.get(leaf), value)
            node[leaf] = value
    if changed:
        out = io.StringIO()
        ry.dump(doc, out)
        parse_params(yaml.safe_load(out.getvalue()), path)  # refuse an update that makes it invalid
        from tasks.fileio import write_bytes

        write_bytes(path, out.getvalue().encode("utf-8"))
    return changed


def lock_stages(root: Path) -> dict[str, dict]:
    """The stages recorded in dvc.lock (deps, params and outs with their hashes)."""
    lock_path = root / "dvc.lock"
    if not lock_path.exists():
        return {}
    return (yaml.safe_load(lock_path.read_text()) or {}).get("stages") or {}


def lock_summary(root: Path) -> dict[str, dict[str, str]]:
    """{stage: {output path: hash}} from dvc.lock: the data and model version of the last run."""
    return {
        name: {o["path"]: o.get("md5") or o.get("hash", "") for o in stage.get("outs", [])}
        for name, stage in lock_stages(root).items()
    }


def git_commit(root: Path) -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return out.stdout.strip() or None


def history_record(
    root: Path, entry: str, stages: dict[str, str], params: dict, reports: Path, extra: dict | None = None
) -> dict:
    """One line of reports/runs.jsonl."""

    def read(name: str) -> Any:
        p = reports / name
        return json.loads(p.read_text()) if p.exists() else None

    metrics = read("metrics.json") or {}
    return {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "entry": entry,
        "git_commit": git_commit(root),
        "stages": stages,
        "dvc_lock": lock_summary(root),
        "params": params,
        "metrics": {
            k: metrics.get(k)
            for k in ("accuracy", "f1_macro", "roc_auc", "log_loss", "ece", "examples", "robust_accuracy")
        },
        "gate": {k: (read("gate.json") or {}).get(k) for k in ("decision", "p_value", "reason")},
        **(extra or {}),
    }


def record_run(root: Path, params: Any, entry: str, stages: dict[str, str], extra: dict) -> dict:
    """Append this run to the history file named in params (pipeline.history) and return the record."""
    record = history_record(root, entry, stages, params.model_dump(mode="json"), params.paths.reports, extra)
    append_history(params.pipeline.history, record)
    return record
