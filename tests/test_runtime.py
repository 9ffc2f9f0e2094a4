"""params.yaml `tensorflow:` pins what varies between hosts: no native crash, the same model bytes.

On AVX-512 hosts oneDNN's AVX-512 kernels crashed the small model (width 8, 32 px) with heap
corruption, and uncapped kernels gave each host other weights. The stage processes below train with
exactly the settings `make run` uses, on a host whose environment asks for the crashing kernels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imagegen
import pytest
from conftest import make_workspace, shipped, tool_env

from tasks.core.errors import PawflowError
from tasks.model.runtime import configure, tensorflow_env

SMALL = {"epochs": 2, "image_size": 32, "width": 8, "batch_size": 8, "warmup_epochs": 0}
# What a host of another kind would pick on its own: TensorFlow's default there, or a user's setting.
HOSTILE_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def run(
    ws: Path,
    api: str,
    *args: str,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    module: bool = True,
):
    out = subprocess.run(
        [*prefix, sys.executable, *(("-m",) if module else ()), *args],
        cwd=ws,
        env={**tool_env(api), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )
    # A native crash is a negative exit code (the signal): the message names it.
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Path:
    root = tmp_path_factory.mktemp("runtime")
    source = imagegen.make_dataset(root / "source", per_class=30)
    ws = make_workspace(root / "ws", source, train=SMALL, evaluate={"min_accuracy": 0.0})
    for stage in ("ingest", "clean", "dedup", "shard"):
        run(ws, prefect_server, f"flows.{stage}")
    return ws


def epoch_lines_in_prefect(flow_name: str) -> tuple[list[str], list]:
    """The per-epoch log lines of the latest run of a flow, as the Prefect server (and UI) has them,
    and that run's progress artifacts' values."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        FlowFilter,
        FlowFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort, LogSort

    with get_client(sync_client=True) as client:
        (latest,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[latest.id])), sort=LogSort.TIMESTAMP_ASC
        )
        bars = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[latest.id]),
                type=ArtifactFilterType(any_=["progress"]),
            )
        )
    return [log.message for log in logs if log.message.startswith("epoch ")], [b.data for b in bars]


@pytest.mark.slow
def test_same_model_bytes_under_load_and_another_hosts_settings(sharded: Path, prefect_server: str):
    run(sharded, prefect_server, "flows.train", "--refresh")
    first = md5(sharded / "models/model.keras")
    # Training is watched in Prefect: one line per epoch with its numbers, speed and ETA.
    lines, bars = epoch_lines_in_prefect("train")
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], lines
    assert all("val_accuracy" in line and "img/s" in line and "ETA" in line for line in lines)
    assert bars == [100.0]  # the train-progress artifact, at its end
    # Again with a busy core, squeezed onto one core (as on a smaller host), and an environment that
    # asks for the kernels that crashed: params.yaml decides, so nothing changes.
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        one_core = ("taskset", "-c", "0") if shutil.which("taskset") else ()
        run(sharded, prefect_server, "flows.train", "--refresh", env=HOSTILE_ENV, prefix=one_core)
    finally:
        busy.kill()
        busy.wait()
    assert md5(sharded / "models/model.keras") == first
    report = (sharded / "reports/train.json").read_text()
    assert '"onednn_max_isa": "AVX2"' in report and "wall_time" not in report


# The train stage run by a process that imported the training code and its logger (dvclive) before the
# flow started, where `python -m flows.train` imports the training code when its flow starts and dvclive
# once the seed is set.
IMPORTS_FIRST = """
import runpy, sys
import dvclive.keras, tasks.train
sys.argv = ["flows.train", "--refresh"]
runpy.run_module("flows.train", run_name="__main__")
"""


@pytest.mark.slow
def test_model_bytes_do_not_depend_on_import_order(sharded: Path, prefect_server: str):
    """An import that takes seconds after the seed is set, while Prefect's events client pings its
    server from another thread (each websockets ping draws from Python's global random generator), gave
    another model when Keras drew its seeds from that generator too (tasks.train.keras_draws_privately)."""
    run(sharded, prefect_server, "flows.train", "--refresh")
    imported_late = md5(sharded / "models/model.keras")
    run(sharded, prefect_server, "-c", IMPORTS_FIRST, module=False)
    assert md5(sharded / "models/model.keras") == imported_late


@pytest.mark.slow
def test_default_model_shape_trains_without_a_crash(sharded: Path, prefect_server: str, tmp_path: Path):
    ws = tmp_path / "default"
    shutil.copytree(sharded, ws, symlinks=True)
    params = (ws / "params.yaml").read_text()
    # The default pawnet (params.yaml's width and image size), one epoch.
    params = params.replace("width: 8", "width: 24").replace("image_size: 32", "image_size: 128")
    (ws / "params.yaml").write_text(params.replace("epochs: 2", "epochs: 1"))
    run(ws, prefect_server, "flows.train", "--refresh", env=HOSTILE_ENV)
    assert (ws / "models/model.keras").stat().st_size > 0


def test_settings_cannot_change_after_tensorflow_started():
    import tensorflow as tf

    configure(shipped("tensorflow"))  # the same settings: fine, and idempotent
    tf.constant(1.0) + 1.0  # TensorFlow's runtime has started: its thread pools are fixed now
    assert tf.config.threading.get_intra_op_parallelism_threads() in (0, 2)  # 0: from TF_NUM_*_THREADS
    with pytest.raises(PawflowError, match="ONEDNN_MAX_CPU_ISA=AVX512_CORE"):
        configure(shipped("tensorflow", onednn_max_isa="AVX512_CORE"))
    with pytest.raises(PawflowError, match="TF_NUM_INTRAOP_THREADS=3"):
        configure(shipped("tensorflow", threads=3))


def test_environment_follows_params():
    assert tensorflow_env(shipped("tensorflow")) == {
        "TF_ENABLE_ONEDNN_OPTS": "1",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "TF_NUM_INTRAOP_THREADS": "2",
        "TF_NUM_INTEROP_THREADS": "2",
    }
    assert tensorflow_env(shipped("tensorflow", onednn=False))["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"  # conftest applied params.yaml before TensorFlow
