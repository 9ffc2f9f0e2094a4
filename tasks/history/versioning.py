"""DVC bookkeeping for runs that do not go through `dvc repro`: status, commit, push, run history."""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML

from tasks.core.errors import PawflowError
from tasks.core.params import check_workspace_paths, load_params, parse_params
from tasks.history import records
from tasks.history.records import RunLine
from tasks.reports.reports import GATE, METRICS

# The first stage of dvc.yaml (flows/check.py): validates params.yaml and ingest.source.
CHECK_STAGE = "check"
DVC_YAML = Path(__file__).resolve().parents[2] / "dvc.yaml"


def _stages_of_dvc_yaml() -> tuple[str, ...]:
    """The stages after check, in dvc.yaml's order: the graph lists each stage after those it reads
    (tests/test_dvc_yaml.py checks it), so this is the order they run in."""
    names = tuple(yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["stages"])
    return tuple(n for n in names if n != CHECK_STAGE)


# The stage order, read from dvc.yaml once: the one place it is written.
STAGES = _stages_of_dvc_yaml()
# The stages that make data/ (Prefect flows mapped over the photos, with params.runner's task runner).
DATA_STAGES = STAGES[: STAGES.index("shard") + 1]
# How long an entry point waits for DVC's repo lock held by a short command (`dvc status`) before it
# says which process holds it; DVC itself retries for 3 s.
DVC_LOCK_WAIT_S = 10.0

# The Repo whose lock this process holds for a whole run (see dvc_lock), by workspace.
_held: dict[Path, Any] = {}


def _busy(root: Path) -> str | None:
    """Who is running a DVC stage here: DVC releases its repo lock while a stage's command runs, but
    keeps that stage's deps and outs in .dvc/tmp/rwlock (pid and command) until it has recorded it.
    The file is DVC's internal record (dvc.rwlock), with no public reader: tests/test_versioning.py pins
    it by having DVC run a stage."""
    import psutil

    path = root / ".dvc" / "tmp" / "rwlock"
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return "a DVC process (its lock file is being written)"
    infos = list(data.get("write", {}).values())
    infos += [i for group in data.get("read", {}).values() for i in group]
    alive = [i for i in infos if psutil.pid_exists(i.get("pid", -1))]
    return f"pid {alive[0]['pid']}: {alive[0]['cmd']}" if alive else None


@contextmanager
def dvc_lock(root: Path, wait_s: float = DVC_LOCK_WAIT_S) -> Iterator[None]:
    """Hold DVC's own repo lock (.dvc/tmp/lock) for a whole pawflow run, so that `dvc repro`,
    `dvc exp run` or `dvc commit` started meanwhile is refused by DVC before it removes or records
    anything; this process's stage_status/commit_stage go through the held lock.

    Refused (PawflowError) while another DVC command or a stage that `dvc repro` runs is in progress.
    """
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    key = root.resolve()
    if key in _held or not (root / ".dvc").is_dir():  # held already, or no DVC here to keep out
        yield
        return
    busy_msg = "Wait for it to finish (or stop it), then run again; nothing was changed."
    repo = Repo(str(root))
    try:
        deadline = time.monotonic() + wait_s
        while True:
            holding = lock_repo(repo)
            try:
                holding.__enter__()
                break
            except LockError:
                if time.monotonic() > deadline:
                    raise PawflowError(
                        "another DVC command is running in this workspace (.dvc/tmp/lock is held); "
                        "refusing to start so that it is not disturbed.",
                        busy_msg,
                    ) from None
        try:
            who = _busy(root)
            if who:
                raise PawflowError(
                    f"`dvc repro` (or `dvc exp run`) is running a stage in this workspace ({who}); "
                    "refusing to start so that it is not disturbed.",
                    busy_msg,
                )
            _held[key] = repo
            try:
                yield
            finally:
                del _held[key]
        finally:
            holding.__exit__(None, None, None)
    finally:
        repo.close()


