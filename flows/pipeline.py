"""pipeline: the whole DAG as one Prefect flow run, leaving exactly the state `dvc repro` leaves.

Each stage is a task that asks DVC whether the stage is up to date (its deps, params and outs match
dvc.lock). If it is, the task ends Skipped; if not, it runs the stage's flow as a subflow and records
the result with `dvc commit`, so dvc.lock, the outputs and the DVC cache agree exactly as after
`dvc repro`. Then `dvc push`, the run recorded as a version when an output changed (refs/pawflow/runs,
tasks.history.nightly) with a line in reports/runs.jsonl, retention, alerts, and summary artifacts.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, Failed, State

from flows.base import prepare_base
from flows.common import (
    error_of,
    friendly,
    one_line,
    pipeline_run_name,
    quiet_user_errors,
    task_runner,
    tidy_workspace,
)
from flows.lock import run_lock
from flows.server import use_background_server
from flows.stops import StopGuard, Terminated, message
from tasks.check import check_exclude, check_source_of, write_checked
from tasks.core.errors import ExitCode, PawflowError, report
from tasks.core.params import Params, load_params
from tasks.core.status import StageRun, ran
from tasks.history import nightly, runs, runstore, versioning
from tasks.reports import summary


def stage_flow(stage: str):
    """flows.<stage>.<stage>_flow, imported only when the stage runs (a no-op run stays fast)."""
    return getattr(importlib.import_module(f"flows.{stage}"), f"{stage}_flow")


# One pipeline run per workspace at a time, across every deployment (created by `pawflow serve`).
CONCURRENCY_LIMIT = "pawflow-workspace"


UP_TO_DATE = "up to date in dvc.lock"


def stage_task_name(parameters: dict[str, Any]) -> str:
    """The stage, or "<stage> (skipped: up to date in dvc.lock)": the Prefect UI colours a Completed
    state named Skipped as completed (Prefect has no skipped type), so the name tells them apart."""
    skip = parameters.get("changed") == {}
    return f"{parameters['stage']} (skipped: {UP_TO_DATE})" if skip else parameters["stage"]


def what_changed(root: Path, stage: str, force: bool, upstream_changed: bool) -> dict | None:
    """What DVC's status finds changed for a stage ({}: up to date), or None when it must run anyway.
    The audit is not a function of clean's outputs for DVC, but runs whenever dedup has to: new photos
    are audited before dedup takes them, also when the run that brought them (or a `dvc repro`) stopped
    after clean."""
    if force or upstream_changed:
        return None
    changed = versioning.stage_status(root, stage)
    if stage == "audit" and changed == {}:
        changed = versioning.stage_status(root, "dedup")
    return changed


@task(name="stage", task_run_name=stage_task_name)  # type: ignore[arg-type]  # Prefect's callback Protocol has a classmethod no function has
def run_stage(
    stage: str,
    params: Params,
    force: bool,
    root: Path,
    upstream_changed: bool,
    changed: dict | None = None,
    accept_removals: bool = False,
):
    """Run one stage as a subflow unless DVC says it is up to date (`changed` is {}: what_changed, asked
    before the task run so that its name can say it); then record it in dvc.lock.

    When the stage before it has just produced new outputs, this one is out of date by definition
    and DVC is not asked (on 25,000 photos each `dvc status` of the data stages costs seconds).
    (The audit is not a function of clean's outputs for DVC, but runs whenever dedup has to: new photos.)
    accept_removals: ingest may remove more of the collection than ingest.max_removed_fraction.
    """
    log = get_run_logger()
    if changed == {}:
        return Completed(name="Skipped", message=UP_TO_DATE, data=StageRun(stage, ran=False))
    if changed:
        log.info("%s: %s", stage, summary.why_stage_runs(changed))
    elif upstream_changed:
        log.info("%s: its inputs were just rewritten upstream", stage)
    runnable = stage_flow(stage)
    if stage in versioning.DATA_STAGES:
        runnable = runnable.with_options(task_runner=task_runner(params.runner))
    started = time.monotonic()
    options = {"accept_removals": accept_removals} if stage == "ingest" else {}
    state = runnable(params=params, refresh=force, return_state=True, **options)
    if not state.is_completed():
        # Not raised here: Prefect would log it twice more. The flow reports it (StageRun.error), once.
        failed = StageRun(stage, ran=True, error=error_of(state))
        return Failed(message=f"stage {stage} failed", data=failed)
    before = versioning.lock_summary(root).get(stage)
    versioning.commit_stage(root, stage)
    result = state.result()
    return StageRun(
        stage,
        ran=True,
        new_outputs=versioning.lock_summary(root).get(stage) != before,
        seconds=round(time.monotonic() - started, 1),
        # ingest's: what this run changed in the collection (run history and summary, never tracked)
        figures=result.get("figures") if isinstance(result, dict) else None,
    )


def stage_run(state: State, stage: str) -> StageRun:
    """A stage task's outcome from its final state: the StageRun it returned (a failed one carries its
    error), or, for a state that carries none (a crash, a cancellation), its message as the error."""
    out = state.result(raise_on_failure=False) if state.is_completed() or state.is_failed() else None
    if isinstance(out, StageRun):
        return out
    return StageRun(stage, ran=True, error=PawflowError(state.message or f"ended {state.type.value.lower()}"))


@task(name="dvc-push")
def dvc_push(root: Path) -> int:
    """`dvc push` to the default remote (content-addressed: a retry after a failure sends what is
    missing, never a second copy); the pipeline sets its retries from params.yaml pipeline.push_*."""
    return versioning.push(root)


def preflight(root: Path, source: str | None, epochs: int | None, until: str | None) -> dict:
    """Everything a run needs before it takes a lock or asks DVC anything: a workspace, a valid
    params.yaml with the overrides applied, a readable source. Returns the overrides to write."""
    if not (root / "dvc.yaml").exists():
        raise PawflowError(
            f"{root} is not a pawflow workspace (no dvc.yaml).",
            "Start `pawflow serve` (or the flow) from the project folder.",
        )
    if until is not None and until not in versioning.STAGES:
        raise PawflowError(f"until={until!r} is not a stage.", f"Use one of {', '.join(versioning.STAGES)}.")
    updates = {k: v for k, v in {"ingest.source": source, "train.epochs": epochs}.items() if v is not None}
    params, _, _ = versioning.planned_params(root / "params.yaml", updates)
    check_source_of(params, root)
    check_exclude(params, root)  # a malformed line is refused here; unmatched entries: dedup warns
    return updates


def record_check(root: Path, params: Params) -> None:
    """The check stage of dvc.yaml, done here (the checks already passed): its output and dvc.lock."""
    if versioning.stage_status(root, versioning.CHECK_STAGE):
        write_checked(params)
        versioning.commit_stage(root, versioning.CHECK_STAGE)


@task(name="stage", task_run_name="base")
def set_base(
    params: Params, root: Path, warm_start: bool, full_retrain: bool, force: bool, upstream_changed: bool
):
    """models/base before train: the champion (a warm start), empty (from scratch) or left as it is
    (tasks.base.choose_base decides), then recorded with `dvc commit base` when it changed."""
    log = get_run_logger()
    started = time.monotonic()
    choice, why, new_outputs = prepare_base(params, root, warm_start, full_retrain, force or upstream_changed)
    log.info("models/base: %s (%s)", "the champion" if choice == "champion" else choice, why)
    if not new_outputs:
        return Completed(
            name="Skipped", message=f"models/base unchanged: {why}", data=StageRun("base", ran=False)
        )
    return StageRun("base", ran=True, new_outputs=True, seconds=round(time.monotonic() - started, 1))


def workspace_limit():
    """The global concurrency limit `pawflow serve` creates, taken only by a deployment's run (it does not
    exist for a plain local run, where the workspace lock is what keeps runs apart)."""
    if deployment.id:
        return concurrency(CONCURRENCY_LIMIT, occupy=1, strict=False)
    return contextlib.nullcontext()


@flow(name="pipeline", flow_run_name=pipeline_run_name, log_prints=True)
@friendly
def pipeline(
    source: str | None = None,
    epochs: int | None = None,
    force: bool = False,
    push: bool | None = None,
    until: str | None = None,
    warm_start: bool = False,
    full_retrain: bool = False,
    accept_removals: bool = False,
) -> dict:
    """ingest -> clean -> audit -> dedup -> shard -> base -> train -> evaluate, each skipped when DVC says
    it is up to date.

    source/epochs override params.yaml (and are written into it, so that dvc.lock and params agree);
    force re-runs every stage without caches; push overrides pipeline.push.
    until stops after that stage (e.g. until="shard": the data stages only).
    warm_start: when train has to run, fine-tune the champion if nothing model-shaping changed and the
    collection did not outgrow train.finetune (docs/design.md, "Warm start"); full_retrain: a model
    trained from scratch, even when nothing else changed.
    accept_removals: let ingest remove whatever the source no longer holds, even more than
    ingest.max_removed_fraction of the collection (docs/collection.md "The guard").
    """
    quiet_user_errors()
    log = get_run_logger()
    root = Path.cwd()
    started_at = nightly.now()
    run = {"id": runs.run_id(started_at), "started": started_at, "entry": deployment.name or "pipeline"}
    run["flow_run"] = {"id": flow_run.id, "url": run_url(flow_run.id)}
    try:
        return _pipeline(
            log, root, run, source, epochs, force, push, until, warm_start, full_retrain, accept_removals
        )
    except PawflowError as err:
        failed_run(log, root, run, err)
        raise
    except Exception as err:  # a crash: alerted too, then Prefect reports it with its traceback
        failed_run(log, root, run, PawflowError(f"{type(err).__name__}: {err}"))
        raise


def run_url(flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI (what "View at" prints; prefect.runtime's ui_url names a
    path the UI does not have)."""
    from prefect.utilities.urls import url_for

    return url_for("flow-run", obj_id=flow_run_id) if flow_run_id else None


