"""flows/stops.py: a stop is final, a stopped process ends within seconds, an orphaned stage or one whose
Prefect API is gone ends by itself, with one message, its exit code and no child process left behind."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT

from flows import stops
from flows.stops import Stop, StopGuard, Terminated, api_refuses
from tasks.core import stopping
from tasks.core.errors import PawflowError


def signal_in_block(signum: int) -> None:
    """Deliver signum to this process and give its handler the bytecodes to run on."""
    os.kill(os.getpid(), signum)
    for _ in range(1000):
        pass


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)]
)
def test_a_swallowed_stop_still_ends_the_block_with_its_exception(signum: int, raised: type):
    before = signal.getsignal(signum)
    ended = False
    with pytest.raises(raised), StopGuard(lambda stop: None, owner=False) as guard:
        with contextlib.suppress(raised):  # swallowed here, as an engine's `except BaseException` can
            signal_in_block(signum)
        assert stopping.requested()  # loops over photos in other threads give up from now on
        ended = True  # the block itself runs to its end
    assert ended
    assert signal.getsignal(signum) is before
    assert guard.stop == Stop("interrupted" if signum == signal.SIGINT else "terminated")


def test_a_stop_wins_over_a_later_error_in_the_block():
    with pytest.raises(Terminated) as caught, StopGuard(lambda stop: None, owner=False):
        with contextlib.suppress(Terminated):
            signal_in_block(signal.SIGTERM)
        raise PawflowError("the run failed after the stop", "-")
    assert isinstance(caught.value.__cause__, PawflowError)


def test_a_signal_handled_by_someone_else_is_still_seen():
    """Prefect's flow engine replaces the SIGTERM handler while a flow runs and may swallow what it
    raises: the signal still reaches the guard (through its wakeup file descriptor)."""

    class EngineSignal(BaseException):
        pass

    def engine_handler(signum, frame):
        raise EngineSignal

    with pytest.raises(Terminated), StopGuard(lambda stop: None, owner=False):
        ours = signal.signal(signal.SIGTERM, engine_handler)
        try:
            signal_in_block(signal.SIGTERM)
        except EngineSignal:
            pass  # the engine's handler ran, not the guard's, and the engine swallowed it
        finally:
            signal.signal(signal.SIGTERM, ours)


def test_a_block_without_a_stop_ends_normally_and_restores_the_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopGuard(lambda stop: None, owner=False):
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before
    assert not stopping.requested()


@pytest.mark.parametrize(
    ("stop", "code", "says"),
    [
        (Stop("interrupted"), 130, "pawflow x: interrupted. kept"),
        (Stop("terminated"), 143, "pawflow x: terminated (SIGTERM). kept"),
        (Stop("orphaned", "the process that started it (dvc, pid 7) has ended"), 143, "stopped: the process"),
        (
            Stop("api", "the Prefect API at http://h:1/api stopped answering"),
            1,
            "pawflow x failed: the Prefect",
        ),
    ],
)
def test_each_stop_has_its_exit_code_and_one_message(stop: Stop, code: int, says: str):
    text = stops.message("pawflow x", stop, "kept")
    assert stop.exit_code == code and says in text
    assert text.count("What to do") == (1 if stop.kind == "api" else 0)


def test_an_api_is_gone_when_its_port_refuses_connections():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        url = f"http://127.0.0.1:{s.getsockname()[1]}/api"
        assert not api_refuses(url)
    assert api_refuses(url)


# --------------------------------------------------------------------------- a process's own guard

GUARDED = """
import os, signal, subprocess, sys, time
from flows import stops
stops.STOP_GRACE_S, stops.PARENT_POLL_S, stops.API_POLL_S, stops.API_LOST_S = {grace}, 0.2, 0.2, 1.0
from flows.stops import StopGuard, Terminated

guard = StopGuard(lambda stop: print("MESSAGE", stop.kind, stop.detail, file=sys.stderr, flush=True),
                  owner=True, watch_parent={watch_parent}, api_url={api!r})
try:
    with guard:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ready = False
        while True:
            try:  # READY is printed inside: a signal sent when it is read lands in the try
                if not ready:
                    ready = True
                    print("READY", os.getpid(), child.pid, flush=True)
                while True:
                    time.sleep(0.05)
            except (KeyboardInterrupt, Terminated):
                if {swallow}:
                    continue  # code that goes on whatever it is told: the grace period ends it
                raise
except (KeyboardInterrupt, Terminated) as err:
    sys.exit(guard.finish(err))