@contextmanager
def _repo(root: Path) -> Iterator[Any]:
    """The Repo this process holds the lock of (fresh graph each time), or a new one."""
    from dvc.repo import Repo

    held = _held.get(root.resolve())
    if held is not None:
        # dvc.yaml, dvc.lock and the outputs may have changed since the last call. DVC drops the graph it
        # caches in the Repo with this private method each time it takes its lock, which a held lock is
        # not; it has no public equivalent (pinned by tests/test_versioning.py).
        held._reset()
        yield held
        return
    with Repo(str(root)) as repo:
        yield repo


def stage_status(root: Path, stage: str) -> dict:
    """What DVC sees changed for one stage ({} when its deps, params and outs match dvc.lock)."""
    with _repo(root) as repo:
        return repo.status(targets=[stage]).get(stage, {}) or {}


def commit_stage(root: Path, stage: str) -> None:
    """Record a stage's current deps, params and outs in dvc.lock (and outs in the DVC cache). A file
    DVC cannot record (a dependency deleted during the run, say) is one message naming it."""
    from dvc.exceptions import DvcException

    with _repo(root) as repo:
        try:
            repo.commit(stage, force=True)
        except DvcException as err:
            raise PawflowError(
                f"recording stage {stage} in dvc.lock failed: {err}.",
                "Restore what it names (`git checkout -- PATH` for a tracked file, `dvc checkout` for a "
                "DVC output), then run again; the stages before it are recorded.",
            ) from None


def has_default_remote(root: Path) -> bool:
    with _repo(root) as repo:
        return bool(repo.config["core"].get("remote"))


def push(root: Path) -> int:
    """`dvc push` to the default remote; returns how many files were sent."""
    with _repo(root) as repo:
        try:
            return int(repo.push())
        except Exception as err:  # DVC raises many kinds; the message is what matters
            raise PawflowError(
                f"dvc push failed: {err}", "Check the remote (`dvc remote list`); the run itself is complete."
            ) from None


def planned_params(
    path: Path, updates: dict[str, Any], light: bool = False
) -> tuple[Any, dict[str, tuple[Any, Any]], str]:
    """params.yaml with dotted-key updates (e.g. {"train.epochs": 3}) applied, comments kept, not written:
    (the validated Params, {key: (old, new)} for what really changes, the new file's text). light: skip
    the checks that import Prefect (tasks.core.params.parse_params)."""
    params = load_params(path, light=light)  # the file itself first: duplicate keys, paths, every value
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
    if not changed:
        return params, changed, path.read_text(encoding="utf-8")
    out = io.StringIO()
    ry.dump(doc, out)
    params = parse_params(yaml.safe_load(out.getvalue()), path, light)  # refuse an update making it invalid
    check_workspace_paths(params, path.parent, path)
    return params, changed, out.getvalue()


def set_params(path: Path, updates: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Write dotted-key updates into params.yaml, keeping its comments.

    The new file is validated first; returns {key: (old, new)} for what really changed.
    """
    _, changed, text = planned_params(path, updates)
    if changed:
        from tasks.core.fileio import write_bytes

        write_bytes(path, text.encode("utf-8"))
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
) -> RunLine:
    """This run's line of the run history (reports/runs.jsonl); extra: its other keys (run, version...)."""

    metrics: Mapping[str, Any] = METRICS.read_if_written(reports) or {}
    gate: Mapping[str, Any] = GATE.read_if_written(reports) or {}
    return RunLine(
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        entry=entry,
        git_commit=git_commit(root),
        stages=stages,
        dvc_lock=lock_summary(root),
        params=params,
        metrics={
            k: metrics.get(k)
            for k in ("accuracy", "f1_macro", "roc_auc", "log_loss", "ece", "examples", "robust_accuracy")
        },
        gate={k: gate.get(k) for k in ("decision", "p_value", "reason")},
        **(extra or {}),
    )


def record_run(root: Path, params: Any, entry: str, stages: dict[str, str], extra: dict) -> dict:
    """Append this run to the history file named in params (pipeline.history) and return the record."""
    record = history_record(root, entry, stages, params.model_dump(mode="json"), params.paths.reports, extra)
    return records.append(params.pipeline.history, record)
