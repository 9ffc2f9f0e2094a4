"""What every stage flow shares: its command line, task runners, caching, errors, summaries."""

from __future__ import annotations

import functools
import importlib
import io
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

from prefect.cache_policies import TASK_SOURCE, CachePolicy, Inputs
from prefect.states import Failed, State
from prefect.utilities.hashing import hash_objects
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flows.command import stage_arguments
from flows.lock import run_lock
from flows.server import use_background_server
from flows.stops import StopGuard, Terminated, message
from tasks.core import stopping
from tasks.core.errors import ExitCode, PawflowError, Refused, report
from tasks.core.fileio import (
    code_fingerprint,
    no_space_cause,
    no_space_somewhere,
    remove_leftovers,
)
from tasks.core.params import Params, Runner, load_params
from tasks.core.stopping import Stopped
from tasks.history import records
from tasks.history.records import StageLine

# --------------------------------------------------------------------------- caching


@dataclass
class CodeOf(CachePolicy):
    """Part of a cache key: the source code of the modules that compute a task's result."""

    modules: tuple[str, ...] = ()

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        # import_module, not sys.modules: a module the task imports lazily may not be loaded yet.
        # What the code computes (tasks.core.fileio.code_fingerprint): a comment or docstring edit keeps the
        # key.
        return hash_objects(*(code_fingerprint(importlib.import_module(m)) for m in self.modules))


def content_cache(*modules: str, exclude: tuple[str, ...] = ()) -> CachePolicy:
    """Key = the task's inputs (which carry content hashes, never bare paths) + its code + `modules`."""
    return Inputs(exclude=list(exclude)) + TASK_SOURCE + CodeOf(modules=modules)


def result_storage(params: Params) -> Path:
    """Task results live in the project (paths.cache), so any process or server finds them."""
    return (params.paths.cache / "prefect").resolve()


# --------------------------------------------------------------------------- run names

# What the Prefect UI lists a pipeline run as, by deployment: the entry point, then the date.
ENTRY_OF_DEPLOYMENT = {"manual": "manual", "retrain-nightly": "nightly", "retrain-full": "full"}
RUN_DATE = "%Y-%m-%d-%H%M"  # the run's scheduled (or actual) start, UTC


def _started() -> str:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx else None
    when = flow_run.expected_start_time if flow_run and flow_run.expected_start_time else None
    return (when or datetime.now(UTC)).astimezone(UTC).strftime(RUN_DATE)


def pipeline_run_name() -> str:
    """`nightly-2026-12-05-0300`, `full-...`, `manual-...` (the deployments), `local-...` (python -m
    flows.pipeline): the Prefect UI's name of a pipeline run, instead of a random one."""
    from prefect.runtime import deployment

    name = deployment.name
    entry = ENTRY_OF_DEPLOYMENT.get(name, name) if name else "local"
    return f"{entry}-{_started()}"