"""


def guarded(
    tmp_path: Path, grace: float = 30.0, api: str | None = None, swallow: bool = False, watch_parent=False
) -> Path:
    script = tmp_path / f"guarded-{watch_parent}.py"
    code = GUARDED.format(grace=grace, api=api, swallow=swallow, watch_parent=watch_parent)
    script.write_text(textwrap.dedent(code))
    return script


def start(cmd: list[str]) -> tuple[subprocess.Popen, int, int]:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ}
    )
    line = proc.stdout.readline().split()
    assert line[:1] == ["READY"], proc.stderr.read()
    return proc, int(line[1]), int(line[2])


def gone(pid: int, within: float) -> bool:
    import psutil

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_ends_the_run_with_143_and_one_message(tmp_path: Path):
    proc, _, child = start([sys.executable, str(guarded(tmp_path))])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    assert proc.stderr.read().count("MESSAGE terminated") == 1
    assert gone(child, within=5)  # no process left behind


def test_a_process_that_ignores_the_stop_is_ended_after_the_grace_period_with_its_children(tmp_path: Path):
    proc, _, child = start([sys.executable, str(guarded(tmp_path, grace=1.0, swallow=True))])
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    assert 1.0 <= time.monotonic() - started < 8
    assert proc.stderr.read().count("MESSAGE terminated") == 1
    assert gone(child, within=5)  # no process left behind


def test_a_stage_whose_parent_dies_stops_by_itself(tmp_path: Path):
    """The `dvc repro` that started a stage killed (SIGKILL, or SIGTERM to it alone): the stage sees it
    was re-parented, and stops as if it had got SIGTERM itself."""
    parent = (
        "import subprocess, sys; p = subprocess.Popen([sys.executable, sys.argv[1]], stdout=sys.stdout, "
        "stderr=sys.stderr); import time; time.sleep(120)"
    )
    proc, stage, _ = start([sys.executable, "-c", parent, str(guarded(tmp_path, watch_parent=True))])
    left, kept, kept_child = start([sys.executable, "-c", parent, str(guarded(tmp_path, watch_parent=False))])
    for p in (proc, left):
        p.kill()
        p.wait()
    assert gone(stage, within=10), "the orphaned stage went on"
    # Not watching its parent (started by hand, `nohup ... &`): it runs on when its shell exits.
    time.sleep(2)
    assert not gone(kept, within=0.1)
    for pid in (kept, kept_child):
        os.kill(pid, signal.SIGKILL)
    err = proc.stderr.read()  # the stage wrote to the same pipe until it ended
    assert (
        err.count(f"MESSAGE orphaned the process that started it (pid {proc.pid}: {sys.executable} -c") == 1
    ), err


def test_a_stage_run_through_a_shell_that_stays_stops_when_the_process_above_the_shell_dies(tmp_path: Path):
    """`dvc repro` runs a stage as `$SHELL -c CMD`, or `/bin/sh -c CMD` when SHELL is unset (a CI job, a
    systemd unit): dash forks and waits instead of exec'ing, so the stage's parent is a shell that outlives
    a killed `dvc repro`. The stage watches the process above the shell (`; true` makes any shell fork)."""
    script = guarded(tmp_path, watch_parent=True)
    parent = (
        "import subprocess, sys; p = subprocess.Popen(['/bin/sh', '-c', sys.argv[1]], stdout=sys.stdout, "
        "stderr=sys.stderr); import time; time.sleep(120)"
    )
    proc, stage, _ = start([sys.executable, "-c", parent, f"{shlex.quote(sys.executable)} {script}; true"])
    import psutil

    try:
        shell = psutil.Process(stage).parent()
        assert shell is not None and shell.pid != proc.pid  # the shell is between them
        time.sleep(1)
        assert not gone(stage, within=0.1)  # its shell and the process above are there: it runs on
        proc.kill()
        proc.wait()
        assert gone(stage, within=10), "the stage went on after the process above its shell was killed"
    finally:  # a stage that went on must not outlive the test
        with contextlib.suppress(ProcessLookupError):
            os.kill(stage, signal.SIGKILL)
    err = proc.stderr.read()
    assert err.count(f"MESSAGE orphaned the process that started it (pid {proc.pid}:") == 1, err


def test_a_run_whose_prefect_api_goes_away_ends_at_once_with_exit_1(tmp_path: Path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/api"
    proc, _, child = start([sys.executable, str(guarded(tmp_path, api=url))])
    time.sleep(0.6)
    assert proc.poll() is None  # answering: the run goes on
    server.close()  # the server killed
    started = time.monotonic()
    assert proc.wait(timeout=20) == 1
    assert time.monotonic() - started < 6
    assert f"MESSAGE api the Prefect API at {url} stopped answering" in proc.stderr.read()
    assert gone(child, within=5)
