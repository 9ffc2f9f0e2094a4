"""Shared fixtures: generated datasets, params, and one Prefect server for the whole session."""

from __future__ import annotations

import configparser
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

import imagegen

from flows.server import free_port, start_server, stop_server
from tasks.core.params import Params, Section, load_params, merged, override, params_in
from tasks.model.runtime import tensorflow_env

ROOT = Path(__file__).resolve().parents[1]


def drain_prefect_workers() -> None:
    """Flush queued logs and events while the server is still up (else they retry for a minute)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):  # never started
        APILogWorker.instance().drain()
    EventsWorker.drain_all()


# Prefect reads its settings once, when first imported. Point them at the session's server before
# any test module imports Prefect: threads Prefect starts itself (the process-pool runner's message
# forwarder) do not see settings changed later and would start a temporary server of their own.
assert "prefect" not in sys.modules, "conftest must configure Prefect before it is imported"
SESSION_PORT = free_port()
SESSION_HOME = Path(tempfile.mkdtemp(prefix="pawflow-test-prefect-"))
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{SESSION_PORT}/api"
os.environ["PREFECT_HOME"] = str(SESSION_HOME)
# Likewise TensorFlow reads its kernel settings when first imported: in-process tests train and predict
# with the project's params.yaml `tensorflow:` section, as the stage processes do.
os.environ.update(tensorflow_env(load_params(ROOT / "params.yaml").tensorflow))


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server on a loopback port, in a temporary PREFECT_HOME; stopped at the end."""
    proc, api_url = start_server(SESSION_HOME, SESSION_PORT)
    assert api_url == os.environ["PREFECT_API_URL"]
    try:
        yield api_url
        drain_prefect_workers()
    finally:
        stop_server(proc)
        shutil.rmtree(SESSION_HOME, ignore_errors=True)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """20 distinct photos per class, PetImages layout."""
    return imagegen.make_dataset(tmp_path / "source", per_class=20)


def params_for(workdir: Path, source: Path | str, **overrides: dict) -> Params:
    """The project's params with every path inside workdir; sections can be overridden by dict."""
    return params_in(ROOT / "params.yaml", workdir, source, **overrides)


def shipped(section: str, **changes: object) -> Section:
    """One section of the repository's params.yaml (a dotted name: "train", "train.augment"), validated by
    its model, with `changes` applied (nested mappings merged): what tests build sections from, as the
    models hold no values of their own."""
    data: object = yaml.safe_load((ROOT / "params.yaml").read_text())
    model: type = Params
    for part in section.split("."):
        data, model = data[part], model.model_fields[part].annotation
    return model.model_validate(merged(data, changes))


@pytest.fixture
def make_params(tmp_path: Path):
    def make(source: Path | str, **overrides: dict) -> Params:
        return params_for(tmp_path / "work", source, **overrides)

    return make


def tool_env(api_url: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def make_workspace(dest: Path, source: Path, **overrides: dict) -> Path:
    """A fresh clone-like copy of the project (tracked files only) with params pointing at source."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        src = ROOT / f
        if (
            (f.startswith(("tests/", "bench/", "reports/", "data/", "models/")) and f != "data/exclude.txt")
            or f == "dvc.lock"
            or not src.is_file()
        ):
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / f)
    data = override(yaml.safe_load((dest / "params.yaml").read_text()), source, overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    # The project's DVC config less its remote (a test pushes nowhere unless it sets one): `dvc plots
    # show` draws with the project's offline template, as in a clone.
    plots = configparser.ConfigParser()
    plots.read(ROOT / ".dvc" / "config")
    template = plots["plots"]["html_template"]
    (dest / ".dvc" / "config").write_text(
        f"[core]\n    analytics = false\n[plots]\n    html_template = {template}\n"
    )
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=dest, check=True
    )
    return dest


@pytest.fixture
def raw_with_history(tmp_path: Path) -> Path:
    """data/raw after an earlier, good ingest: a refused archive must leave it byte for byte as it is."""
    from sources import run_ingest

    raw = tmp_path / "work" / "raw"
    run_ingest(imagegen.make_dataset(tmp_path / "earlier", per_class=2), raw)
    return raw


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, prefect_server: str):
    """The four data flows run once on a messy source (test_flows_clean, _dedup, _shard, _common read it)."""
    from dataflows import messy_source, run_data_stages

    root = tmp_path_factory.mktemp("flows")
    source = messy_source(root / "source")
    params = params_for(root / "work", source, clean={"max_reject_fraction": 0.5})
    run_data_stages(params)
    return params, source


# --------------------------------------------------------------------------- a trained model, in-process

# One epoch of a tiny model: train and evaluate in seconds.
FAST_TRAIN = {"epochs": 1, "image_size": 32, "width": 8, "batch_size": 8, "warmup_epochs": 0}


def run_flows(params: Params, *flows, refresh: bool = False) -> list[dict]:
    """Each flow in turn, in-process; their results (each must complete)."""
    out = []
    for flow in flows:
        state = flow(params=params, refresh=refresh, return_state=True)
        assert state.is_completed(), state.message
        out.append(state.result())
    return out


def workspace_of(params: Params) -> Path:
    return params.paths.raw.parent.parent


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Params:
    """Every stage run in-process on 40 generated photos (a gate that promotes any model): the params
    of that workspace. Shared by the train, evaluate and predict tests (training once)."""
    from flows.clean import clean_flow
    from flows.dedup import dedup_flow
    from flows.evaluate import evaluate_flow
    from flows.ingest import ingest_flow
    from flows.shard import shard_flow
    from flows.train import train_flow

    root = tmp_path_factory.mktemp("model")
    source = imagegen.make_dataset(root / "source", per_class=20)
    params = params_for(root / "work", source, train=FAST_TRAIN, evaluate={"min_accuracy": 0.0})
    run_flows(params, ingest_flow, clean_flow, dedup_flow, shard_flow, train_flow, evaluate_flow)
    return params


def copy_of_trained(trained: Params, dest: Path) -> Params:
    """The `trained` workspace copied to dest (its shards, models, reports and caches), for a test that
    damages files: the params of the copy."""
    shutil.copytree(workspace_of(trained), dest / "work", symlinks=True)
    return params_for(dest / "work", trained.ingest.source, train=FAST_TRAIN, evaluate={"min_accuracy": 0.0})


def first_records(tfrecord_file: bytes, n: int) -> bytes:
    """The first n records of a TFRecord file (length, CRC, data, CRC each): cut at a record boundary,
    a shorter file that reads as valid."""
    pos = 0
    for _ in range(n):
        pos += 8 + 4 + int.from_bytes(tfrecord_file[pos : pos + 8], "little") + 4
    return tfrecord_file[:pos]