def failed_run(log, root: Path, run: dict, err: PawflowError) -> None:
    """A failed run: its line in the run history and a `run_failed` alert (when params.yaml can be read).
    A run refused before it started (bad params, a bad source: preflight) by a person at a terminal is
    only the message they see, nothing written; a deployment's (a scheduled night) is recorded and alerted,
    as nobody watches it."""
    if not run.get("started_work") and not deployment.id:
        return
    facts = nightly.base_facts(run["id"], run["started"], run["entry"], run["flow_run"])
    facts.update(outcome="failed", error=one_line(err.what))
    nightly.record_failed(root, facts, log)


def _pipeline(
    log,
    root: Path,
    run: dict,
    source: str | None,
    epochs: int | None,
    force: bool,
    push: bool | None,
    until: str | None,
    warm_start: bool,
    full_retrain: bool,
    accept_removals: bool,
) -> dict:
    started = time.monotonic()
    updates = preflight(root, source, epochs, until)  # before any lock, DVC call or write
    run["started_work"] = True
    stages_to_run = versioning.STAGES[: versioning.STAGES.index(until) + 1] if until else versioning.STAGES
    with workspace_limit(), run_lock(root):
        updated = versioning.set_params(root / "params.yaml", updates)
        for key, (old, new) in updated.items():
            log.info("params.yaml: %s %r -> %r", key, old, new)
        params = load_params(root / "params.yaml")
        for leftover in tidy_workspace(params):
            log.warning("removed %s (left by an interrupted run)", leftover)
        record_check(root, params)
        stages: dict[str, str] = {}
        collection = None  # ingest's figures: what this run changed in the collection
        upstream_changed = False
        for stage in stages_to_run:
            if stage == "base":
                state = set_base(
                    params, root, warm_start, full_retrain, force, upstream_changed, return_state=True
                )
            else:
                changed = what_changed(root, stage, force, upstream_changed)
                state = run_stage(
                    stage, params, force, root, upstream_changed, changed, accept_removals, return_state=True
                )
            out = stage_run(state, stage)
            if out.error is not None:
                # The stage's message says what to do; the stages before it are recorded in dvc.lock.
                raise PawflowError(f"stage {stage} failed: {out.error.what}", out.error.fix)
            collection = out.figures if stage == "ingest" else collection
            # base passes on a change upstream of it: train must run for new shards even if base is kept
            upstream_changed = out.new_outputs or (stage == "base" and upstream_changed)
            stages[stage] = out.status
        no_new_data = not force and not any(ran(stages, s) for s in stages_to_run[1:])
        if no_new_data:
            log.info("no new data: the source has not changed since the last run; nothing retrained")
        pushed = None
        if (params.pipeline.push if push is None else push) and versioning.has_default_remote(root):
            p = params.pipeline
            pushed = dvc_push.with_options(retries=p.push_retries, retry_delay_seconds=p.push_retry_delay_s)(
                root
            )
            log.info("dvc push: %s file(s) sent to the default remote", pushed)
        facts, previous = finish_run(log, root, params, run, stages, no_new_data, started)
        record = versioning.record_run(
            root,
            params,
            "prefect",
            stages,
            {
                "seconds": facts["wall_s"],
                "pushed": pushed,
                "no_new_data": no_new_data,
                "collection": collection,
                **summary.train_start(params.paths.reports),
                "run_id": run["id"],
                "run": facts,
                "version": facts.get("version"),
            },
        )
        if facts.get("version"):
            try:
                collected = nightly.retention(root, params)
            except PawflowError as err:  # the run itself succeeded and is recorded: say so, go on
                log.warning("retention not applied: %s %s", err.what, err.fix or "")
                collected = None
            if collected:
                log.info(
                    "retention (pipeline.keep_runs %d): dropped run(s) %s; removed %d cache and %d remote "
                    "object(s)",
                    params.pipeline.keep_runs,
                    ", ".join(collected["dropped"]),
                    collected["removed_cache_objects"],
                    collected["removed_remote_objects"],
                )
    nightly.alert(params, facts, previous, log)
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=summary.pipeline_markdown(
            params.paths.reports, stages, no_new_data, versioning.STAGES, collection
        )
        + runs.changes_markdown(facts),
        description="what this pipeline run did",
    )
    create_table_artifact(
        key="pipeline-run",
        table=[{"key": k, "value": json.dumps(v, default=str)} for k, v in record.items() if k != "run"],
        description="dvc.lock hashes, params and metrics of this run",
    )
    history = nightly.history(root, params)
    create_markdown_artifact(
        key="pipeline-history",
        markdown=runs.history_markdown(history),
        description="every recorded run: accuracy of the champion and of each run's model",
    )
    return record


