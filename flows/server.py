"""A Prefect API for a run: the one in PREFECT_API_URL, or a local server started for the run.

Without an API every flow process starts its own temporary one (15-30 s each here); one local server
for the whole run costs ~20 s once and keeps the run history in .pawflow/prefect for `prefect server start`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tasks.errors import PawflowError

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 180.0


def healthy(api_url: str) -> bool:
    try:
        return requests.get(api_url.rstrip("/") + "/health", timeout=2).ok
    except requests.RequestException:
        return False


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all bound at once, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


def _die_with_parent() -> None:
    """In the server's process before it starts (Linux): SIGTERM when the process that started it dies,
    however it dies (a crash or kill -9 included), so no server outlives its run."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1  # <sys/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_server(
    home: Path, port: int | None = None, log_file: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """Start `prefect server start` on a loopback port; returns (process, api_url) once healthy."""
    port = port or free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)
    out = open(log_file or home / "server.log", "ab")  # noqa: SIM115 (the server writes to it until stopped)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PawflowError(
                f"the Prefect server exited at start-up (see {out.name}).",
                "Check the log; set PREFECT_API_URL to use a server you run yourself.",
            )
        if healthy(api_url):
            return proc, api_url
        time.sleep(0.5)
    stop_server(proc)
    raise PawflowError(
        f"the Prefect server did not answer within {HEALTH_TIMEOUT_S:.0f}s (see {out.name}).",
        "Start one yourself (`prefect server start`) and set PREFECT_API_URL.",
    )


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def prefect_api(home: Path) -> Iterator[str]:
    """Use PREFECT_API_URL when it answers; otherwise run a local server for the duration."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not healthy(configured):
            raise PawflowError(
                f"PREFECT_API_URL={configured} does not answer.",
                "Start that server (`prefect server start`) or unset PREFECT_API_URL.",
            )
        yield configured
        return
    print(
        "starting a local Prefect server for this run (history kept in "
        f"{home}; browse it later with `PREFECT_HOME={home} prefect server start`)...",
        flush=True,
    )
    proc, api_url = start_server(home)
    os.environ["PREFECT_API_URL"] = api_url
    try:
        yield api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        stop_server(proc)
