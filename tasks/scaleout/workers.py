"""Per-photo work on the workers of a Dask cluster, wherever they run (docs/scale-out.md).

Workers run plain functions of tasks/ through the Dask client: a worker never needs Prefect or its API.
They are handed absolute paths only and write nothing: what they compute comes back to the stage's process,
which alone writes the outputs and the per-photo cache (SQLite must not be shared over a network file
system). Before any photo is handed out, and again on each worker before its first chunk of a run (a worker
may join late), a worker must show that it

- sees this workspace: it reads the marker file the stage has just written under paths.cache (that very
  file at the same absolute path, so a copy of the project does not pass) and the first photo of every chunk
  with the size the stage sees;
- runs the workspace's code: the code fingerprint (tasks.core.fileio.code_fingerprint) of every module the
  stage ships to workers, from the source the worker loaded it from (a worker started before an edit still
  runs the old code), and the versions of the libraries those modules use (Pillow decides the thumbnails'
  bytes).

A worker that does not is refused in one message naming it, its host and the install it runs from.

Light imports: the check stage uses this module; distributed is imported only where a cluster is used.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import logging
import os
import queue
import re
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.errors import PawflowError
from tasks.core.fileio import code_fingerprint, source_fingerprint, write_bytes

if TYPE_CHECKING:
    from dask.typing import Key
    from distributed import Client

    from tasks.core.params import Params, Runner

PACKAGES = ("tasks", "flows")
# The modules whose functions the data stages run on workers (clean and shard map tasks.clean.judge_items);
# the libraries they use decide the bytes computed there.
WORK = ("tasks.clean",)
# What a worker runs: those, and this module (look, run_checked), with what they import (shipped_modules).
SHIPPED = (*WORK, "tasks.scaleout.workers")
# The folder under paths.cache that holds each run's marker file while it maps work onto workers.
MARKERS = "workers"
# How often a waiting stage asks the scheduler how many workers it has (one small message).
POLL_S = 1.0
# At most this many unseen photos are listed per worker in a refusal (the count is always given).
SHOWN = 3
DOCS = "docs/scale-out.md"


# --------------------------------------------------------------------------- what the workers run


def _origin(name: str) -> Path | None:
    """The source file of a module (None for a package, a module that is not there, or not Python source),
    found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.submodule_search_locations is not None or not spec.origin:
        return None
    path = Path(spec.origin)
    return path if path.suffix == ".py" else None


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(source: str) -> set[str]:
    """Every module an import statement names (`from tasks import x` names tasks.x too), lazy ones too;
    not those under `if TYPE_CHECKING:`, which never run."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            node.body = [n for n in node.body if not _type_checking(n)]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def shipped_modules(entries: tuple[str, ...] = SHIPPED) -> tuple[list[str], list[str]]:
    """The project modules a worker runs for `entries` (them and what they import, transitively) and the
    top-level names of the other modules those import, stdlib left out (the libraries: PIL, numpy...)."""
    modules: set[str] = set()
    libraries: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        top = name.split(".")[0]
        if top not in PACKAGES:
            if top not in sys.stdlib_module_names and top != "__future__":
                libraries.add(top)
            continue
        path = _origin(name)
        if path is None or name in modules:
            continue
        modules.add(name)
        todo.extend(_imports(path.read_text(encoding="utf-8")))
    return sorted(modules), sorted(libraries)


def workspace_code(modules: list[str]) -> dict[str, str]:
    """module -> code fingerprint of its source file as this process finds it (the workspace's code)."""
    out = {}
    for name in modules:
        path = _origin(name)
        out[name] = source_fingerprint(path.read_text(encoding="utf-8")) if path else "absent"
    return out


# module -> fingerprint of the source this process loaded it from, noted when first seen loaded: a file
# edited later no longer tells what the process runs.
_LOADED: dict[str, str] = {}
_LOADED_LOCK = threading.Lock()


def _note_loaded() -> None:
    with _LOADED_LOCK:
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] in PACKAGES and name not in _LOADED and getattr(module, "__file__", None):
                with suppress(OSError, TypeError):
                    _LOADED[name] = code_fingerprint(module)


