"""pipeline: the whole DAG as one Prefect flow run, leaving exactly the state `dvc repro` leaves.

Each stage is a task that asks DVC whether the stage is up to date (its deps, params and outs match
dvc.lock). If it is, the task ends Skipped; if not, it runs the stage's flow as a subflow and records
the result with `dvc commit`, so dvc.lock, the outputs and the DVC cache agree exactly as after
`dvc repro`. Then `dvc push`, a line in reports/runs.jsonl, and a summary artifact.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency
from prefect.runtime import deployment
from prefect.states import Completed, Failed

from flows.common import (
    error_of,
    friendly,
    quiet_user_errors,
    run_lock,
    task_runner,
    tidy_workspace,
)
from flows.stops import StopGuard, Terminated, message
from tasks import summary, versioning, warmstart
from tasks.datasetinfo import DatasetInfo
from tasks.errors import PawflowError
from tasks.params import Params, load_params
from tasks.preflight import check_source, write_checked


def stage_flow(stage: str):
    """flows.<stage>.<stage>_flow, imported only when the stage runs (a no-op run stays fast)."""
    return getattr(importlib.import_module(f"flows.{stage}"), f"{stage}_flow")


# One pipeline run per workspace at a time, across every deployment (created by `pawflow serve`).
CONCURRENCY_LIMIT = "pawflow-workspace"
# A failed stage's error, from run_stage to the pipeline flow (tasks run in the flow's process).
_stage_errors: dict[str, PawflowError] = {}


@task(name="stage", task_run_name="{stage}")
def run_stage(stage: str, params: Params, force: bool, root: Path, upstream_changed: bool):
    """Run one stage as a subflow unless DVC says it is up to date; then record it in dvc.lock.

    When the stage before it has just produced new outputs, this one is out of date by definition
    and DVC is not asked (on 25,000 photos each `dvc status` of the data stages costs seconds).
    """
    log = get_run_logger()
    changed = None if force or upstream_changed else versioning.stage_status(root, stage)
    if changed == {}:
        return Completed(
            name="Skipped", message="up to date in dvc.lock", data={"stage": stage, "ran": False}
        )
    if changed:
        log.info("%s: %s", stage, summary.why_stage_runs(changed))
    elif upstream_changed:
        log.info("%s: its inputs were just rewritten upstream", stage)
    runnable = stage_flow(stage)
    if stage in versioning.DATA_STAGES:
        runnable = runnable.with_options(task_runner=task_runner(params.runner))
    started = time.monotonic()
    state = runnable(params=params, refresh=force, return_state=True)
    if not state.is_completed():
        # Not raised here, nor put in the state: Prefect would log it twice more. The flow reports it.
        _stage_errors[stage] = error_of(state)
        return Failed(message=f"stage {stage} failed")
    before = versioning.lock_summary(root).get(stage)
    versioning.commit_stage(root, stage)
    new_outputs = versioning.lock_summary(root).get(stage) != before
    return {
        "stage": stage,
        "ran": True,
        "new_outputs": new_outputs,
        "seconds": round(time.monotonic() - started, 1),
    }


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
    check_source(params.ingest.source, root)
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
    (tasks.warmstart.choose_base decides), then recorded with `dvc commit base` when it changed."""
    log = get_run_logger()
    started = time.monotonic()
    folder = params.paths.models / "base"
    before = versioning.lock_summary(root).get("base")
    base_changed = bool(versioning.stage_status(root, "base"))  # missing, or its code changed
    current = warmstart.ensure_base(folder)
    if base_changed:
        versioning.commit_stage(root, "base")
    info_path = DatasetInfo.path(params.paths.processed)
    choice, why = "keep", f"{info_path} not found"
    champion = warmstart.base_from_champion(params.paths.models / "champion")
    if info_path.exists():
        info = DatasetInfo.read(params.paths.processed)
        will_run = force or upstream_changed or bool(versioning.stage_status(root, "train"))
        choice, why = warmstart.choose_base(
            warm_start,
            full_retrain,
            will_run,
            current,
            champion,
            warmstart.shaping(params.train, info),
            warmstart.train_examples(info),
            params.train.finetune,
        )
    if choice == "champion":
        warmstart.write_base(folder, champion)
    elif choice == "scratch" and current is not None:
        warmstart.write_base(folder, None)
    if choice != "keep":
        versioning.commit_stage(root, "base")
    new_outputs = versioning.lock_summary(root).get("base") != before
    log.info("models/base: %s (%s)", "the champion" if choice == "champion" else choice, why)
    if not new_outputs:
        return Completed(
            name="Skipped", message=f"models/base unchanged: {why}", data={"stage": "base", "ran": False}
        )
    return {
        "stage": "base",
        "ran": True,
        "new_outputs": True,
        "seconds": round(time.monotonic() - started, 1),
    }


