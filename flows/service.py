"""What `pawflow serve` closes before it serves: the runs a serving process left behind when it ended.

When the process that runs a deployment's flow run ends with it (a machine restart, `kill -9` of
`pawflow serve`, an out-of-memory kill), Prefect records nothing: the run stays Running, and it keeps
its deployment's concurrency slot (limit 1, runs queued) and the workspace's global one
(flows.pipeline.workspace_limit). Prefect frees slots whose lease expires, but a server restarted
since keeps no lease (its lease storage is in memory): every later run of that deployment then waits
in AwaitingConcurrencySlot for ever, and the nightly service stops without a word.

So `pawflow serve` starts by closing them. Deployment runs execute as children of the `pawflow serve`
of this workspace; when none is alive and no run holds the workspace lock, a run of its deployments
that is still Pending, Running or Cancelling runs nowhere. Each is marked Crashed (which frees its
deployment's slot), so are its stage subflows, it gets its line in the run history as a failed run,
and its `run_failed` alert. The workspace's global limit is made again, empty: a slot of a dead
process's lease cannot come back.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from flows.lock import lock_holder
from tasks.history import nightly, runs

log = logging.getLogger("pawflow.serve")

# The deployments `pawflow serve` serves (flows.cli.deployments), as Prefect names them.
FLOW = "pipeline"
DEPLOYMENTS = ("manual", "retrain-nightly", "retrain-full")
LEFT_STATES = ("PENDING", "RUNNING", "CANCELLING")
LEFT_REASON = (
    "its serving process ended during the run (a machine restart, or `pawflow serve` killed); "
    "`pawflow serve` marked it crashed when it started again"
)


@dataclass(frozen=True)
class LeftRun:
    """A deployment's flow run that no process runs any more."""

    flow_run_id: str
    name: str
    deployment: str
    state: str
    started: datetime | None


def other_serve(root: Path) -> str | None:
    """'pid N: command' of another `pawflow serve` whose folder is this workspace; None when there is none."""
    import psutil

    me = os.getpid()
    here = root.resolve()
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        info = proc.info
        cmd = info.get("cmdline") or []
        if info["pid"] == me or not cmd or "serve" not in cmd:
            continue
        if not any(Path(part).name == "pawflow" for part in cmd[:2]):
            continue
        if info.get("cwd") and Path(info["cwd"]).resolve() == here:
            return f"pid {info['pid']}: {' '.join(cmd)}"
    return None


def why_not_now(root: Path) -> str | None:
    """Why a run left Pending or Running may still be alive (then nothing is closed); None when none can."""
    holder = lock_holder(root)
    if holder:
        return f"a pawflow run holds this workspace ({holder})"
    serving = other_serve(root)
    if serving:
        return f"another `pawflow serve` serves this workspace ({serving})"
    return None


def left_states() -> Any:
    """Prefect's filter of the states a left run is in (LEFT_STATES)."""
    from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    return FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in LEFT_STATES]))


def left_runs(client: Any) -> list[LeftRun]:
    """The runs of this workspace's deployments that are Pending, Running or Cancelling."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
    from prefect.exceptions import ObjectNotFound

    names = {}
    for name in DEPLOYMENTS:
        try:
            names[client.read_deployment_by_name(f"{FLOW}/{name}").id] = name
        except ObjectNotFound:  # never served here: nothing of it can be left
            continue
    if not names:
        return []
    found = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(state=left_states()),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(names))),
    )
    return [
        LeftRun(
            flow_run_id=str(r.id),
            name=r.name,
            deployment=names[r.deployment_id],
            state=r.state.type.value if r.state else "UNKNOWN",
            started=r.start_time or r.expected_start_time,
        )
        for r in found
        if r.deployment_id in names
    ]


def crash(client: Any, run: LeftRun) -> None:
    """Mark a left run and its unfinished stage subflows Crashed (the server frees the run's slot)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.states import Crashed

    subflows = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(run.flow_run_id)]),
            state=left_states(),
        )
    )
    for sub in subflows:
        client.set_flow_run_state(sub.id, Crashed(message=f"its pipeline run crashed: {LEFT_REASON}"))
    client.set_flow_run_state(run.flow_run_id, Crashed(message=LEFT_REASON))


def record(root: Path, run: LeftRun, url: str | None) -> dict:
    """The left run as a failed run: its facts, recorded in the run history and alerted."""
    started = run.started or nightly.now()
    facts = nightly.base_facts(
        runs.run_id(started), started, run.deployment, {"id": run.flow_run_id, "url": url}
    )
    facts.update(outcome="failed", error=f"flow run {run.name}: {LEFT_REASON}", wall_s=None)
    nightly.record_failed(root, facts, log)
    return facts


def close_left_runs(client: Any, root: Path, limit_name: str) -> list[dict]:
    """Close the runs a serving process left behind (see the module) and make the workspace's global
    limit (limit_name) ready for the runs to come; returns the closed runs' recorded facts. Nothing is
    closed while a run may still be alive (why_not_now), which is logged."""
    from prefect.exceptions import ObjectNotFound

    from flows.pipeline import run_url

    closed = []
    why = why_not_now(root)
    if why:
        log.info("runs left Running by an earlier `pawflow serve` are not checked: %s", why)
    else:
        for run in left_runs(client):
            crash(client, run)
            facts = record(root, run, run_url(run.flow_run_id))
            log.warning(
                "flow run %s (%s, %s) marked crashed: %s", run.name, run.deployment, run.state, LEFT_REASON
            )
            closed.append(facts)
        # made again: the slot of a dead process's lease (kept by no server, or by one) is gone with it
        with contextlib.suppress(ObjectNotFound):
            client.delete_global_concurrency_limit_by_name(limit_name)
    client.upsert_global_concurrency_limit_by_name(limit_name, limit=1)
    return closed