def stage_run_name() -> str:
    """A stage flow run's name: the stage (`train`) inside a pipeline run; standalone, the entry point
    that started it and the date (`dvc-repro-train-2026-12-05-0812`, `dvc-exp-...`, `train-...`)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    stage = ctx.flow.name if ctx and ctx.flow else "stage"
    if ctx and ctx.flow_run and ctx.flow_run.parent_task_run_id is not None:
        return stage  # a subflow: its pipeline run carries the entry point and date
    if os.environ.get("DVC_EXP_NAME"):
        entry = "dvc-exp-"
    elif os.environ.get("DVC_STAGE"):
        entry = "dvc-repro-"
    else:
        entry = ""
    return f"{entry}{stage}-{_started()}"


# --------------------------------------------------------------------------- task runners


def _stopping(exc_type: type[BaseException] | None) -> bool:
    """The runner's flow is ending because the run was stopped (Ctrl-C, SIGTERM, a cancelled run), not
    normally or with an error: a BaseException that is not an Exception."""
    return exc_type is not None and not issubclass(exc_type, Exception)


def task_runner(runner: Runner) -> Any:
    """The Prefect task runner of a stage's tasks: processes for runner.kind processes, else threads.

    Under runner.kind dask the per-photo chunks do not go through it: clean and shard hand them to the
    cluster's workers as plain functions (flows/mapping.py), so a worker never needs Prefect or its API;
    the stage's few other tasks run in threads of the stage's process. On a stop neither waits for the
    chunks under way: the threads leave them at their next photo (tasks.core.stopping), worker processes are
    ended."""
    if runner.kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        class StoppableProcesses(ProcessPoolTaskRunner):
            def __enter__(self) -> Any:
                stopping.clear()
                return super().__enter__()

            def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
                if _stopping(exc_type) and self._executor is not None:
                    stopping.request()
                    workers = getattr(self._executor, "_processes", None) or {}  # the executor's own
                    for worker in list(workers.values()):
                        worker.terminate()
                    self._executor.shutdown(wait=False, cancel_futures=True)
                    self._executor = None
                super().__exit__(exc_type, exc, tb)

        return StoppableProcesses(max_workers=runner.workers)
    from prefect.task_runners import ThreadPoolTaskRunner

    class StoppableThreads(ThreadPoolTaskRunner):
        def __enter__(self) -> Any:
            stopping.clear()  # a new run (in-process tests run one after another)
            return super().__enter__()

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            if _stopping(exc_type):
                stopping.request()
                if self._executor is not None:  # Prefect's own exit waits for every running chunk
                    self._executor.shutdown(wait=False, cancel_futures=True)
                    self._executor = None
            super().__exit__(exc_type, exc, tb)

    return StoppableThreads(max_workers=runner.workers)


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --------------------------------------------------------------------------- errors


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


P = ParamSpec("P")
R = TypeVar("R")


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """A flow body whose PawflowError ends the run Failed, not with a traceback. The state's message is
    what went wrong on one line (Prefect logs it with repr); the error itself is the state's data, and
    the entry point prints it once, in full, with what to do (error_of).

    Typed as fn is: Prefect makes a Failed state a flow returns the run's final state, so the flow's
    caller gets fn's result or the error (its state, with return_state=True), never the state as a
    result."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PawflowError as err:
            _printed_in_full.add(one_line(err.what))
            return cast(R, Failed(message=one_line(err.what), data=err))
        except Exception as err:
            # A full disk where no writer of ours named the file (a library's own write): still one
            # message, naming the file systems the stage writes to.
            cause = no_space_cause(err)
            if cause is None:
                raise
            params = kwargs.get("params")  # a stage flow's (the pipeline flow has none)
            failed = no_space_somewhere(cause, write_places(params if isinstance(params, Params) else None))
            return cast(R, Failed(message=one_line(failed.what), data=failed))

    return wrapper


# The failed-state messages of PawflowErrors (see friendly): the entry point prints each in full, so the
# terminal does not also get Prefect's one-line copy ("Finished in state Failed('...')"); the Prefect
# UI still does (the filter sits on the console handler only).
_printed_in_full: set[str] = set()


