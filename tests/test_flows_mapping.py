"""flows/mapping.py on real Dask clusters: `dask scheduler` and `dask worker` processes started here, the
workers in another folder, importing pawflow from another install location than the workspace, as on a
second machine (and, as root, one of them in its own network namespace and one that cannot see the
workspace). The stages run as their commands do (stage_main, from the workspace, relative paths)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import imagegen
import pytest
from conftest import make_workspace, tool_env
from dataflows import DATA_FILES, messy_source

from flows import check, common
from flows.clean import clean_flow
from flows.dedup import dedup_flow
from flows.ingest import ingest_flow
from flows.server import free_ports
from flows.shard import shard_flow
from tasks.check import preflight

ROOT = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).parent / "dask")
START_S = 60  # a scheduler or worker process starts in a few seconds, also on a loaded machine
# Kills its worker process (as kill -9 would) when the worker starts its first chunk of clean, once per
# test: the worker's nanny starts a new one, and the chunk is computed again.
KILL_ONCE = """
import os
from pathlib import Path
from distributed.diagnostics.plugin import WorkerPlugin

FLAG = Path({flag!r})

class KillOnce(WorkerPlugin):
    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and str(key).startswith("clean-chunk") and not FLAG.exists():
            FLAG.touch()
            os._exit(9)

async def dask_setup(worker):
    await worker.plugin_add(KillOnce(), name="kill-once")
"""


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for p in started:
            stop(p)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def start(procs: list, cmd: list[str], log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    procs.append(p)
    return p


def scheduler(procs: list, tmp: Path, host: str) -> tuple[str, int]:
    port, dashboard = free_ports(2)
    cmd = [
        DASK,
        "scheduler",
        "--host",
        host,
        "--port",
        str(port),
        "--dashboard-address",
        f"{host}:{dashboard}",
    ]
    start(procs, cmd, tmp / "scheduler.log", tmp, tool_env())
    deadline = time.monotonic() + START_S
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return f"tcp://{host}:{port}", dashboard
        assert time.monotonic() < deadline, (tmp / "scheduler.log").read_text()[-3000:]
        time.sleep(0.2)


def worker_env(install: Path) -> dict[str, str]:
    """A worker's environment on "another machine": pawflow imported from `install` (PYTHONPATH comes before
    the workspace's editable install), and a Prefect API it could not reach (it must never need one)."""
    return {**tool_env(), "PYTHONPATH": str(install), "PREFECT_API_URL": "http://127.0.0.1:9/api"}


def worker(procs: list, address: str, name: str, cwd: Path, install: Path, *extra: str, prefix=()) -> None:
    cmd = [*prefix, DASK, "worker", address, "--name", name, "--nthreads", "1", "--no-dashboard", *extra]
    start(procs, cmd, cwd / f"{name}.log", cwd, worker_env(install))


def workers_at(address: str, n: int) -> list[str]:
    """Wait until the scheduler has n workers; their addresses."""
    from distributed import Client

    with Client(address, timeout=START_S, set_as_default=False) as client:
        client.wait_for_workers(n, timeout=START_S)
        return sorted(client.scheduler_info(n_workers=-1)["workers"])


def copy_install(dest: Path) -> Path:
    """pawflow's code in another place, as a worker machine's own install of the same commit."""
    for package in ("flows", "tasks"):
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def stage(name: str, flow, capfd, caplog, *argv: str) -> tuple[int, str]:
    """`python -m flows.<name>` in this process (the workspace is the current folder): exit code, what it
    printed and logged."""
    load = preflight if name == "ingest" else common.load_params
    caplog.clear()
    code = common.stage_main(name, flow, argv=list(argv), load=load)
    out, err = capfd.readouterr()
    return code, out + err + caplog.text


def stage_lines(ws: Path, name: str) -> list[dict]:
    lines = [json.loads(x) for x in (ws / "reports/runs.jsonl").read_text().splitlines()]
    return [x for x in lines if x.get("stage") == name]


def test_no_chunks_need_no_cluster(tmp_path: Path):
    """A night whose verdicts are all cached hands nothing out: no cluster is asked (none is there)."""
    from flows.mapping import figures, map_chunks
    from tasks.core.params import params_in

    dask = {"kind": "dask", "dask_address": f"tcp://127.0.0.1:{free_ports(1)[0]}", "connect_timeout_s": 1}
    params = params_in(ROOT / "params.yaml", tmp_path, "src", runner=dask)
    with map_chunks(params, "clean", [], None, None, []) as run:
        assert list(run) == []
    assert figures(run, params) == {"kind": "dask", "chunks": 0}


