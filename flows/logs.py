"""`pawflow logs [RUN]`: follow a flow run's log lines live, its subflows' included, and end with its outcome.

`prefect deployment run ... --watch` prints state changes only. This polls the API (read_logs filtered on
the run and its subflow runs) and prints each line once, in time order, until the run is final and its
last lines are in; the exit code is the run's outcome (0 completed, 1 failed or crashed, 130 cancelled).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from tasks.core.errors import ExitCode, PawflowError

POLL_S = 1.0
# After the run is final, keep polling this long for log lines still on their way (the API log
# worker sends in batches, every ~2 s).
DRAIN_S = 4.0
PAGE = 200
LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


def _uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


def find_run(client: Any, run: str | None) -> Any:
    """The flow run named by id or name; without one, the newest top-level run (not a subflow)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterParentTaskRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    if run:
        uid = _uuid(run)
        if uid:
            try:
                return client.read_flow_run(uid)
            except Exception:  # ObjectNotFound, and any API error: reported as not found
                pass
        found = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run])), limit=1
        )
        if found:
            return found[0]
        raise PawflowError(
            f"no flow run {run!r} in the Prefect API.",
            "Give a flow run's id or name (`prefect flow-run ls`), or none to follow the latest run.",
        )
    top = FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=True))
    for sort in (FlowRunSort.START_TIME_DESC, FlowRunSort.EXPECTED_START_TIME_DESC):
        found = [r for r in client.read_flow_runs(flow_run_filter=top, sort=sort, limit=5) if r.start_time]
        if found:
            return found[0]
    found = client.read_flow_runs(flow_run_filter=top, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
    if not found:
        raise PawflowError(
            "no flow run in the Prefect API yet.",
            "Start one (`prefect deployment run pipeline/manual`), then follow it with `pawflow logs`.",
        )
    return found[0]


def family(client: Any, root_id: UUID) -> list[UUID]:
    """The run and every subflow run under it, at any depth."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    ids, frontier = [root_id], [root_id]
    while frontier:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier))
        )
        frontier = [c.id for c in children if c.id not in ids]
        ids += frontier
    return ids


def format_line(log: Any, names: dict[UUID, str]) -> str:
    when = log.timestamp.strftime("%H:%M:%S")
    level = LEVELS.get(log.level, str(log.level))
    who = names.get(log.flow_run_id, "")
    return f"{when} {level:<7} {who} | {log.message}"


def exit_code(state: Any) -> int:
    if state is None:
        return ExitCode.FAILED
    if state.is_completed():
        return ExitCode.OK
    if state.is_cancelled() or state.is_cancelling():
        return ExitCode.INTERRUPTED
    return ExitCode.FAILED


def follow(
    run: str | None, write: Callable[[str], None] = print, poll_s: float = POLL_S, drain_s: float = DRAIN_S
) -> int:
    """Print the run's log lines as they arrive; returns the run's outcome as an exit code."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:
        flow_run = find_run(client, run)
        write(f"following flow run {flow_run.name} ({flow_run.id}); Ctrl-C stops following, not the run")
        seen: set[UUID] = set()
        after = None
        final_since: float | None = None
        while True:
            ids = family(client, flow_run.id)
            names = {
                r.id: r.name for r in client.read_flow_runs(limit=len(ids) + 1, flow_run_filter=_ids(ids))
            }
            while True:
                flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))
                if after is not None:
                    flt.timestamp = LogFilterTimestamp(after_=after)
                page = client.read_logs(log_filter=flt, sort=LogSort.TIMESTAMP_ASC, limit=PAGE)
                fresh = [entry for entry in page if entry.id not in seen]
                for entry in fresh:
                    seen.add(entry.id)
                    write(format_line(entry, names))
                if page:
                    after = page[-1].timestamp
                if len(page) < PAGE or not fresh:
                    break
            state = client.read_flow_run(flow_run.id).state
            if state is not None and state.is_final():
                final_since = final_since or time.monotonic()
                if time.monotonic() - final_since >= drain_s:
                    write(
                        f"flow run {flow_run.name}: {state.name}"
                        + (f": {state.message}" if state.message else "")
                    )
                    return exit_code(state)
            time.sleep(poll_s)


def _ids(ids: list[UUID]) -> Any:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=ids))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return follow(args[0] if args else None)


if __name__ == "__main__":
    sys.exit(main())
