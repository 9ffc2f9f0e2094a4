"""What the benchmarks share: workspaces, timed commands with peak memory, results files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.core.params import override

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = (ROOT / "../shared/datasets/petimages-sample").resolve()
PETIMAGES_16K = (ROOT / "../shared/datasets/petimages-16k").resolve()  # real photos, disjoint from SAMPLE
WORK = ROOT / "bench" / "work"
RESULTS = ROOT / "bench" / "results"
MACHINE = (
    f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
)


def cpu_model() -> str | None:
    """The CPU's model name (Linux), which decides TensorFlow's kernels and so every speed measured."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def measured() -> dict[str, Any]:
    """Where and when a result was measured: the commit (with '+local changes' when the work tree had
    uncommitted ones), the UTC time, the load average (this benchmark's own work included) and the
    machine. bench.tables prints it under every table."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {
        "commit": git("rev-parse", "HEAD") + (" +local changes" if dirty else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "machine": ", ".join(filter(None, [cpu_model(), MACHINE, "no GPU"])),
    }


@dataclass
class Timed:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def run(cmd: list[str], cwd: Path, check: bool = True) -> Timed:
    """Run a command; wall time and the peak RSS of the largest process in its tree (wait4)."""
    logs = WORK / "logs"  # the last command's output per working folder, kept for a post-mortem
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(logs / f"{cwd.name}.stdout", "w+") as out, open(logs / f"{cwd.name}.stderr", "w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        timed = Timed(
            seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), out.read(), err.read()
        )
    if check and timed.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({timed.returncode}):\n{timed.stderr[-4000:]}")
    return timed


def run_stamped(cmd: list[str], cwd: Path, user_env: bool = True) -> tuple[Timed, list[tuple[float, str]]]:
    """Like run (check=True), stdout and stderr merged, each line with its second since the start.

    user_env: without the benchmark's PREFECT_API_URL, as a user runs the command (the stage processes
    then start, or reuse, the workspace's background Prefect server)."""
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    e = {**env(), "PYTHONUNBUFFERED": "1"}  # each line when it is printed, so its time stamp is right
    if user_env:
        e.pop("PREFECT_API_URL", None)
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    with open(logs / f"{cwd.name}.stamped", "w", buffering=1) as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
            log.write(f"{lines[-1][0]:9.2f} {lines[-1][1]}\n")
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    text = "\n".join(line for _, line in lines)
    timed = Timed(seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), text, "")
    if timed.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({timed.returncode}):\n{text[-4000:]}")
    return timed, lines


def link_files(files: list[Path], src: Path, dest: Path, prefix: str = "") -> list[Path]:
    """Each file at dest/<its path under src> (name prefixed), as a hard link (a copy across file
    systems): a source folder under bench/work without copying the shared photos."""
    out = []
    for f in files:
        rel = f.relative_to(src)
        target = dest / rel.parent / f"{prefix}{rel.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
        out.append(target)
    return out


def median_of(n: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    values = [fn() for _ in range(n)]
    return statistics.median(values), values


def workspace(name: str, source: Path, **overrides: dict) -> Path:
    """A fresh copy of the project (git-tracked files) whose ingest.source is `source`."""
    ws = WORK / name
    if ws.exists():
        shutil.rmtree(ws)
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        if (
            f.startswith(("tests/", "bench/", "reports/", "data/", "models/")) and f != "data/exclude.txt"
        ) or (f == "dvc.lock"):
            continue
        (ws / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, ws / f)
    params = override(yaml.safe_load((ws / "params.yaml").read_text()), source, overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (ws / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "bench"],
    ):
        subprocess.run(cmd, cwd=ws, check=True)
    return ws


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """One local Prefect server for the whole benchmark run (as `make run` uses one)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import start_server, stop_server

    proc, url = start_server(WORK / "prefect-home")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        stop_server(proc)


def image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )


def source_files(folder: Path) -> list[Path]:
    """Every file of a dataset folder (the sample's non-images too, as a user's folder has them)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SOURCE.md")


def save(n: int, figure: str, target: str, met: bool | None, *, name: str | None = None, **raw: Any) -> dict:
    """bench/results/P<n>.json (or <name>.json): the figure, its target, whether it is met, and the raw
    numbers."""
    result = {
        "benchmark": f"P{n}",
        "figure": figure,
        "target": target,
        "met": met,
        "measured": measured(),
        **raw,
    }
    write_result(RESULTS / f"{name or f'P{n}'}.json", result)
    return result


def write_result(path: Path, result: dict) -> None:
    """A results file, in the one format every bench/results/P<n>.json has."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")


class Webhook:
    """A local HTTP endpoint that keeps the JSON body of every POST (pipeline.alert_url in a benchmark)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    hook.received.append(json.loads(body))
                except ValueError:
                    hook.received.append({"unreadable": body[:200].decode(errors="replace")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def folder_bytes(path: Path) -> int:
    """Bytes of the files under a folder (0 when it does not exist); links counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for f in path.rglob("*") if path.exists() else ():
        if f.is_file() and not f.is_symlink():
            st = f.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total
