"""A Prefect API for a run: the one in PREFECT_API_URL, or a local server started for the run.

Without an API every flow process starts its own temporary one (15-30 s each here); one local server
for the whole run costs ~20 s once and keeps the run history in .pawflow/prefect for `prefect server start`.

The background server: a stage process run without PREFECT_API_URL (as `dvc repro` runs them) uses one
local server that the first such process starts in the background (.pawflow/prefect) and the next ones
reuse. It stops itself once no pawflow run holds the workspace and none has started for IDLE_TIMEOUT_S,
or at once with `python -m flows.server stop`. PAWFLOW_BACKGROUND_SERVER=0 turns it off.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from flows.lock import LOCK_FILE
from tasks.core.errors import PawflowError

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 180.0
BACKGROUND_HOME = Path(".pawflow/prefect")  # relative to the project root (where dvc runs the stages)
IDLE_TIMEOUT_S = 900.0  # the background server stops after this long without a pawflow run
IDLE_POLL_S = 5.0


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
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # The UI asks this URL for its data; unset, it asks 127.0.0.1:4200 and every run page is a 404.
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_SERVER_UI_API_URL": api_url,
    }
    # Bounded history: Prefect's vacuum deletes flow runs that ended over 90 days ago (its default
    # retention period), not only old events; set the variable to change it.
    env.setdefault("PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED", "events,flow_runs")
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


# --------------------------------------------------------------------------- the background server


def _state(home: Path) -> dict | None:
    try:
        return json.loads((home / "background.json").read_text())
    except (OSError, ValueError):
        return None


def background_url(home: Path = BACKGROUND_HOME) -> str | None:
    """The background server's API URL if it is up and answering."""
    state = _state(home)
    return state["url"] if state and healthy(state["url"]) else None


def _touch(home: Path) -> None:
    with contextlib.suppress(OSError):
        (home / "last-used").touch()


def ensure_background(home: Path = BACKGROUND_HOME) -> str:
    """The background server's URL, starting it (once, under a lock) if it is not running."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "background.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # two stage processes never start two servers
        _touch(home)
        url = background_url(home)
        if url:
            return url
        print(
            f"starting a background Prefect server in {home} (reused by the next stages; it stops after "
            f"{IDLE_TIMEOUT_S / 60:.0f} idle minutes, or `python -m flows.server stop`)...",
            flush=True,
        )
        with open(home / "background.log", "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "flows.server", "serve", "--home", str(home)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the stage process; not killed with its group
            )
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            url = background_url(home)
            if url:
                return url
            time.sleep(0.5)
    raise PawflowError(
        f"the background Prefect server did not answer within {HEALTH_TIMEOUT_S:.0f}s "
        f"(see {home / 'background.log'}).",
        "Start one yourself (`prefect server start`) and set PREFECT_API_URL.",
    )


def _running_stage() -> bool:
    """A stage holds the workspace (flows.lock.workspace_lock writes "pid N: ..." into the lock file
    while it runs and empties it after). Read, never locked here: a stage starting now must not fail."""
    try:
        holder = LOCK_FILE.read_text().strip()
    except OSError:
        return False
    if not holder.startswith("pid "):
        return False
    try:
        os.kill(int(holder[4:].split(":", 1)[0]), 0)
    except (ValueError, ProcessLookupError):
        return False  # killed without cleaning up
    except PermissionError:
        return True
    return True


def _idle(home: Path, idle_s: float) -> bool:
    """No stage runs and none started or ended within idle_s."""
    try:
        recent = time.time() - (home / "last-used").stat().st_mtime < idle_s
    except OSError:
        recent = False
    return not recent and not _running_stage()


def serve_background(home: Path, idle_s: float) -> int:
    """Run `prefect server start` until idle or told to stop (SIGTERM), then stop it and clean up."""
    proc, url = start_server(home, log_file=home / "server.log")
    _touch(home)  # the idle time counts from now: the stage that started it has yet to connect
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    (home / "background.json").write_text(json.dumps({"pid": os.getpid(), "url": url}))
    try:
        while not stopping and proc.poll() is None and not _idle(home, idle_s):
            time.sleep(IDLE_POLL_S)
    finally:
        (home / "background.json").unlink(missing_ok=True)
        stop_server(proc)
    return 0


def stop_background(home: Path = BACKGROUND_HOME) -> bool:
    """Stop the background server if one runs; True if it did."""
    state = _state(home)
    if not state:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline and (home / "background.json").exists():
            time.sleep(0.2)
        return True
    (home / "background.json").unlink(missing_ok=True)  # it had died without cleaning up
    return False


def use_api(url: str) -> None:
    """Point this process's Prefect at the API at url, also when Prefect was imported already: Prefect
    builds its settings once, when first imported, and its clients and its log and event workers (which
    run in threads of their own) read the process-wide settings that refresh_global_settings_context
    builds again from the environment."""
    os.environ["PREFECT_API_URL"] = url
    if "prefect" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def use_background_server(params_path: Path = Path("params.yaml")) -> None:
    """The first thing a stage process (`python -m flows.<stage>`, and the Prefect pipeline run without a
    deployment, so that every entry point keeps its history in .pawflow/prefect as `pawflow run` does)
    does before its flow runs: without PREFECT_API_URL, use the background server (started if needed).
    Called explicitly by the entry points (flows.common.stage_main, flows.pipeline.main), never on import.
    Nothing happens outside a project root, with PAWFLOW_BACKGROUND_SERVER=0, or when the params are bad
    (the process reports them, in one message, before any server starts); any other failure falls back
    to Prefect's own temporary server, with the reason printed."""
    if (
        os.environ.get("PREFECT_API_URL")
        or os.environ.get("PAWFLOW_BACKGROUND_SERVER", "1") == "0"
        or not params_path.is_file()  # not at a project root
    ):
        return
    from tasks.check import preflight

    try:
        preflight(params_path, light=True)
    except PawflowError:
        return
    try:
        url = ensure_background()
    except (PawflowError, OSError) as err:
        print(f"pawflow: no background Prefect server ({err}); using a temporary one.", file=sys.stderr)
        return
    use_api(url)
    import atexit

    atexit.register(_touch, BACKGROUND_HOME)  # the idle time counts from the end of the last stage


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
    background = background_url(home)
    if background:  # the stages' background server runs on this home: use it, never a second one
        os.environ["PREFECT_API_URL"] = background
        try:
            yield background
        finally:
            os.environ.pop("PREFECT_API_URL", None)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.server", description="the background server")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run it in the foreground until idle (stage processes start it)")
    serve.add_argument("--home", type=Path, default=BACKGROUND_HOME)
    serve.add_argument("--idle", type=float, default=IDLE_TIMEOUT_S, help="seconds without a run, then stop")
    sub.add_parser("stop", help="stop it now")
    sub.add_parser("status", help="print its API URL, or that none runs")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return serve_background(args.home, args.idle)
    if args.cmd == "stop":
        print("stopped" if stop_background() else "no background Prefect server was running")
        return 0
    url = background_url()
    print(url or "no background Prefect server is running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
