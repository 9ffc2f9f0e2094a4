"""The end of every run: its facts gathered, its state recorded as a version, retention applied, alerts
sent. Called by the Prefect pipeline (every deployment) and by `pawflow run`, while the run holds the
workspace (flows.common.run_lock), except alert() and closing_lines(), which run after the lock is released.

The run history is what the versions hold (refs/pawflow/runs, shared with clones) plus, for the runs
that recorded no version (a quiet night, a failed run), their line in pipeline.history (runs.jsonl,
local and git-ignored). Nothing here writes a DVC-tracked output.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tasks.core.errors import PawflowError
from tasks.core.params import Params, load_params
from tasks.core.status import ran
from tasks.history import alerts, records, runs, runstore, versioning
from tasks.history.records import RunLine, StageLine
from tasks.reports.reports import CLEAN, DEDUP, GATE, METRICS, SHARD, TRAIN

log = logging.getLogger(__name__)
AUDIT = "audit.json"  # written by the label audit when the project has one: {"tripped": bool, "reason": str}
INGEST_MANIFEST = "ingest.parquet"


def now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def jsonl_runs(path: Path) -> list[dict]:
    """The run facts of a run history (its run lines with facts), oldest first, each with its version."""
    return [
        {**rec.run, "version": rec.version}
        for rec in records.read(path)
        if isinstance(rec, RunLine) and rec.run and rec.run.get("id")
    ]


def stage_lines(path: Path) -> list[StageLine]:
    """The stage lines of a run history (a stage's run figures: flows.common.record_stage_run), in order."""
    return [rec for rec in records.read(path) if isinstance(rec, StageLine)]


def history(root: Path, params: Params | None) -> list[dict]:
    """Every run, newest first: the recorded versions (their facts, with `version` = the commit and
    `restorable` true), and the runs of the local run history that recorded none or whose version
    retention dropped (`restorable` false). Runs in neither are unknown here."""
    found = runstore.versions(root) if runstore.is_repo(root) else []
    by_id = {v.id: {**v.facts, "id": v.id, "version": v.commit, "restorable": True} for v in found}
    path = root / params.pipeline.history if params is not None else _history_path(root)
    if path is not None:
        for f in jsonl_runs(path):
            if f["id"] not in by_id:  # no version, or one that retention dropped
                by_id[f["id"]] = {**f, "restorable": False}
    return [by_id[k] for k in sorted(by_id, reverse=True)]


def _history_path(root: Path) -> Path | None:
    """pipeline.history read from params.yaml without validating the rest (a file that no longer
    validates still names its run history)."""
    try:
        data = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
        return root / str(data["pipeline"]["history"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def previous_manifest(root: Path, params: Params, version: runstore.Version | None):
    """The ingest manifest (path, label, sha256) of a recorded run, from the DVC cache; None when it
    is not there (no earlier run, or its objects were collected)."""
    from tasks.core.fileio import read_parquet
    from tasks.history.versioning import _repo

    if version is None:
        return None
    try:
        lock = yaml.safe_load(runstore.show(root, version.commit, "dvc.lock")) or {}
    except Exception:  # no dvc.lock in that commit
        return None
    md5 = None
    for out in ((lock.get("stages") or {}).get("ingest") or {}).get("outs", []):
        if str(out.get("path", "")).endswith(INGEST_MANIFEST):
            md5 = out.get("md5")
    if not md5:
        return None
    with _repo(root) as repo:
        path = Path(repo.cache.local.oid_to_path(md5))
    try:
        return read_parquet(path) if path.exists() else None
    except Exception:  # a damaged cache object: the counts of the last run's facts stand in (gather)
        return None


def _read_audit(reports: Path) -> dict | None:
    try:
        data = json.loads((reports / AUDIT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {"tripped": bool(data.get("tripped")), "reason": str(data.get("reason") or "")}


def base_facts(run_id: str, started: datetime, entry: str, flow_run: dict | None) -> dict[str, Any]:
    """The facts every run has, also a run that failed before it read anything."""
    return {
        "id": run_id,
        "started": iso(started),
        "finished": iso(now()),
        "wall_s": round((now() - started).total_seconds(), 1),
        "entry": entry,
        "flow_run_id": (flow_run or {}).get("id"),
        "flow_run_url": (flow_run or {}).get("url"),
        "outcome": "completed",
        "error": None,
    }


def gather(
    root: Path,
    params: Params,
    run_id: str,
    started: datetime,
    entry: str,
    stages: dict[str, str],
    no_new_data: bool,
    flow_run: dict | None = None,
) -> dict[str, Any]:
    """A completed run's facts, from the reports, the manifests and the earlier runs."""
    from tasks.core.fileio import read_parquet

    reports = root / params.paths.reports
    earlier = history(root, params)
    found = runstore.versions(root) if runstore.is_repo(root) else []
    facts = base_facts(run_id, started, entry, flow_run)
    facts.update(stages=stages, no_new_data=no_new_data)

    manifest_path = root / params.paths.interim / INGEST_MANIFEST
    current = read_parquet(manifest_path) if manifest_path.exists() else None
    if current is not None:
        previous = previous_manifest(root, params, found[0] if found else None)
        arrived = runs.arrivals(previous, current)
        if previous is None and earlier and earlier[0].get("photos"):
            # the last run's manifest is not in the cache: counts from its facts instead
            before = earlier[0]["photos"].get("per_class") or {}
            per = current["label"].value_counts().to_dict()
            arrived["new_per_class"] = {
                str(c): int(n - before.get(c, 0)) for c, n in sorted(per.items()) if n > before.get(c, 0)
            }
            arrived["new_photos"] = sum(arrived["new_per_class"].values())
        new_paths = arrived.pop("new_paths")
        facts.update(arrived)
        facts["photos"] = {
            "total": len(current),
            "per_class": {str(k): int(v) for k, v in sorted(current["label"].value_counts().items())},
        }
        facts["new_files"] = len(new_paths)
    else:
        new_paths = set()
        facts.update(new_photos=0, new_per_class={}, new_examples=[], removed_photos=0, removed_per_class={})
        facts.update(photos=None, new_files=0)

    clean = CLEAN.read_if_written(reports)
    facts["rejected"] = {"total": clean["rejected"], "per_reason": clean["per_reason"]} if clean else None
    facts.update(runs.rejected_among(clean["rejected_files"] if clean else [], new_paths))
    dedup = DEDUP.read_if_written(reports)
    facts["duplicates"] = (
        {"exact": dedup["exact_duplicates"], "near": dedup["near_duplicates"], "conflict": dedup["conflict"]}
        if dedup
        else None
    )
    figures = runs.stage_figures(stage_lines(root / params.pipeline.history), iso(started))
    stability = (figures.get("shard") or {}).get("split_stability") or {}
    facts["split_moves"] = stability.get("moved_photos", 0) if ran(stages, "shard") else 0
    shard = SHARD.read_if_written(reports)
    facts["examples"] = shard["examples"] if shard else None
    facts["trained"] = runs.trained(stages, TRAIN.read_if_written(reports))

    metrics: Mapping[str, Any] = METRICS.read_if_written(reports) or {}
    gate: Mapping[str, Any] = GATE.read_if_written(reports) or {}
    facts.update(
        test_accuracy=metrics.get("accuracy"),
        robust_accuracy=metrics.get("robust_accuracy"),
        f1_macro=metrics.get("f1_macro"),
        gate=gate.get("decision"),
        gate_reason=gate.get("reason"),
        p_value=gate.get("p_value"),
        champion_accuracy=gate.get("champion_accuracy"),
        promoted=ran(stages, "evaluate") and gate.get("decision") == "promoted",
    )
    hashes = runstore.recorded_hashes(root)
    facts["sha256"] = hashes
    facts["model_sha256"] = hashes.get("models/model.keras")
    facts["champion_sha256"] = hashes.get("models/champion/model.keras")
    facts["audit"] = _read_audit(reports)
    completed = [f for f in earlier if f.get("outcome") == "completed"]
    facts["changes"] = runs.changes(facts, completed[0] if completed else None, runs.champion_run(completed))
    return facts


def closing_lines(root: Path, params: Params) -> str:
    """What a finished run leaves the user with: test accuracy and the gate's decision, the report's path,
    and the command to try the model (from reports/metrics.json and gate.json; what is missing is said)."""
    reports = root / params.paths.reports
    metrics, gate = METRICS.read_if_written(reports), GATE.read_if_written(reports)
    if metrics:
        line = f"test accuracy {metrics['accuracy']:.4f} on {metrics['examples']} photos"
        line += f"; gate: {gate['decision']} ({gate['reason']})" if gate else "; no gate decision yet"
    else:
        line = "no test accuracy yet (the evaluate stage has not run)"
    html = reports / "evaluation.html"
    report = f"report: {html}" if html.exists() else f"report: not written yet ({html})"
    champion = params.paths.models / "champion"
    if (root / champion / "model.keras").exists():
        tryit = f"try it: pawflow predict PHOTO_OR_FOLDER   (default model: {champion})"
    else:
        model = params.paths.models / "model.keras"
        tryit = f"try it: pawflow predict PHOTO_OR_FOLDER --model {model}   (no champion yet)"
    return "\n".join((line, report, tryit))


def record_version(root: Path, facts: dict, fail_before_ref: Callable[[], None] | None = None) -> str | None:
    """The run's state as refs/pawflow/runs/<id> when an output changed; the commit, or None."""
    if facts.get("outcome") != "completed" or not runstore.is_repo(root):
        return None
    version = runstore.record(
        root, facts["id"], runs.headline(facts), facts, runstore.run_paths(root), fail_before_ref
    )
    return version.commit if version else None


def retention(root: Path, params: Params) -> dict | None:
    """pipeline.keep_runs applied (after a run that recorded a version): the local run history cut to
    its newest pipeline.keep_history runs (and the kept versions' lines), refs of dropped runs deleted,
    then what
    nothing kept uses removed from the DVC cache and the default remote. None when no version was
    dropped (then nothing new became garbage)."""
    found = runstore.versions(root)
    kept, dropped = runstore.select_kept(found, params.pipeline.keep_runs)
    pruned = prune_history(root / params.pipeline.history, params.pipeline.keep_history, {v.id for v in kept})
    if not dropped:
        return None
    return {
        **runstore.collect_garbage(root, params.pipeline.keep_runs, cloud=True),
        "history_lines_pruned": pruned,
    }


def alert(params: Params, facts: dict, previous: dict | None, logger: Any = log) -> list[dict]:
    """Send this run's alerts (if pipeline.alert_url is set); each one is logged. Returns those sent."""
    found = alerts.events(facts, previous, params.pipeline.alert_reject_fraction)
    sent = []
    for event, reason in found:
        message = alerts.payload(event, reason, facts)
        logger.warning("alert %s: %s", event, message["reason"])
        if params.pipeline.alert_url:
            err = alerts.post(params.pipeline.alert_url, message, params.pipeline.alert_timeout_s)
            if err:
                logger.warning("alert %s not delivered to pipeline.alert_url: %s", event, err)
                continue
        sent.append(message)
    return sent


def record_failed(root: Path, facts: dict, logger: Any = log) -> None:
    """A failed run (facts with outcome "failed"): its line in the run history and its `run_failed`
    alert, when params.yaml can be read (else a warning says nothing was sent)."""
    try:
        params = load_params(root / "params.yaml")
    except PawflowError:
        logger.warning("run %s failed; params.yaml cannot be read, so no alert was sent", facts["id"])
        return
    with contextlib.suppress(OSError):
        extra = {"run_id": facts["id"], "run": facts, "version": None}
        versioning.record_run(root, params, "prefect", {}, extra)
    alert(params, facts, None, logger)


def restore(root: Path, ident: str) -> dict[str, Any]:
    """Put back a recorded run (the caller holds run_lock): its git-kept files from its commit, its DVC
    outputs by checkout (pulling what the cache lacks), then the sha256s it recorded are checked.
    Refused, before anything is written, when the workspace holds changes of the user's own."""
    from tasks.core.errors import PawflowError

    found = runstore.versions(root) if runstore.is_repo(root) else []
    version = runstore.resolve(found, ident)
    paths = runstore.run_paths(root)
    own = runstore.own_changes(root, paths, found)
    if own:
        shown = ", ".join(own[:5]) + (f" and {len(own) - 5} more" if len(own) > 5 else "")
        raise PawflowError(
            f"the workspace has uncommitted changes of your own that a restore would mix with or "
            f"overwrite: {shown}.",
            "Commit them (`git commit`) or put them aside (`git stash`), then restore again; nothing was "
            "changed.",
        )
    written = runstore.put_back_git_files(root, version.commit, paths)
    how = runstore.checkout_outputs(root)
    expected = version.facts.get("sha256") or {}
    bad = runstore.verify(root, expected)
    if bad:
        raise PawflowError(
            f"after restoring run {version.id}, {', '.join(bad)} differ(s) from the sha256 the run recorded: "
            "the DVC cache holds a damaged copy (DVC does not check its cache).",
            "Move .dvc/cache aside (or delete that object from it) and run `pawflow restore "
            f"{version.id}` again to pull good copies from the remote.",
        )
    return {"id": version.id, "git_files": len(written), "outputs": how, "verified": sorted(expected)}


def pair(root: Path, params: Params | None, first: str, second: str | None):
    """Two recorded runs for `pawflow diff`: (older-or-given first, second); one id: it and the run
    recorded before it."""
    from tasks.core.errors import PawflowError

    found = runstore.versions(root) if runstore.is_repo(root) else []
    a = runstore.resolve(found, first)
    if second is not None:
        return a, runstore.resolve(found, second)
    older = [v for v in found if v.id < a.id]
    if not older:
        raise PawflowError(f"run {a.id} is the oldest recorded run: nothing to compare it with.", None)
    return older[0], a


def collection_diff(a: dict, b: dict) -> str:
    """The collection and the gate between two runs' facts, in words."""
    pa, pb = a.get("photos") or {}, b.get("photos") or {}
    classes = sorted(set(pa.get("per_class") or {}) | set(pb.get("per_class") or {}))
    lines = [f"photos: {pa.get('total', '-')} -> {pb.get('total', '-')}"]
    for c in classes:
        x, y = (pa.get("per_class") or {}).get(c, 0), (pb.get("per_class") or {}).get(c, 0)
        if x != y:
            lines.append(f"  {c}: {x} -> {y} ({y - x:+d})")
    lines.append(
        f"champion: {(a.get('champion_sha256') or '-')[:12]} -> {(b.get('champion_sha256') or '-')[:12]}"
    )
    lines.append(f"gate of {b.get('id')}: {runs.gate_sentence(b)}")
    return "\n".join(lines)


def prune_history(path: Path, keep_runs: int, kept_ids: set[str]) -> int:
    """Bound the local run history (runs.jsonl) like the versions: keep every line from the oldest of the
    newest `keep_runs` runs on, and the run lines of kept versions before it; returns lines removed.
    Rewritten atomically (the caller holds the workspace lock, so no stage appends meanwhile)."""
    from tasks.core.fileio import write_bytes

    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    run_at = []
    for i, line in enumerate(lines):
        rec = records.parse(line)
        if isinstance(rec, RunLine) and rec.run is not None:
            run_at.append((i, rec.run.get("id")))
    if len(run_at) <= keep_runs:
        return 0
    start = run_at[-keep_runs - 1][0] + 1  # a run's stage lines come before its own line
    # what ran before the oldest kept run line: only kept versions' run lines stay
    older = {i for i, rid in run_at if i < start and rid in kept_ids}
    kept = [line for i, line in enumerate(lines) if i >= start or i in older]
    write_bytes(path, "".join(kept).encode("utf-8"))
    return len(lines) - len(kept)
