"""tasks/scaleout/workers.py: what a Dask worker must show before it gets work (the workspace at the same
path, the same code and libraries), and how a run meets a cluster with no worker, a worker that leaves, a
scheduler that cannot be reached. In-process clusters here; real `dask scheduler` / `dask worker` processes in
test_scaleout.py."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import shipped

from tasks.core.errors import PawflowError
from tasks.core.fileio import source_fingerprint
from tasks.scaleout import workers


def runner(**changes: object):
    return shipped("runner", kind="dask", **changes)


@pytest.fixture
def expect(tmp_path: Path) -> Iterator[workers.Expect]:
    """A run's expectation in a workspace with one photo the workers will read."""
    ws = tmp_path / "ws"
    photo = ws / "data/raw/Cat/a.jpg"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(b"0123456789")
    with workers.expectation(ws, ws / ".pawflow/cache", [(photo, 10)]) as e:
        yield e


def test_shipped_modules_follow_imports_but_not_type_checking_ones():
    modules, libraries = workers.shipped_modules(workers.SHIPPED)
    # tasks.clean imports tasks.photos.images (which decodes the photos); tasks.core.params only for type
    # checking
    shipped = {"tasks.clean", "tasks.photos.images", "tasks.photos.store", "tasks.scaleout.workers"}
    assert shipped <= set(modules)
    assert "tasks.core.params" not in modules and not any(m.startswith("flows") for m in modules)
    _, work_libraries = workers.shipped_modules(workers.WORK)
    assert {"PIL", "imagehash", "numpy"} <= set(work_libraries) <= set(libraries)
    assert not {"os", "pathlib", "sqlite3", "tasks"} & set(libraries)
    versions = workers.library_versions(work_libraries)
    assert {"pillow", "imagehash", "numpy", "scipy"} <= set(versions)  # scipy: what imagehash requires
    assert "prefect" not in versions and "distributed" not in versions


def test_a_worker_reports_the_code_it_loaded_not_the_file_edited_since(tmp_path: Path):
    """A worker started before an edit still runs the old code: it must not pass as running the new one."""
    source = tmp_path / "stale.py"
    source.write_text("def f():\n    return 1\n")
    module = types.ModuleType("tasks.stale_for_test")
    module.__file__ = str(source)
    sys.modules[module.__name__] = module
    try:
        loaded = workers.running_code([module.__name__])[module.__name__]
        source.write_text("def f():\n    return 2\n")  # edited after the worker loaded it
        assert workers.running_code([module.__name__])[module.__name__] == loaded
        assert loaded == source_fingerprint("def f():\n    return 1\n")
        assert loaded != source_fingerprint(source.read_text())
    finally:
        del sys.modules[module.__name__]
        workers._LOADED.pop(module.__name__, None)


def test_a_worker_that_sees_the_workspace_and_runs_its_code_passes(expect: workers.Expect):
    view = workers.look(expect)
    assert workers.mismatch(view, expect) == {}
    assert view.code_from == str(Path(workers.__file__).resolve().parents[2]) and view.pid == os.getpid()
    assert Path(expect.marker).is_absolute() and Path(expect.marker).read_text() == expect.token