@pytest.mark.slow
def test_data_stages_on_a_cluster_whose_workers_start_elsewhere(
    built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd, caplog
):
    """Byte-identical outputs to the threads runner, the work on both workers (one of them lost once and
    its chunk computed again, said in the output and the run history), per-chunk lines of shard in the
    stage's output, a dashboard that serves; a worker running other code refused by name; no worker, and
    then no scheduler, refused by the check stage in one message before DVC removes any output."""
    params, _ = built  # the data stages on the same source with the threads runner
    elsewhere, install = tmp_path / "elsewhere", copy_install(tmp_path / "install")
    elsewhere.mkdir()
    with processes() as procs:
        address, dashboard_port = scheduler(procs, tmp_path, "127.0.0.1")
        runner = {"kind": "dask", "dask_address": address, "chunk_size": 16, "no_worker_timeout_s": 3}
        ws = make_workspace(
            tmp_path / "ws",
            messy_source(tmp_path / "source"),
            runner=runner,
            clean={"max_reject_fraction": 0.5},
        )
        monkeypatch.chdir(ws)

        assert check.main() == 2  # a scheduler without workers
        said = capfd.readouterr().err
        assert "no Dask worker connected to the scheduler at" in said and "for 3 s" in said
        assert "Traceback" not in said and not (ws / "data/interim/checked.txt").exists()

        (tmp_path / "kill_once.py").write_text(KILL_ONCE.format(flag=str(tmp_path / "killed")))
        worker(procs, address, "w1", elsewhere, install, "--preload", str(tmp_path / "kill_once.py"))
        worker(procs, address, "w2", elsewhere, install)
        workers_at(address, 2)
        assert check.main() == 0
        assert "dask: 2 worker(s) at" in capfd.readouterr().out

        assert stage("ingest", ingest_flow, capfd, caplog)[0] == 0
        code, out = stage("clean", clean_flow, capfd, caplog)
        assert code == 0, out
        assert f"dask: 2 worker(s) at {address} see this workspace and run its code" in out
        assert re.search(r"was lost \(killed, crashed or unreachable\) during the run; \d chunk\(s\)", out), (
            out
        )
        (run,) = stage_lines(ws, "clean")
        (lost,) = run["runner"]["workers_lost"]
        assert lost["chunks_redone"] >= 1 and not lost["expected"]
        assert sum(run["runner"]["chunks_per_worker"].values()) == run["runner"]["chunks"]
        assert stage("dedup", dedup_flow, capfd, caplog)[0] == 0
        code, out = stage(
            "shard", shard_flow, capfd, caplog, "--refresh"
        )  # every image prepared on the workers
        assert code == 0, out
        lines = re.findall(r"shard: chunk \d+ of (\d+) prepared on (tcp://127\.0\.0\.1:\d+)", out)
        assert len(lines) == int(lines[0][0]) >= 2 and len({w for _, w in lines}) == 2, out  # both workers

        for rel in DATA_FILES:
            assert (ws / "data" / rel).read_bytes() == (params.paths.raw.parent / rel).read_bytes(), rel
        shards = sorted(
            p.relative_to(ws / "data/processed") for p in (ws / "data/processed").rglob("*.tfrecord-*")
        )
        assert shards
        for rel in shards:
            assert (ws / "data/processed" / rel).read_bytes() == (params.paths.processed / rel).read_bytes()
        assert not (elsewhere / ".pawflow").exists() and not list(elsewhere.rglob("*.sqlite"))
        link = re.search(r"dashboard: (http://\S+)", out).group(1)
        assert f":{dashboard_port}/" in link
        with urllib.request.urlopen(link, timeout=30) as page:  # bokeh serves it
            assert page.status == 200 and b"bokeh" in page.read().lower()

        # A worker whose install has other code (one statement more in tasks/photos/images.py): refused by
        # name.
        edited = copy_install(tmp_path / "edited")
        (edited / "tasks/photos/images.py").write_text(
            (edited / "tasks/photos/images.py").read_text() + "\nEDITED = 1\n"
        )
        before = workers_at(address, 2)
        w3 = start(
            procs,
            [DASK, "worker", address, "--name", "w3", "--nthreads", "1", "--no-dashboard"],
            elsewhere / "w3.log",
            elsewhere,
            worker_env(edited),
        )
        (new,) = set(workers_at(address, 3)) - set(before)
        assert check.main() == 2
        said = capfd.readouterr().err
        assert (
            f"1 Dask worker(s) cannot do this workspace's per-photo work; nothing was run:\n  {new} " in said
        )
        assert (
            f"code from {edited}" in said
            and "runs other code than this workspace: tasks/photos/images.py" in said
        )
        assert "restart the workers" in said
        stop(w3)

        # The scheduler is gone: `dvc repro` stops at the check stage; clean's outputs are still there.
        procs[0].kill()
        procs[0].wait()
        repro = subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "--force"],
            cwd=ws,
            env=tool_env(os.environ["PREFECT_API_URL"]),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert repro.returncode != 0
        assert f"cannot reach the Dask scheduler at {address} (runner.dask_address)" in repro.stderr
        assert "Traceback" not in repro.stdout + repro.stderr
        assert "Running stage 'ingest'" not in repro.stdout
        assert (ws / "data/interim/clean.parquet").exists() and (ws / "data/processed").is_dir()