def _user_error_names() -> set[str]:
    """PawflowError and its subclasses by name, as Prefect's task failure lines print them."""
    names, todo = set(), [PawflowError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


class _UserErrorOnce(logging.Filter):
    """On the console only (the Prefect API still gets every line): Prefect's copies of a message the
    entry point prints in full once. A task that raised a PawflowError logs it twice ("Task run failed
    with exception: Refused(...)", then its Failed state); a flow that returned it as a Failed state,
    once."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "pawflow_user_error", False):
            return False
        text = record.getMessage()
        if not text.startswith("Finished in state Failed("):
            return True
        if any(f"encountered an exception {name}:" in text for name in _user_error_names()):
            return False
        return not any(repr(message) in text for message in _printed_in_full)


def write_places(params: Params | None) -> list[Path]:
    """Where a stage writes: the workspace's output folders, its cache and Prefect's home."""
    places = [Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))]
    if params is not None:
        p = params.paths
        places = [p.raw, p.interim, p.processed, p.models, p.reports, p.cache, *places]
    return places


def error_of(state: State) -> PawflowError:
    """The PawflowError that failed a flow run (see friendly), or one made of its state message."""
    try:
        err = state.result(raise_on_failure=False)
    except Exception:  # a crashed run's result may not be readable; its message still is
        err = None
    return err if isinstance(err, PawflowError) else PawflowError(state_message(state))


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs every task failure with its traceback; a PawflowError is a message for a person."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if err is not None and (
            isinstance(err, PawflowError | Stopped) or no_space_cause(err) is not None
        ):  # the entry point says it once, in full (a full disk named by friendly, a stop by StopGuard)
            record.exc_info = None
            record.exc_text = None
            record.pawflow_user_error = True  # and the console leaves this copy out (_UserErrorOnce)
        return True


def quiet_user_errors() -> None:
    """Install the filters on Prefect's run loggers and its console (idempotent; called by entry points,
    not on import)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("prefect.task_runs", "prefect.flow_runs", "prefect.flow_engine", "prefect.task_engine"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForUserErrors) for f in logger.filters):
            logger.addFilter(_NoTracebackForUserErrors())
    for handler in logging.getLogger().handlers:  # Prefect puts its console handler on the root logger
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _UserErrorOnce) for f in handler.filters
        ):
            handler.addFilter(_UserErrorOnce())


def tidy_workspace(params: Params) -> list[Path]:
    """Remove what a killed run left half-written (only ever under temporary names). Needs the lock."""
    p = params.paths
    removed: list[Path] = []
    for folder in (p.interim, p.processed.parent, p.reports, p.models, p.models / "champion"):
        removed += remove_leftovers(folder)
    return removed


def state_message(state: State) -> str:
    return state.message or state.name or "failed"


STAGE_KEPT = (
    "Finished outputs are intact and nothing half-written carries a final name; run again to complete."
)