def running_code(modules: list[str]) -> dict[str, str]:
    """module -> code fingerprint of what this process runs: the source a loaded module was loaded from, or
    for one not loaded yet the source it would load."""
    _note_loaded()
    disk = workspace_code([m for m in modules if m not in _LOADED])
    return {m: _LOADED.get(m) or disk[m] for m in modules}


@cache
def _distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _requirement_names(dist: str) -> list[str]:
    """The distributions `dist` requires on this platform (extras left out)."""
    from packaging.requirements import InvalidRequirement, Requirement

    names = []
    for text in importlib.metadata.requires(dist) or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def library_versions(imports: list[str]) -> dict[str, str]:
    """Distribution -> installed version, for the distributions providing `imports` (top-level module names)
    and everything they require, transitively: what decides the bytes the shipped code computes."""
    from packaging.utils import canonicalize_name

    versions: dict[str, str] = {}
    todo = [d for name in imports for d in _distributions().get(name, [])]
    while todo:
        dist = canonicalize_name(todo.pop())
        if dist in versions:
            continue
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "absent"
            continue
        todo.extend(_requirement_names(dist))
    return dict(sorted(versions.items()))


# --------------------------------------------------------------------------- what a worker must show


@dataclass(frozen=True)
class Expect:
    """What every worker of a run must see and run, as the stage's process has it."""

    workspace: str  # the project folder (absolute)
    marker: str  # a file the stage wrote for this run (absolute path) ...
    token: str  # ... holding this text
    code: dict[str, str]  # shipped module -> code fingerprint
    imports: tuple[str, ...]  # top-level library modules the shipped code imports
    libraries: dict[str, str]  # distribution -> version
    samples: tuple[tuple[str, int], ...] = ()  # (absolute path, bytes) of photos the workers will read


@dataclass
class WorkerView:
    """What one worker sees and runs (look())."""

    host: str
    pid: int
    cwd: str
    python: str
    code_from: str  # the folder the worker imports pawflow's tasks package from
    marker: str  # "" when it read the marker's token; else what went wrong
    code: dict[str, str]
    libraries: dict[str, str]
    unseen: list[str] = field(default_factory=list)  # samples it cannot see, or sees with another size


def look(expect: Expect) -> WorkerView:
    """Run on a worker: what it sees of the workspace and what code it runs."""
    problem = ""
    try:
        text = Path(expect.marker).read_text(encoding="utf-8")
    except OSError as err:
        problem = f"cannot read {expect.marker} ({err.strerror or err})"
    else:
        if text != expect.token:
            problem = f"{expect.marker} there is another file (a copy of the project, not the same folder)"
    unseen = []
    for path, size in expect.samples:
        try:
            seen = os.stat(path).st_size
        except OSError as err:
            unseen.append(f"{path} ({err.strerror or err})")
            continue
        if seen != size:
            unseen.append(f"{path} ({seen} bytes there, {size} in the workspace)")
    import tasks

    return WorkerView(
        host=socket.gethostname(),
        pid=os.getpid(),
        cwd=os.getcwd(),
        python=sys.executable,
        code_from=str(Path(tasks.__file__).resolve().parent.parent),
        marker=problem,
        code=running_code(list(expect.code)),
        libraries=library_versions(list(expect.imports)),
        unseen=unseen,
    )


SEE, CODE, LIBRARIES = "see", "code", "libraries"


