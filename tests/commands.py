"""Commands run in a test workspace (a copy of the project): any program, python -m, dvc; waiting for a
state they reach."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from conftest import tool_env

from flows.lock import LOCK_FILE

T = TypeVar("T")


def sh(
    ws: Path, *args: str, api: str | None, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args),
        cwd=ws,
        env={**tool_env(api), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def py(ws: Path, *args: str, api: str | None) -> subprocess.CompletedProcess:
    return sh(ws, sys.executable, *args, api=api)


def dvc(ws: Path, *args: str, api: str | None) -> subprocess.CompletedProcess:
    return py(ws, "-m", "dvc", *args, api=api)


def ran(out: str) -> list[str]:
    """The stages a `dvc repro` ran, from its output."""
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """predicate()'s first true value, asked every `every` seconds; an AssertionError naming `what` when
    none comes within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_while_running(
    proc: subprocess.Popen,
    ready: Callable[[], object],
    timeout: float,
    what: str,
    output=lambda: "",
    every: float = 0.2,
) -> None:
    """Until ready() is true while proc runs, asked every `every` seconds (short for a state that lasts
    an instant): an AssertionError naming `what` (with the end of output()) when the process ends first
    or `timeout` seconds pass."""

    def check() -> bool:
        if ready():
            return True
        assert proc.poll() is None, (
            f"the process ended (exit {proc.returncode}) before {what}: {output()[-3000:]}"
        )
        return False

    wait_for(check, timeout, what, every)


def start_holding_the_workspace(ws: Path, *args: str, api: str | None) -> subprocess.Popen:
    """`python ARGS` started in ws (its output piped), returned once it holds the workspace lock."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ws,
        env=tool_env(api),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = ws / LOCK_FILE

    def holding() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"exit {proc.returncode} before taking the lock: {proc.stderr.read()[-3000:]}"
            )
        return lock.exists() and bool(lock.read_text().strip())

    try:
        wait_for(holding, 120, f"`python {' '.join(args)}` to take the workspace lock")
    except AssertionError:
        proc.kill()
        proc.communicate()
        raise
    return proc