def workspace_limit():
    """The global concurrency limit `pawflow serve` creates, taken only by a deployment's run (it does not
    exist for a plain local run, where the workspace lock is what keeps runs apart)."""
    if deployment.id:
        return concurrency(CONCURRENCY_LIMIT, occupy=1, strict=False)
    return contextlib.nullcontext()


@flow(name="pipeline", log_prints=True)
@friendly
def pipeline(
    source: str | None = None,
    epochs: int | None = None,
    force: bool = False,
    push: bool | None = None,
    until: str | None = None,
    warm_start: bool = False,
    full_retrain: bool = False,
) -> dict:
    """ingest -> clean -> dedup -> shard -> train -> evaluate, each skipped when DVC says it is up to date.

    source/epochs override params.yaml (and are written into it, so that dvc.lock and params agree);
    force re-runs every stage without caches; push overrides pipeline.push.
    until stops after that stage (e.g. until="shard": the data stages only).
    warm_start: when train has to run, fine-tune the champion if nothing model-shaping changed and the
    collection did not outgrow train.finetune (README "Warm-start training"); full_retrain: a model
    trained from scratch, even when nothing else changed.
    """
    quiet_user_errors()
    log = get_run_logger()
    root = Path.cwd()
    started = time.monotonic()
    updates = preflight(root, source, epochs, until)  # before any lock, DVC call or write
    stages_to_run = versioning.STAGES[: versioning.STAGES.index(until) + 1] if until else versioning.STAGES
    with workspace_limit(), run_lock(root):
        changed = versioning.set_params(root / "params.yaml", updates)
        for key, (old, new) in changed.items():
            log.info("params.yaml: %s %r -> %r", key, old, new)
        params = load_params(root / "params.yaml")
        for leftover in tidy_workspace(params):
            log.warning("removed %s (left by an interrupted run)", leftover)
        record_check(root, params)
        stages: dict[str, str] = {}
        upstream_changed = False
        for stage in stages_to_run:
            if stage == "base":
                state = set_base(
                    params, root, warm_start, full_retrain, force, upstream_changed, return_state=True
                )
            else:
                state = run_stage(stage, params, force, root, upstream_changed, return_state=True)
            if state.is_failed():
                # The stage's message says what to do; the stages before it are recorded in dvc.lock.
                err = _stage_errors.pop(stage, None) or PawflowError(state.message or "failed")
                raise PawflowError(f"stage {stage} failed: {err.what}", err.fix)
            out = state.result()
            # base passes on a change upstream of it: train must run for new shards even if base is kept
            upstream_changed = bool(out.get("new_outputs")) or (stage == "base" and upstream_changed)
            stages[stage] = f"ran ({out['seconds']}s)" if out["ran"] else "skipped (up to date)"
        no_new_data = not force and all(stages[s].startswith("skipped") for s in stages_to_run[1:])
        if no_new_data:
            log.info("no new data: the source has not changed since the last run; nothing retrained")
        pushed = None
        if (params.pipeline.push if push is None else push) and versioning.has_default_remote(root):
            pushed = versioning.push(root)
            log.info("dvc push: %s file(s) sent to the default remote", pushed)
        seconds = round(time.monotonic() - started, 1)
        record = versioning.record_run(
            root,
            params,
            "prefect",
            stages,
            {
                "seconds": seconds,
                "pushed": pushed,
                "no_new_data": no_new_data,
                **summary.train_start(params.paths.reports),
            },
        )
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=summary.pipeline_markdown(params.paths.reports, stages, no_new_data, versioning.STAGES),
        description="what this pipeline run did",
    )
    create_table_artifact(
        key="pipeline-run",
        table=[{"key": k, "value": json.dumps(v, default=str)} for k, v in record.items()],
        description="dvc.lock hashes, params and metrics of this run",
    )
    html = params.paths.reports / "evaluation.html"
    if html.exists():
        create_link_artifact(
            key="evaluation-html", link=html.resolve().as_uri(), link_text="reports/evaluation.html"
        )
    return record


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.pipeline [--source S] [--epochs N] [--force] [--no-push]
    [--warm-start | --full-retrain]`: one run, no deployment."""
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
    args = parser.parse_args(argv)
    quiet_user_errors()
    root = Path.cwd()
    try:
        # Bad params, a bad source or a busy workspace: one message and exit 2, before any flow run.
        preflight(root, args.source, args.epochs, args.until)
        with run_lock(root):
            pass
    except PawflowError as err:
        print(f"\npawflow pipeline: {err}", file=sys.stderr)
        return 2
    owner = argv is None  # the process's own command line: it ends itself on a stop (flows.stops)
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
                return_state=True,
            )
    except (KeyboardInterrupt, Terminated) as err:
        return guard.finish(err)
    if not state.is_completed():
        print(f"\npawflow pipeline failed: {error_of(state)}", file=sys.stderr)
        return 1
    if state.result().get("stages", {}).get("evaluate", "").startswith("ran"):
        from flows.cli import closing_lines

        print(closing_lines(root, load_params(root / "params.yaml")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