def stage_main(
    stage: str,
    flow: Any,
    argv: list[str] | None = None,
    load: Callable[[Path], Params] = load_params,
    options: dict[str, Any] | None = None,
) -> int:
    """`python -m flows.<stage>`: validate params, take the lock, run the flow; exit 0, 2 (bad params,
    another run holds the workspace, or the flow refused its input before changing anything: Refused),
    1 (the run failed: its error, a full disk, its Prefect API gone), 130 (Ctrl-C) or 143 (SIGTERM, or the
    process that started it, e.g. `dvc repro`, gone). `load` reads and checks the params file (ingest also
    checks its source there: refused in one message before a flow or server starts); `options`: more flow
    parameters. argv None: the process's own command line, so this call is the process's main: it uses
    the background Prefect server when no API is set (flows.server.use_background_server), and is the
    flows.stops.StopGuard owner (it watches its Prefect API, and its parent when DVC started it, and ends
    the process within STOP_GRACE_S of a stop whatever is still running)."""
    args = stage_arguments(stage, flow.description or "", argv, refresh=True)
    owner = argv is None
    if owner:  # a stage process: its flow runs against the background server unless an API is set
        use_background_server()
    started = time.monotonic()
    quiet_user_errors()
    guard = StopGuard(
        lambda stop: print(message(f"pawflow {stage}", stop, STAGE_KEPT), file=sys.stderr, flush=True),
        owner=owner,
        watch_parent=bool(os.environ.get("DVC_STAGE")),  # run by `dvc repro`: it ends when DVC does
        api_url=os.environ.get("PREFECT_API_URL") if owner else None,
    )
    try:
        with guard:
            params = load(args.params)
            with run_lock():
                for leftover in tidy_workspace(params):
                    print(f"removed {leftover} (left by an interrupted run)", file=sys.stderr)
                runnable = flow.with_options(task_runner=task_runner(params.runner))
                state = runnable(params=params, refresh=args.refresh, return_state=True, **(options or {}))
    except PawflowError as err:
        return report(f"pawflow {stage}", err)
    except (KeyboardInterrupt, Terminated) as err:
        return guard.finish(err)
    if not state.is_completed():
        failure = error_of(state)
        if isinstance(failure, Refused):
            return report(f"pawflow {stage}", failure)
        print(f"\npawflow {stage} failed: {failure}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"pawflow {stage}: done in {time.monotonic() - started:.1f}s")
    return ExitCode.OK


# --------------------------------------------------------------------------- summaries


def record_stage_run(params: Params, stage: str, figures: dict[str, Any]) -> None:
    """This run's figures of a stage (times, throughput, what it reused): one line of the run history
    (params pipeline.history, not tracked), never a tracked output, whose bytes the inputs decide."""
    from datetime import UTC, datetime

    finished = datetime.now(UTC).isoformat(timespec="seconds")
    records.append(params.pipeline.history, StageLine(finished=finished, stage=stage, **figures))


def cell(v: Any) -> str:
    """A summary-table cell as a person reads it (the terminal and the Prefect table artifact alike):
    numbers with thousands separators and at most 3 decimals (1,204, 173.5, 0.923), booleans yes/no,
    a missing value n/a (as tasks.reports.present writes them; not imported here, or a change of wording there
    would make every stage out of date)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:,.3f}".rstrip("0").rstrip(".")
    return "n/a" if v is None else str(v)


def render_table(title: str, columns: list[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table for the terminal and the logs. Every header and cell is literal text (rich
    reads `[bold]` in a string as markup, and fails on a class folder named `[/]`)."""
    table = Table()
    for c in columns:
        table.add_column(Text(c), justify="right" if c not in (columns[0],) else "left")
    for r in rows:
        table.add_row(*(Text(cell(v)) for v in r))
    buf = io.StringIO()
    Console(file=buf, width=100, force_terminal=False, color_system=None).print(table)
    return f"{title}\n{buf.getvalue()}"


def progress_artifact(key: str, description: str, total: float) -> Callable[..., None]:
    """A Prefect progress artifact for `total` units of work; returns `update(done, description=None)`.

    update() sets the bar to done/total (and the description, if given). Calls that would not move
    the whole-percent value and bring no new description are skipped: a few dozen API calls per run
    at most. Outside a flow run (plain function calls, tests) it does nothing. A progress bar is not
    worth failing a run for: if the API refuses an update, it says so once and stops updating.
    """
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return lambda done, description=None: None
    # Called from sync code, Prefect's async_dispatch runs the sync implementation: a UUID, not a coroutine.
    artifact_id = cast(UUID, create_progress_artifact(progress=0.0, key=key, description=description))
    shown = {"percent": 0, "broken": False}

    def update(done: float, description: str | None = None) -> None:
        percent = int(100 * min(max(done / total, 0.0), 1.0)) if total else 100
        if shown["broken"] or (percent == shown["percent"] and description is None):
            return
        try:
            update_progress_artifact(artifact_id, float(percent), description=description)
        except Exception as err:  # the API is down or refused: the run goes on without the bar
            logging.getLogger(__name__).warning("progress artifact %r not updated: %s", key, err)
            shown["broken"] = True
            return
        shown["percent"] = percent

    return update


def publish(
    key: str, title: str, columns: list[str], rows: Sequence[Sequence[Any]], markdown: str = ""
) -> str:
    """Print a stage's summary table and publish it as a Prefect table (+ markdown) artifact. `markdown`
    is published as it is: names in it must already be escaped (tasks.core.text.md)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    text = render_table(title, columns, rows)
    print(text, flush=True)
    if FlowRunContext.get() is not None:
        cells = [[cell(v) for v in r] for r in rows]  # as the terminal shows them
        create_table_artifact(
            key=key, table=[dict(zip(columns, r, strict=True)) for r in cells], description=title
        )
        if markdown:
            create_markdown_artifact(key=f"{key}-report", markdown=markdown, description=title)
    return text