def mismatch(view: WorkerView, expect: Expect) -> dict[str, str]:
    """What is wrong with a worker, by kind (SEE, CODE, LIBRARIES); empty when it can do the work."""
    out = {}
    if view.marker:
        out[SEE] = f"cannot see this workspace: {view.marker}"
    elif view.unseen:
        listed = "; ".join(view.unseen[:SHOWN]) + (" ..." if len(view.unseen) > SHOWN else "")
        out[SEE] = f"cannot see {len(view.unseen)} photo(s) the stage will hand it: {listed}"
    differ = [m for m in expect.code if view.code.get(m) != expect.code[m]]
    if differ:
        files = ", ".join(m.replace(".", "/") + ".py" for m in differ)
        out[CODE] = f"runs other code than this workspace: {files}"
    libs = [
        f"{d} {view.libraries.get(d, 'absent')} (here {v})"
        for d, v in expect.libraries.items()
        if view.libraries.get(d) != v
    ]
    if libs:
        out[LIBRARIES] = f"has other library versions: {', '.join(libs)}"
    return out


def describe(address: str, view: WorkerView | None) -> str:
    if view is None:
        return address
    return (
        f"{address} (host {view.host}, pid {view.pid}, started in {view.cwd}, code from {view.code_from}, "
        f"python {view.python})"
    )


def refusal(problems: dict[str, tuple[WorkerView | None, dict[str, str]]], expect: Expect) -> PawflowError:
    """One message for every worker that cannot do the work, with what to do for each kind of problem."""
    lines = [f"{len(problems)} Dask worker(s) cannot do this workspace's per-photo work; nothing was run:"]
    kinds: set[str] = set()
    for address, (view, found) in sorted(problems.items()):
        lines.append(f"  {describe(address, view)}:")
        lines += [f"    - {text}" for text in found.values()]
        kinds |= set(found)
    fixes = []
    if SEE in kinds:
        fixes.append(
            f"Mount the project folder at the same path ({expect.workspace}) on every worker's machine (a "
            "shared file system such as NFS), or stop the workers named above: pawflow hands workers "
            "absolute paths under it."
        )
    if CODE in kinds:
        fixes.append(
            f"Run every worker from this project's code: start it with PYTHONPATH={expect.workspace} (the "
            "shared folder), or install the same pawflow commit there; then restart the workers (a worker "
            "keeps the code it loaded when it started)."
        )
    if LIBRARIES in kinds:
        fixes.append(
            f"Install the same library versions on every worker (`pip install -r {expect.workspace}/"
            "requirements.lock`), then restart the workers."
        )
    fixes.append(f"See {DOCS}.")
    return PawflowError("\n".join(lines), " ".join(fixes))


class WorkerRefused(Exception):
    """Raised on a worker that cannot do a run's work (run_checked): who, what it sees, what is wrong."""

    def __init__(self, address: str, view: WorkerView, found: dict[str, str]) -> None:
        super().__init__(address, view, found)
        self.address, self.view, self.found = address, view, found

    def __str__(self) -> str:
        return "; ".join(self.found.values())


_CHECKED: set[str] = set()  # the run tokens this worker process has passed (run_checked)


def run_checked(
    fn: Callable[..., Any], expect: Expect, chunk: list, kwargs: dict[str, Any]
) -> tuple[str, Any]:
    """Run on a worker: fn(chunk, **kwargs), after this worker has shown once per run that it sees the
    workspace and runs its code. Returns (this worker's address, the result)."""
    from distributed import get_worker

    address = get_worker().address
    if expect.token not in _CHECKED:
        view = look(expect)
        found = mismatch(view, expect)
        if found:
            raise WorkerRefused(address, view, found)
        _CHECKED.add(expect.token)
    return address, fn(chunk, **kwargs)


# --------------------------------------------------------------------------- the stage's side


def _marker_dir(cache_dir: Path) -> Path:
    return cache_dir.absolute() / MARKERS


_MARKER = re.compile(r"^run-(\d+)-[0-9a-f]+$")


def remove_stale_markers(cache_dir: Path) -> list[Path]:
    """Marker files whose writer is gone (a killed run); a live run's marker stays."""
    import psutil

    removed = []
    folder = _marker_dir(cache_dir)
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            m = _MARKER.match(p.name)
            if m and not psutil.pid_exists(int(m.group(1))):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