def test_what_a_worker_cannot_see_or_runs_differently_is_named(expect: workers.Expect, tmp_path: Path):
    view = workers.look(expect)
    # another folder at the same path (a copy of the project): the marker there holds another token
    copy = dataclasses.replace(expect, token="0" * 32)
    assert "another file (a copy of the project" in workers.mismatch(workers.look(copy), copy)[workers.SEE]
    gone = dataclasses.replace(expect, marker=str(tmp_path / "elsewhere/run-1-ab"))
    assert "cannot read" in workers.mismatch(workers.look(gone), gone)[workers.SEE]
    photo, size = expect.samples[0]
    smaller = dataclasses.replace(expect, samples=((photo, size + 1), (str(tmp_path / "no.jpg"), 1)))
    said = workers.mismatch(workers.look(smaller), smaller)[workers.SEE]
    assert said.startswith("cannot see 2 photo(s)") and "10 bytes there, 11 in the workspace" in said
    other = dataclasses.replace(
        view,
        code={**view.code, "tasks.photos.images": "0" * 16},
        libraries={**view.libraries, "pillow": "9.0"},
    )
    found = workers.mismatch(other, expect)
    assert found[workers.CODE] == "runs other code than this workspace: tasks/photos/images.py"
    assert found[workers.LIBRARIES].startswith("has other library versions: pillow 9.0 (here ")
    err = workers.refusal(
        {"tcp://10.0.0.7:4000": (other, found), "tcp://10.0.0.8:4000": (None, found)}, expect
    )
    text = str(err)
    assert text.startswith("2 Dask worker(s) cannot do this workspace's per-photo work; nothing was run:")
    assert f"tcp://10.0.0.7:4000 (host {view.host}, pid {view.pid}, started in {view.cwd}, code from" in text
    assert "restart the workers" in text and "pip install -r" in text and "requirements.lock" in text
    blind = workers.refusal({"tcp://10.0.0.7:4000": (view, {workers.SEE: "x"})}, expect)
    assert f"Mount the project folder at the same path ({expect.workspace})" in str(blind)
    assert "PYTHONPATH" not in str(blind) and "pip install" not in str(blind)


def test_a_run_marker_lives_as_long_as_its_run_and_a_dead_runs_marker_goes(tmp_path: Path):
    cache = tmp_path / "cache"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    stale = cache / workers.MARKERS / f"run-{int(dead.stdout)}-abcd"
    live = cache / workers.MARKERS / f"run-{os.getppid()}-abcd"
    for p in (stale, live):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    with workers.expectation(tmp_path, cache) as e:
        assert Path(e.marker).exists() and not stale.exists() and live.exists()
    assert not Path(e.marker).exists()


# --------------------------------------------------------------------------- in-process clusters


@contextmanager
def local(n_workers: int) -> Iterator[tuple[object, object]]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=n_workers, processes=False, threads_per_worker=1, dashboard_address=None
        ) as lc,
        Client(lc, set_as_default=False) as client,
    ):
        yield lc, client


def wait_for(items: list, path: Path) -> list:
    """A chunk's work that lasts until `path` exists (a test says when)."""
    while not path.exists():
        time.sleep(0.02)
    return items


def close_worker_processing(lc, client, key: str, then: Path) -> None:
    """Close the worker computing `key` (as a crash would take it away), then let the chunks finish."""
    while not any(key in keys for keys in client.processing().values()):
        time.sleep(0.02)
    address = next(a for a, keys in client.processing().items() if key in keys)
    worker = next(w for w in lc.workers.values() if w.address == address)
    threading.Timer(0.3, then.touch).start()  # the closing worker's thread must end too
    lc.sync(worker.close)


def test_no_worker_ends_in_one_message_before_any_work(expect: workers.Expect):
    r = runner(no_worker_timeout_s=0.5)
    said = []
    with local(0) as (_, client):
        started = time.monotonic()
        with pytest.raises(PawflowError) as err:
            workers.wait_for_workers(client, r, said.append)
    assert time.monotonic() - started < 10
    assert said == ["dask: no worker at a local cluster yet; waiting up to 0.5 s for one"]
    assert "no Dask worker connected to the scheduler at a local cluster for 0.5 s" in str(err.value)
    assert "before any work was handed out; nothing was run" in str(err.value)


def test_an_unreachable_scheduler_is_one_message_in_the_connect_timeout(tmp_path: Path):
    from flows.server import free_port
    from tasks.core.params import params_in

    address = f"tcp://127.0.0.1:{free_port()}"
    root = Path(__file__).resolve().parents[1]
    params = params_in(
        root / "params.yaml",
        tmp_path,
        "src",
        runner={"kind": "dask", "dask_address": address, "connect_timeout_s": 1},
    )
    started = time.monotonic()
    with pytest.raises(PawflowError) as err:
        workers.check_cluster(params, tmp_path, print)
    assert time.monotonic() - started < 10
    assert str(err.value).startswith(f"cannot reach the Dask scheduler at {address} (runner.dask_address)")
    assert "within 1 s" in str(err.value) and "runner.kind: threads" in str(err.value)
    # without an address (a local cluster the stage starts itself) there is nothing to check
    workers.check_cluster(params.model_copy(update={"runner": runner()}), tmp_path, print)


