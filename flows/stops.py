"""How a run ends when it is told to stop, or loses what it needs to go on.

Ctrl-C (SIGINT); SIGTERM (`kill PID`, `systemctl stop`, `dvc repro` killed with the whole group);
the process that started a stage gone (a `dvc repro` killed alone leaves its stage orphaned); the
Prefect API gone (its server killed): each ends the run within seconds, with one message and an exit
code (130 for SIGINT, 143 for SIGTERM or a vanished parent, 1 for a lost API), leaving no process behind.
Every output is written under a temporary name and renamed when whole (tasks/core/fileio.py), so a process
that ends at any moment leaves each output as it was or complete, never half-written.

Prefect's flow engine owns SIGTERM while a flow runs: it raises TerminationSignal in the main thread,
records the run Crashed (or Cancelled, when its runner asked), then delivers SIGTERM again to the handler
it replaced. StopGuard's handler is that one: it turns the signal into Terminated, which the entry point
reports. What Prefect's engine swallows (it can, under load, for Ctrl-C) is still seen: every signal
that reaches Python is also written to a wakeup file descriptor that a thread of StopGuard reads; and a
process that has not ended STOP_GRACE_S after its first stop signal is ended then, its children with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal
from urllib.parse import urlsplit

from tasks.core import stopping
from tasks.core.errors import ExitCode

# After the first stop signal, a process that has not ended by itself within this long is ended (its
# children too): time for the flow to record its state and for threads to leave their photo.
STOP_GRACE_S = 10.0
# How often a stage looks whether the process that started it is still there.
PARENT_POLL_S = 1.0
# Shells that run a command line for the process that started a stage (`dvc repro` runs `$SHELL -c`,
# or `/bin/sh -c` when SHELL is unset). bash execs a lone command; dash forks and waits, so a stage's
# parent can be a shell that outlives a killed `dvc repro`: the stage watches the process above it.
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish", "busybox"})
# How often a run looks whether its Prefect API's port still accepts connections, and how long it may
# refuse them before the run ends (a server restarted on the same port within that time is not noticed).
API_POLL_S = 2.0
API_LOST_S = 10.0
# A child process asked to stop (SIGTERM) gets this long before SIGKILL.
CHILD_GRACE_S = 3.0


API_FIX = (
    "Run again (`pawflow run`, `dvc repro`, or the pipeline): finished stages are not run again, and a "
    "stage run by `dvc repro` starts a new background Prefect server by itself. If PREFECT_API_URL points "
    "at a server you run yourself, start it again first (`prefect server start`)."
)


class Terminated(BaseException):
    """SIGTERM ended the run. A BaseException, like KeyboardInterrupt: no `except Exception` swallows it."""


@dataclass(frozen=True)
class Stop:
    """Why a run stopped. kind: "interrupted" (SIGINT), "terminated" (SIGTERM), "orphaned" (the process
    that started it ended) or "api" (its Prefect API stopped answering); detail: the particulars."""

    kind: str
    detail: str = ""

    @property
    def exit_code(self) -> int:
        return {"interrupted": ExitCode.INTERRUPTED, "api": ExitCode.FAILED}.get(
            self.kind, ExitCode.TERMINATED
        )

    def exception(self) -> BaseException:
        return KeyboardInterrupt() if self.kind == "interrupted" else Terminated(self.kind)


def message(prog: str, stop: Stop, kept: str) -> str:
    """The one message of a stopped run: `prog` ("pawflow train"), why, and what state it left (`kept`)."""
    if stop.kind == "interrupted":
        return f"\n{prog}: interrupted. {kept}"
    if stop.kind == "terminated":
        return f"\n{prog}: terminated (SIGTERM). {kept}"
    if stop.kind == "orphaned":
        return f"\n{prog}: stopped: {stop.detail}. {kept}"
    return f"\n{prog} failed: {stop.detail}. {kept}\n  What to do: {API_FIX}"


def process_name(pid: int) -> str:
    """`pid N: its command line` (cut short), or `pid N` alone if it cannot be read."""
    try:
        import psutil

        command = " ".join(psutil.Process(pid).cmdline()) or psutil.Process(pid).name()
    except Exception:  # gone already, or not visible: the pid alone says enough
        return f"pid {pid}"
    return f"pid {pid}: {command if len(command) <= 80 else command[:77] + '...'}"


def launcher_chain(pid: int) -> list[tuple[int, int]]:
    """From pid's parent up: (process, its parent) for each shell that runs the command line, then for
    the process that started them (`dvc repro`). A run is orphaned when any of them is gone or has a new
    parent. Just [(parent of pid, its parent)] when the parent is no shell or cannot be read."""
    import psutil

    chain: list[tuple[int, int]] = []
    try:
        process = psutil.Process(pid).parent()
        while process is not None:
            parent = process.ppid()
            chain.append((process.pid, parent))
            if parent <= 1 or process.name() not in SHELLS:
                break
            process = psutil.Process(parent)
    except psutil.Error:  # a process gone meanwhile: the next look at the chain notices it
        pass
    return chain


def chain_broken(chain: list[tuple[int, int]]) -> bool:
    """True when a process of the chain ended or was re-parented (its launcher above it ended)."""
    import psutil

    for pid, parent in chain:
        try:
            if psutil.Process(pid).ppid() != parent:
                return True
        except psutil.Error:
            return True
    return False


def end_children(grace_s: float = CHILD_GRACE_S) -> None:
    """SIGTERM, then SIGKILL after grace_s, to this process's descendants in its own process group: task
    runner workers, a local Dask cluster. Not the background Prefect server: it runs in a session of its
    own, shared with the stages that come next, and stops by itself when idle."""
    import psutil

    group = os.getpgid(0)
    kids = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(child.pid) == group:
                kids.append(child)
    for child in kids:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(kids, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _drain_prefect_logs(timeout_s: float) -> None:
    """Send the run's last log lines to the Prefect API (if Prefect was imported), for at most timeout_s."""
    if "prefect.logging.handlers" not in sys.modules:
        return
    with contextlib.suppress(Exception):
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=timeout_s)