def finish_run(
    log, root: Path, params: Params, run: dict, stages: dict[str, str], no_new_data: bool, started: float
) -> tuple[dict, dict | None]:
    """The run's facts and its version (when an output changed); (facts, the previous run's facts)."""
    earlier = nightly.history(root, params)
    facts = nightly.gather(
        root, params, run["id"], run["started"], run["entry"], stages, no_new_data, run["flow_run"]
    )
    facts["wall_s"] = round(time.monotonic() - started, 1)
    facts["version"] = nightly.record_version(root, facts)
    if not runstore.is_repo(root):
        log.warning("%s is not a git repository with a commit: runs are not recorded as versions", root)
    elif facts["version"]:
        log.info("recorded as run %s (pawflow restore %s)", run["id"], run["id"])
    log.info("%s", runs.gate_sentence(facts))
    return facts, next((f for f in earlier if f.get("outcome") == "completed"), None)


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.pipeline [--source S] [--epochs N] [--force] [--no-push]
    [--warm-start | --full-retrain] [--accept-removals]`: one run, no deployment."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=pipeline.description)
    parser.add_argument(
        "--source", metavar="PATH_OR_URL", help="the photos: a folder, archive or URL (sets ingest.source)"
    )
    parser.add_argument("--epochs", type=int, metavar="N", help="training epochs (sets train.epochs)")
    parser.add_argument("--force", action="store_true", help="re-run every stage, without caches")
    parser.add_argument(
        "--no-push",
        dest="push",
        action="store_const",
        const=False,
        default=None,
        help="do not dvc push afterwards (default: pipeline.push in params.yaml)",
    )
    parser.add_argument("--until", choices=versioning.STAGES, help="stop after this stage")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--warm-start", action="store_true", help="fine-tune the champion when train runs")
    start.add_argument("--full-retrain", action="store_true", help="a model trained from scratch")
    parser.add_argument(
        "--accept-removals",
        action="store_true",
        help="let ingest remove what the source lost even above ingest.max_removed_fraction",
    )
    args = parser.parse_args(argv)
    owner = argv is None  # the process's own command line: it ends itself on a stop (flows.stops)
    if owner:  # its flow runs against the background server unless an API is set, as the stages' do
        use_background_server()
    quiet_user_errors()
    root = Path.cwd()
    try:
        # Bad params, a bad source or a busy workspace: one message and exit 2, before any flow run.
        preflight(root, args.source, args.epochs, args.until)
        with run_lock(root):
            pass
    except PawflowError as err:
        return report("pawflow pipeline", err)
    kept = (
        "Finished stages are recorded in dvc.lock and nothing half-written carries a final name; run "
        "again to complete."
    )
    guard = StopGuard(
        lambda stop: print(message("pawflow pipeline", stop, kept), file=sys.stderr, flush=True),
        owner=owner,
        api_url=os.environ.get("PREFECT_API_URL") if owner else None,
    )
    try:
        with guard:
            state = pipeline(
                source=args.source,
                epochs=args.epochs,
                force=args.force,
                push=args.push,
                until=args.until,
                warm_start=args.warm_start,
                full_retrain=args.full_retrain,
                accept_removals=args.accept_removals,
                return_state=True,
            )
    except (KeyboardInterrupt, Terminated) as err:
        return guard.finish(err)
    if not state.is_completed():
        print(f"\npawflow pipeline failed: {error_of(state)}", file=sys.stderr)
        return ExitCode.FAILED
    if ran(state.result().get("stages", {}), "evaluate"):
        print(nightly.closing_lines(root, load_params(root / "params.yaml")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