# --------------------------------------------------------------------------- as root: namespaces


@contextlib.contextmanager
def network_namespace(tmp: Path) -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: (name, this side's address, its address).
    Its processes reach this machine only at that address (127.0.0.1 there is their own)."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        pytest.skip("needs root and iproute2/util-linux (network and mount namespaces)")
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    tag = f"pf{os.getpid() % 100000}"
    net = next(
        n
        for n in ipaddress.ip_network("10.213.0.0/16").subnets(new_prefix=30)
        if str(n[1]) not in used and int(n[0]) % 97 == os.getpid() % 97
    )
    host, guest = str(net[1]), str(net[2])
    setup = [
        ["ip", "netns", "add", tag],
        ["ip", "link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b"],
        ["ip", "link", "set", f"{tag}b", "netns", tag],
        ["ip", "addr", "add", f"{host}/30", "dev", f"{tag}a"],
        ["ip", "link", "set", f"{tag}a", "up"],
        ["ip", "netns", "exec", tag, "ip", "addr", "add", f"{guest}/30", "dev", f"{tag}b"],
        ["ip", "netns", "exec", tag, "ip", "link", "set", f"{tag}b", "up"],
        ["ip", "netns", "exec", tag, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for cmd in setup:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                pytest.skip(
                    f"network namespaces are not permitted here: {' '.join(cmd)}: {done.stderr.strip()}"
                )
        yield tag, host, guest
    finally:
        subprocess.run(["ip", "link", "del", f"{tag}a"], capture_output=True)
        subprocess.run(["ip", "netns", "del", tag], capture_output=True)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_worker_in_its_own_network_and_one_that_cannot_see_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd, caplog
):
    """A worker in another network namespace (it reaches the scheduler over a veth link and cannot reach the
    Prefect API on 127.0.0.1) does clean's work alone. A worker that does not see the workspace (a mount
    namespace with an empty folder over it, as a machine without the shared file system) is refused before
    any work, by name; once it is gone clean runs, its cache never deleted, and no verdict of the refused
    run was kept."""
    elsewhere, install = tmp_path / "elsewhere", copy_install(tmp_path / "install")
    elsewhere.mkdir()
    with network_namespace(tmp_path) as (netns, host, guest), processes() as procs:
        address, _ = scheduler(procs, tmp_path, host)
        runner = {"kind": "dask", "dask_address": address, "chunk_size": 8}
        ws = make_workspace(
            tmp_path / "ws", imagegen.make_dataset(tmp_path / "source", per_class=10), runner=runner
        )
        monkeypatch.chdir(ws)
        worker(
            procs, address, "far", elsewhere, install, "--host", guest, prefix=("ip", "netns", "exec", netns)
        )
        (far,) = workers_at(address, 1)
        assert far.startswith(f"tcp://{guest}:")
        assert stage("ingest", ingest_flow, capfd, caplog)[0] == 0
        code, out = stage("clean", clean_flow, capfd, caplog)
        assert code == 0, out
        (run,) = stage_lines(ws, "clean")
        assert list(run["runner"]["chunks_per_worker"]) == [far] and run["runner"]["chunks"] == 3

        hide = f'mount -t tmpfs pawflow-hidden "{ws}" && exec "$@"'
        blind = ("unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh")
        worker(procs, address, "blind", elsewhere, install, prefix=blind)
        (new,) = set(workers_at(address, 2)) - {far}
        code, out = stage("clean", clean_flow, capfd, caplog, "--refresh")
        assert code == 1
        assert (
            f"1 Dask worker(s) cannot do this workspace's per-photo work; nothing was run:\n  {new} " in out
        )
        assert f"cannot see this workspace: cannot read {ws}/.pawflow/cache/workers/run-" in out
        assert f"Mount the project folder at the same path ({ws}) on every worker's machine" in out
        assert "Traceback" not in out
        stop(procs.pop())
        workers_at(address, 1)
        code, out = stage("clean", clean_flow, capfd, caplog, "--refresh")
        assert code == 0, out
        assert (ws / ".pawflow/cache/photos.sqlite").exists()
        assert [r["runner"]["chunks_per_worker"] for r in stage_lines(ws, "clean")][-1] == {far: 3}
