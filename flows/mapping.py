"""How clean and shard map their per-photo chunks: Prefect task runs (runner.kind threads or processes), or
plain functions on the workers of a Dask cluster (runner.kind dask, tasks/scaleout/workers.py,
docs/scale-out.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.utilities.annotations import unmapped

from tasks.core.params import Params
from tasks.scaleout import workers
from tasks.scaleout.workers import Finished


class _Log:
    """The flow run's logger (Prefect's logs and the terminal) or, outside a flow run, the terminal."""

    def info(self, text: str) -> None:
        if FlowRunContext.get() is None:
            print(text, flush=True)
        else:
            get_run_logger().info("%s", text)

    def warning(self, text: str) -> None:
        if FlowRunContext.get() is None:
            print(text, flush=True)
        else:
            get_run_logger().warning("%s", text)


class TaskRuns:
    """The chunks as Prefect task runs on the flow's task runner; iterate for Finished in completion order."""

    def __init__(self, task: Any, parts: list[list], kwargs: dict[str, Any]) -> None:
        self.task, self.parts, self.kwargs = task, parts, kwargs
        self.departures: list[workers.Departure] = []

    def __iter__(self) -> Iterator[Finished]:
        if not self.parts:
            return
        futures = self.task.map(self.parts, **{k: unmapped(v) for k, v in self.kwargs.items()})
        index = {id(f): i for i, f in enumerate(futures)}
        for f in as_completed(futures):
            yield Finished(index[id(f)], "", f.result())


@contextmanager
def map_chunks(
    params: Params,
    name: str,
    parts: list[list],
    task: Any,
    plain: Callable[..., Any],
    samples: list[Path],
    **kwargs: Any,
) -> Iterator[TaskRuns | workers.ChunkMap]:
    """`plain(part, **kwargs)` for every part, as `task` runs (whose body is that call) or, under Dask, on the
    cluster's workers; yields an iterable of Finished (completion order) with `departures` and figures().

    Under Dask, nothing is handed out before the cluster has a worker (runner.no_worker_timeout_s) and every
    worker has shown that it sees this workspace (a marker file and `samples`, absolute paths of photos the
    parts will read) and runs its code; paths in kwargs must be absolute.
    """
    runner = params.runner
    if runner.kind != "dask" or not parts:  # nothing to hand out: no cluster to start or to ask
        yield TaskRuns(task, parts, kwargs)
        return
    log = _Log()
    sizes = []
    for path in samples:
        try:
            sizes.append((path, path.stat().st_size))
        except OSError:
            continue  # this process cannot see it either: its verdict says so (missing, unreadable)
    with workers.cluster(runner) as client:
        count = workers.wait_for_workers(client, runner, log.info)
        with workers.expectation(Path.cwd(), params.paths.cache, sizes) as expect:
            workers.check_workers(client, expect)
            link = workers.dashboard(client)
            log.info(
                f"dask: {count} worker(s) at {runner.dask_address or 'a local cluster'} see this workspace "
                f"and run its code; {len(parts)} chunk(s) of {name} to map"
                + (f"; dashboard: {link}" if link else "")
            )
            yield workers.ChunkMap(client, runner, name, plain, parts, kwargs, expect, log.warning)


def figures(run: TaskRuns | workers.ChunkMap, params: Params) -> dict[str, Any]:
    """How the chunks were mapped, for the run history (where they ran, who left, what was redone)."""
    if isinstance(run, TaskRuns):
        return {"kind": params.runner.kind, "chunks": len(run.parts)}
    out: dict[str, Any] = {"kind": params.runner.kind, "chunks": len(run.chunks)}
    if isinstance(run, workers.ChunkMap):
        out["dask_address"] = params.runner.dask_address
        out["chunks_per_worker"] = dict(sorted(run.per_worker.items()))
        out["workers_lost"] = [
            {"worker": d.worker, "expected": d.expected, "chunks_redone": len(d.redone)}
            for d in run.departures
        ]
    return out