@contextmanager
def expectation(
    workspace: Path, cache_dir: Path, samples: list[tuple[Path, int]] | None = None
) -> Iterator[Expect]:
    """What workers must show for this run; its marker file exists while the block runs."""
    workspace = workspace.absolute()
    modules, _ = shipped_modules(SHIPPED)
    _, imports = shipped_modules(WORK)
    token = secrets.token_hex(16)
    marker = _marker_dir(cache_dir) / f"run-{os.getpid()}-{token}"
    expect = Expect(
        workspace=str(workspace),
        marker=str(marker),
        token=token,
        code=workspace_code(modules),
        imports=tuple(imports),
        libraries=library_versions(imports),
        samples=tuple((str(p), size) for p, size in samples or []),
    )
    remove_stale_markers(cache_dir)
    write_bytes(marker, token.encode())
    try:
        yield expect
    finally:
        marker.unlink(missing_ok=True)


def unreachable(runner: Runner, err: BaseException) -> PawflowError:
    return PawflowError(
        f"cannot reach the Dask scheduler at {runner.dask_address} (runner.dask_address) within "
        f"{runner.connect_timeout_s:g} s: {str(err).strip() or type(err).__name__}. Nothing was run.",
        "Start the scheduler (`dask scheduler`) and its workers (docs/scale-out.md), check that this "
        "machine can reach that address and port, or set runner.kind: threads in params.yaml.",
    )


# Dask's own log lines in the stage's process (and a local cluster's workers): its start-up chatter, and
# the tracebacks of a client whose scheduler went away, which the stage says in one message instead.
QUIET = {"distributed": logging.ERROR, "distributed.client": logging.CRITICAL}


# The same for a local cluster's worker processes, which read it when they import distributed (they also
# import the stage's module, whose Prefect logging would show every line of theirs).
QUIET_ENV = "DASK_LOGGING__DISTRIBUTED"


@contextmanager
def _quiet_dask() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in QUIET}
    env = os.environ.get(QUIET_ENV)
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
    os.environ[QUIET_ENV] = logging.getLevelName(QUIET["distributed"]).lower()
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if env is None:
            os.environ.pop(QUIET_ENV, None)
        else:
            os.environ[QUIET_ENV] = env


