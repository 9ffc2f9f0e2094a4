"""Training on several machines: TF_CONFIG is read with clear errors, and two workers on loopback
(each with its own workspace, as on two machines) train one model through `python -m flows.train`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import imagegen
import numpy as np
import pytest
from conftest import make_workspace, tool_env

from flows.server import free_ports
from tasks.core.errors import PawflowError
from tasks.photos.datasetinfo import DatasetInfo
from tasks.scaleout.cluster import Role, role

FAST = {
    "train": {"epochs": 2, "image_size": 32, "width": 8, "batch_size": 8, "warmup_epochs": 0},
    "evaluate": {"min_accuracy": 0.0},
}
WORKER_TIMEOUT_S = 600


def tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def test_role_of_a_lone_process_and_of_each_worker():
    assert role(None) == role("") == Role(0, 1)
    assert role(json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})) == Role(
        0, 1
    )
    assert role(tf_config([1, 2, 3], 2)) == Role(2, 3)
    assert role(tf_config([1, 2], 0)).chief and not role(tf_config([1, 2], 1)).chief


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{not json", "not a valid cluster description"),
        ('["worker"]', "not a valid cluster description"),
        (tf_config([1, 2], 2), "task index 2 is not one of the 2 workers"),
        (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"index": 0}}), "['ps'] tasks"),
    ],
)
def test_bad_tf_config_says_what_to_do(value: str, says: str):
    with pytest.raises(PawflowError) as err:
        role(value)
    assert says in str(err.value) and "What to do: Set TF_CONFIG" in str(err.value)


def test_hits_for_one_sigmoid_output_and_for_softmax():
    import tensorflow as tf

    from tasks.scaleout.distributed import hits

    y = tf.constant([[1.0], [0.0], [1.0], [0.0]])
    p = tf.constant([[0.9], [0.2], [0.4], [0.7]])
    assert hits(y, p).numpy().tolist() == [1.0, 1.0, 0.0, 0.0]
    y3 = tf.one_hot([0, 2, 1], 3)
    p3 = tf.constant([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    assert hits(y3, p3).numpy().tolist() == [1.0, 1.0, 0.0]


def dvc(ws: Path, api: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=ws,
        env=tool_env(api),
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Path:
    """A workspace with the data stages run on 40 generated photos."""
    root = tmp_path_factory.mktemp("cluster")
    ws = make_workspace(root / "ws0", imagegen.make_dataset(root / "source", per_class=20), **FAST)
    dvc(ws, prefect_server, "repro", "shard", "base")  # the data stages; models/base: none, from scratch
    return ws


@pytest.mark.slow  # over 10 s: outside the fast tier (make test-fast <= 3 min)
def test_worker_shares_are_disjoint_and_cover_the_split(sharded: Path):
    from tasks import train

    info = DatasetInfo.read(sharded / "data/processed")
    files = train.split_files(sharded / "data/processed", info, "train")
    shares = [
        [
            p.decode()
            for _, _, paths, _ in train.make_dataset(
                files, num_classes=2, image_size=16, batch_size=4, with_meta=True, part=(2, i)
            )
            for p in paths.numpy()
        ]
        for i in range(2)
    ]
    assert not set(shares[0]) & set(shares[1])
    assert len(shares[0]) + len(shares[1]) == info.examples("train")
    assert abs(len(shares[0]) - len(shares[1])) <= 1


@pytest.mark.slow
def test_two_workers_train_one_model(sharded: Path, tmp_path: Path, prefect_server: str):
    import keras

    # Worker 1's machine: a copy of the workspace (on real machines: a clone and `dvc pull`).
    ws = [sharded, tmp_path / "ws1"]
    shutil.copytree(sharded, ws[1], symlinks=True)
    ports = free_ports(2)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "flows.train"],
            cwd=w,
            env={**tool_env(prefect_server), "TF_CONFIG": tf_config(ports, i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, w in enumerate(ws)
    ]
    try:
        logs = [p.communicate(timeout=WORKER_TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:  # a worker left alone would wait for its peer forever
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]

    report = json.loads((ws[0] / "reports/train.json").read_text())
    assert report["device"].startswith("multi-worker: 2 replica(s)") and report["workers"] == 2
    assert report["global_batch_size"] == 2 * FAST["train"]["batch_size"]
    assert report["epochs_run"] == FAST["train"]["epochs"]
    assert set(report["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert "worker 1 of 2: worker 0 writes the model" in logs[1]
    assert all(f"epoch {FAST['train']['epochs']}/{FAST['train']['epochs']}: " in log for log in logs)
    assert not (ws[1] / "models/model.keras").exists()  # only worker 0 writes the outputs

    # Synchronous training: both workers end with the same weights, batch-norm statistics included.
    chief = keras.models.load_model(ws[0] / "models/model.keras")
    other = keras.models.load_model(ws[1] / ".pawflow/cache/train-worker1/model.keras")
    for a, b in zip(chief.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    # The cluster's model is an ordinary pawflow model: recorded in DVC, evaluated, nothing stale.
    assert "Running stage" not in dvc(ws[0], prefect_server, "commit", "-f", "train")
    assert "Running stage 'evaluate'" in dvc(ws[0], prefect_server, "repro")
    assert "Data and pipelines are up to date" in dvc(ws[0], prefect_server, "status")
    assert json.loads((ws[0] / "reports/metrics.json").read_text())["examples"] > 0