def test_a_worker_lost_during_a_run_is_said_and_its_chunk_computed_again(
    expect: workers.Expect, tmp_path: Path
):
    go = tmp_path / "go"
    said: list[str] = []
    with local(2) as (lc, client):
        run = workers.ChunkMap(
            client, runner(), "clean", wait_for, [[0], [1]], {"path": go}, expect, said.append
        )
        tag = expect.token[:8]
        closer = threading.Thread(
            target=close_worker_processing, args=(lc, client, f"clean-chunk-0-{tag}", go)
        )
        closer.start()
        finished = list(run)
        closer.join()
    assert sorted((f.index, f.result) for f in finished) == [(0, [0]), (1, [1])]
    (gone,) = run.departures
    assert gone.redone == [0] and not gone.expected
    assert said == [
        f"dask: worker {gone.worker} was lost (killed, crashed or unreachable) during the run; "
        "1 chunk(s) it was computing or holding will be computed again elsewhere"
    ]
    assert sum(run.per_worker.values()) == 2 and gone.worker not in run.per_worker


def test_a_run_whose_last_worker_leaves_ends_in_one_message(expect: workers.Expect, tmp_path: Path):
    go = tmp_path / "go"
    with local(1) as (lc, client):
        run = workers.ChunkMap(
            client, runner(no_worker_timeout_s=1), "shard", wait_for, [[0]], {"path": go}, expect, print
        )
        closer = threading.Thread(
            target=close_worker_processing, args=(lc, client, f"shard-chunk-0-{expect.token[:8]}", go)
        )
        closer.start()
        with pytest.raises(PawflowError) as err:
            list(run)
        closer.join()
    assert "no Dask worker connected to the scheduler at the local cluster for 1 s" in str(err.value)
    assert "while shard was running" in str(err.value)


def test_a_worker_that_cannot_see_the_workspace_is_refused_before_its_first_chunk(expect: workers.Expect):
    """Also a worker that joins after the stage checked the others: it checks itself before any work."""
    with local(1) as (_, client):
        assert workers.check_workers(client, expect)
        Path(expect.marker).unlink()  # what a late worker on a machine without the shared folder sees
        run = workers.ChunkMap(client, runner(), "clean", wait_for, [[0]], {"path": Path("/")}, expect, print)
        with pytest.raises(PawflowError) as err:
            list(run)
        with pytest.raises(PawflowError, match="cannot see this workspace: cannot read"):
            workers.check_workers(client, expect)
    assert "1 Dask worker(s) cannot do this workspace's per-photo work" in str(err.value)
    assert f"cannot see this workspace: cannot read {expect.marker}" in str(err.value)


def test_relative_paths_are_never_handed_to_workers(expect: workers.Expect):
    with pytest.raises(ValueError, match=r"must be absolute: \['raw'\]"):
        workers.ChunkMap(None, runner(), "clean", wait_for, [], {"raw": Path("data/raw")}, expect, print)


def test_a_worker_that_cannot_run_pawflow_at_all_is_named(expect: workers.Expect):
    class Client:  # what client.run(look, ..., on_error="return") gives for a worker without pawflow
        def run(self, fn, *args, on_error: str):
            assert fn is workers.look and on_error == "return"
            return {"tcp://10.0.0.9:4000": Exception(repr(ModuleNotFoundError("No module named 'tasks'")))}

    with pytest.raises(PawflowError) as err:
        workers.check_workers(Client(), expect)
    said = str(err.value)
    assert "  tcp://10.0.0.9:4000:\n    - cannot run pawflow's code: ModuleNotFoundError(" in said
    assert f"start it with PYTHONPATH={expect.workspace}" in said