def api_refuses(url: str, timeout_s: float = API_POLL_S) -> bool:
    """True when nothing listens at the API's address any more (connection refused). A slow or busy
    server (a timeout) or a name that does not resolve right now is not taken for a gone one."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout_s):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


class StopGuard:
    """Around a run: turns SIGINT into KeyboardInterrupt and SIGTERM into Terminated, and makes a stop
    final. A stop that code inside swallowed still ends the block with its exception (whatever the block
    ended with otherwise); the per-photo loops of the task runner's threads give up (tasks.core.stopping).

    owner: the block is this process's whole job (an entry point's main, not a test calling it): then the
    process ends at the latest STOP_GRACE_S after the first stop signal (its children with it), when its
    Prefect API (api_url) refuses connections for API_LOST_S (the stop "api": at once, since the flow
    engine can record nothing without it), and, with watch_parent, when the process that started it
    goes (the stop "orphaned"; for a stage that `dvc repro` runs: a process started by hand and left to
    run on, `nohup ... &`, must not stop when its shell exits). `say(stop)` prints the run's one message;
    finish() or the ending process calls it once.
    """

    def __init__(
        self,
        say: Callable[[Stop], None],
        *,
        owner: bool,
        watch_parent: bool = False,
        api_url: str | None = None,
    ) -> None:
        self.say = say
        self.owner = owner
        self.watch_parent = watch_parent
        self.api_url = api_url
        self.stop: Stop | None = None
        self._lock = threading.Lock()
        self._said = False
        self._raised = False
        self._done = threading.Event()
        self._handlers: dict[int, Any] = {}
        self._wakeup: tuple[int, int, int] | None = None  # read end, write end, the previous wakeup fd
        self._threads: list[threading.Thread] = []
        self._timer: threading.Timer | None = None

    # ---------------------------------------------------------------- the block

    def __enter__(self) -> StopGuard:
        stopping.clear()
        if threading.current_thread() is threading.main_thread():
            for signum, kind in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
                self._handlers[signum] = signal.signal(signum, self._handler(kind))
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)
            previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            self._wakeup = (read_end, write_end, previous)
            self._start(self._watch_signals, read_end)
        if self.owner and self.watch_parent:
            parent = os.getppid()
            chain = launcher_chain(os.getpid())
            launcher = chain[-1][0] if chain else parent  # past a `sh -c` that runs the command line
            self._start(self._watch_parent, parent, chain, process_name(launcher))  # named while there
        if self.owner and self.api_url:
            self._start(self._watch_api, self.api_url)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> Literal[False]:
        self._done.set()
        for signum, previous in self._handlers.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._handlers.clear()
        if self._wakeup is not None:
            _, write_end, previous = self._wakeup
            signal.set_wakeup_fd(previous)
            os.close(write_end)  # the watcher reads the end of the pipe and returns
        for thread in self._threads:
            thread.join(timeout=API_POLL_S + 1)
        self._threads.clear()
        if self._wakeup is not None:
            os.close(self._wakeup[0])
            self._wakeup = None
        if not self.owner:  # a test or library caller goes on (an entry point is ending anyway)
            if self._timer is not None:
                self._timer.cancel()
            stopping.clear()
        stop = self.stop
        if stop is not None and not isinstance(exc, KeyboardInterrupt | Terminated):
            raise stop.exception() from exc  # swallowed inside, or overtaken by another error
        return False

    def finish(self, err: BaseException) -> int:
        """Say why the run stopped (once) and return its exit code; err: the KeyboardInterrupt or
        Terminated that ended the block (it says which when no signal did: raised by code). An owner's
        process ends here: its task runner's threads get CHILD_GRACE_S to leave their photo and Prefect
        its log lines to send, then it exits, its children with it, rather than wait for a thread stuck
        in a long call (a photo's decode, a busy SQLite cache)."""
        kind = "terminated" if isinstance(err, Terminated) else "interrupted"
        with self._lock:
            self.stop = stop = self.stop or Stop(kind)
        self._say(stop)
        if self.owner:
            deadline = time.monotonic() + CHILD_GRACE_S
            for thread in threading.enumerate():
                if not thread.daemon and thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))
            if stop.kind != "api":  # with its API gone, Prefect could only retry
                _drain_prefect_logs(max(0.0, deadline - time.monotonic()))
            self.end_process()
        return stop.exit_code

    def end_process(self) -> None:
        """Say why (once), end this process's children, and exit now with the stop's code, whatever the
        main thread is doing (a write in progress is left under its temporary name)."""
        stop = self.stop or Stop("terminated")
        self._say(stop)
        with contextlib.suppress(Exception):
            end_children()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(stop.exit_code)

    # ---------------------------------------------------------------- what notices a stop

    def _note(self, stop: Stop) -> None:
        """The first stop wins; from then on loops over photos give up and (owner) the clock runs."""
        with self._lock:
            if self.stop is not None:
                return
            self.stop = stop
            stopping.request()
            if self.owner:
                self._timer = threading.Timer(STOP_GRACE_S, self.end_process)
                self._timer.daemon = True
                self._timer.start()

    def _handler(self, kind: str) -> Callable[[int, FrameType | None], None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            self._note(Stop(kind))
            if not self._raised:  # once: a second signal must not break the clean-up of the first
                self._raised = True
                raise self.stop.exception() if self.stop else Stop(kind).exception()

        return handler

    def _say(self, stop: Stop) -> None:
        with self._lock:
            if self._said:
                return
            self._said = True
        self.say(stop)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"pawflow-{target.__name__}")
        thread.start()
        self._threads.append(thread)

    def _watch_signals(self, read_end: int) -> None:
        """Every signal that reaches Python, whoever's handler runs for it (Prefect's, during a flow run)."""
        while True:
            try:
                data = os.read(read_end, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == signal.SIGINT:
                    self._note(Stop("interrupted"))
                elif signum == signal.SIGTERM:
                    self._note(Stop("terminated"))

    def _watch_parent(self, parent: int, chain: list[tuple[int, int]], name: str) -> None:
        """A process whose parent ended is re-parented: then it stops, as if SIGTERM had come; so when
        its parent is a shell that runs its command line and the process above that shell ended."""
        while not self._done.wait(PARENT_POLL_S):
            if os.getppid() != parent or chain_broken(chain):
                self._note(Stop("orphaned", f"the process that started it ({name}) has ended"))
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def _watch_api(self, url: str) -> None:
        refused_since: float | None = None
        while not self._done.wait(API_POLL_S):
            if not api_refuses(url):
                refused_since = None
                continue
            now = time.monotonic()
            refused_since = now if refused_since is None else refused_since
            if now - refused_since >= API_LOST_S:
                self._note(
                    Stop(
                        "api",
                        f"the Prefect API at {url} stopped answering (nothing has listened at its address "
                        f"for {API_LOST_S:.0f} s: its server was stopped or killed)",
                    )
                )
                self.end_process()
                return