@contextmanager
def cluster(runner: Runner) -> Iterator[Client]:
    """A client of runner.dask_address, or of a LocalCluster of runner.workers processes (one thread each)
    when it is null. An unreachable scheduler is one PawflowError."""
    from distributed import Client, LocalCluster

    with _quiet_dask():
        if runner.dask_address:
            try:
                client = Client(runner.dask_address, timeout=runner.connect_timeout_s, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as err:
                raise unreachable(runner, err) from None
            with client:
                yield client
            return
        with (
            LocalCluster(
                n_workers=runner.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=QUIET["distributed"],
            ) as local,
            Client(local, set_as_default=False) as client,
        ):
            yield client


def worker_count(client: Client) -> int | None:
    """Workers the scheduler has now; None when the scheduler cannot be asked (connection lost)."""
    if client.status != "running":
        return None
    try:
        return len(client.scheduler_info(n_workers=-1)["workers"])
    except (OSError, TimeoutError):
        return None


def no_worker(runner: Runner, where: str, during: str) -> PawflowError:
    return PawflowError(
        f"no Dask worker connected to the scheduler at {where} for {runner.no_worker_timeout_s:g} s "
        f"(runner.no_worker_timeout_s) {during}.",
        "Start workers (`dask worker <scheduler address>` on each machine, docs/scale-out.md) or check why "
        "they stopped (their own output says), then run again; or set runner.kind: threads in params.yaml.",
    )


def wait_for_workers(client: Client, runner: Runner, say: Callable[[str], None]) -> int:
    """At least one worker within runner.no_worker_timeout_s (a line says it waits); how many there are."""
    where = runner.dask_address or "a local cluster"
    if not worker_count(client):
        say(f"dask: no worker at {where} yet; waiting up to {runner.no_worker_timeout_s:g} s for one")
        try:
            client.wait_for_workers(1, timeout=runner.no_worker_timeout_s)
        except (TimeoutError, OSError):
            raise no_worker(runner, where, "before any work was handed out; nothing was run") from None
    return worker_count(client) or 0


def check_workers(client: Client, expect: Expect) -> dict[str, WorkerView]:
    """Every connected worker sees the workspace and runs its code, or one PawflowError names each that
    does not (a worker that cannot run pawflow's code at all included)."""
    replies = client.run(look, expect, on_error="return")
    problems: dict[str, tuple[WorkerView | None, dict[str, str]]] = {}
    for address, reply in replies.items():
        if isinstance(reply, BaseException):  # what the worker raised, as Dask hands it back
            detail = str(reply) if type(reply) is Exception else f"{type(reply).__name__}: {reply}"
            problems[address] = (None, {CODE: f"cannot run pawflow's code: {detail}"})
        elif found := mismatch(reply, expect):
            problems[address] = (reply, found)
    if problems:
        raise refusal(problems, expect)
    return replies


def check_cluster(params: Params, root: Path, say: Callable[[str], None]) -> None:
    """With runner.kind dask and an address: the scheduler answers within runner.connect_timeout_s, has a
    worker within runner.no_worker_timeout_s, and every worker sees the workspace at `root` and runs its
    code; else one PawflowError. Run before DVC removes any output (the check stage, `pawflow run`, the
    pipeline); each stage checks again before it hands out work. A local cluster needs no check."""
    runner = params.runner
    if runner.kind != "dask" or not runner.dask_address:
        return
    with cluster(runner) as client:
        count = wait_for_workers(client, runner, say)
        with expectation(root, root / params.paths.cache) as expect:
            check_workers(client, expect)
    say(f"dask: {count} worker(s) at {runner.dask_address} see this workspace and run its code")


@dataclass
class Finished:
    """One chunk's result and the worker that computed it."""

    index: int
    worker: str
    result: Any


@dataclass
class Departure:
    """A worker that left the cluster while a run's chunks were mapped."""

    worker: str
    expected: bool  # shut down on purpose (retired, closed) rather than lost
    redone: list[int]  # the run's chunks it was computing or holding: computed again elsewhere

    def line(self) -> str:
        how = "was shut down" if self.expected else "was lost (killed, crashed or unreachable)"
        again = (
            f"{len(self.redone)} chunk(s) it was computing or holding will be computed again elsewhere"
            if self.redone
            else "none of this run's chunks were on it"
        )
        return f"dask: worker {self.worker} {how} during the run; {again}"


class ChunkMap:
    """fn(chunk, **kwargs) for every chunk on the cluster's workers; iterate for Finished in completion order.

    While nothing finishes, the scheduler is asked every POLL_S how many workers it has: none (or no
    scheduler) for runner.no_worker_timeout_s ends the run in one PawflowError. A worker that leaves is said
    at once through `say` and kept in `departures`; Dask computes its chunks again elsewhere.
    """

    def __init__(
        self,
        client: Client,
        runner: Runner,
        name: str,
        fn: Callable[..., Any],
        chunks: list[list],
        kwargs: dict[str, Any],
        expect: Expect,
        say: Callable[[str], None],
    ) -> None:
        relative = [k for k, v in kwargs.items() if isinstance(v, Path) and not v.is_absolute()]
        if relative:  # a worker resolves a relative path against its own folder: a bug, refused here
            raise ValueError(f"paths handed to workers must be absolute: {relative}")
        self.client, self.runner, self.name, self.say = client, runner, name, say
        self.fn, self.chunks, self.kwargs, self.expect = fn, chunks, kwargs, expect
        self.departures: list[Departure] = []
        self.per_worker: Counter[str] = Counter()  # chunks each worker computed
        self._events: queue.SimpleQueue = queue.SimpleQueue()

    def _on_event(self, event: tuple[float, dict]) -> None:
        _, msg = event
        if isinstance(msg, dict) and msg.get("action") == "remove-worker":
            self._events.put(msg)

    def _departures(self, index_of: dict[Key, int]) -> None:
        while True:
            try:
                msg = self._events.get_nowait()
            except queue.Empty:
                return
            keys = {*msg.get("processing-tasks", ()), *msg.get("lost-computed-tasks", ())}
            gone = Departure(
                str(msg.get("worker")),
                bool(msg.get("expected")),
                sorted(index_of[k] for k in keys if k in index_of),
            )
            self.departures.append(gone)
            self.say(gone.line())

    def _failed(self, index: int, err: BaseException) -> BaseException:
        """The PawflowError for a chunk that did not come back, or the error itself (a bug in fn)."""
        from distributed import KilledWorker
        from distributed.client import FutureCancelledError

        where = self.runner.dask_address or "the local cluster"
        if isinstance(err, WorkerRefused):
            return refusal({err.address: (err.view, err.found)}, self.expect)
        if isinstance(err, KilledWorker):
            first = self.chunks[index][0] if self.chunks[index] else "?"
            return PawflowError(
                f"{self.name}: chunk {index + 1} of {len(self.chunks)} (from {first}) was running on each of "
                f"the workers that died, several times over ({err}).",
                "Look at the workers' own output (out of memory? killed?); a photo in that chunk may need "
                "more memory than a worker has. Then run again (the chunks that finished are reused).",
            )
        if isinstance(err, FutureCancelledError) or self.client.status != "running":
            why = getattr(err, "reason", None) or type(err).__name__
            return PawflowError(
                f"{self.name}: lost the connection to the Dask scheduler at {where} during the run ({why}).",
                "Check that the scheduler is running and reachable (docs/scale-out.md), then run again (the "
                "chunks that finished are reused).",
            )
        return err

    def __iter__(self) -> Iterator[Finished]:
        done: queue.SimpleQueue = queue.SimpleQueue()
        tag = self.expect.token[:8]
        futures = {}
        for i, chunk in enumerate(self.chunks):
            f = self.client.submit(
                run_checked,
                self.fn,
                self.expect,
                chunk,
                self.kwargs,
                key=f"{self.name}-chunk-{i}-{tag}",
                pure=False,
            )
            futures[f.key] = (i, f)
        index_of = {key: i for key, (i, _) in futures.items()}
        self.client.subscribe_topic("all", self._on_event)
        for _, f in futures.values():
            f.add_done_callback(done.put)
        idle_since: float | None = None
        try:
            while futures:
                try:
                    future = done.get(timeout=POLL_S)
                except queue.Empty:
                    self._departures(index_of)
                    if worker_count(self.client):
                        idle_since = None
                        continue
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > self.runner.no_worker_timeout_s:
                        where = self.runner.dask_address or "the local cluster"
                        raise no_worker(self.runner, where, f"while {self.name} was running") from None
                    continue
                i = futures.pop(future.key)[0]
                try:
                    worker, result = future.result()
                except Exception as err:
                    raise self._failed(i, err) from None
                future.release()  # the scheduler forgets the result: nothing to redo if its worker goes
                del future
                self.per_worker[worker] += 1
                self._departures(index_of)
                yield Finished(i, worker, result)
            self._departures(index_of)
        finally:
            with suppress(Exception):
                self.client.unsubscribe_topic("all")
            if futures:
                with suppress(Exception):
                    self.client.cancel([f for _, f in futures.values()])


def dashboard(client: Client) -> str | None:
    """The link to the scheduler's dashboard, when it serves one."""
    with suppress(Exception):
        return client.dashboard_link
    return None


_note_loaded()
