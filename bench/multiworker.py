"""Multi-worker training on this one machine: one process vs two workers on loopback, same shards.

python -m bench.multiworker [WORKSPACE] [EPOCHS]   (default: this project after `make run`, 2 epochs)

Both runs train the workspace's configured model for EPOCHS epochs (no early stopping) and report the
training images/s over the train split; the two workers also report whether they ended with identical
weights. Writes bench/results/multiworker.json. On one 2-core machine the workers share the cores, so
this measures the cost of the collectives and of the custom loop, not a speed-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, WORK, measured, write_result
from flows.server import free_ports

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 3600


def train_once(ws: Path, epochs: int, out: Path) -> None:
    """One process's run (a worker when TF_CONFIG is set): writes its report and a weights digest."""
    from tasks.core.params import load_params
    from tasks.model import runtime

    params = load_params(ws / "params.yaml")
    runtime.configure(params.tensorflow)  # before TensorFlow is imported
    from tasks import train
    from tasks.photos.datasetinfo import DatasetInfo

    cfg = params.train.model_copy(update={"epochs": epochs, "early_stopping_patience": epochs})
    info = DatasetInfo.read(ws / "data/processed")
    result = train.train(
        ws / "data/processed",
        info,
        cfg,
        out.with_suffix(".work"),
        os.environ.get("TF_CONFIG"),
        progress=False,
    )
    keep = {"device": result.report["device"], **dataclasses.asdict(result.run)}
    keep["model_sha256"] = hashlib.sha256(result.model).hexdigest()
    model = out.with_suffix(".keras")
    model.write_bytes(result.model)
    import keras

    weights = keras.saving.load_model(model, compile=False).get_weights()
    keep["weights_sha256"] = hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest()
    out.write_text(json.dumps(keep, indent=2))


def spawn(ws: Path, epochs: int, out: Path, tf_config: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if tf_config:
        env["TF_CONFIG"] = tf_config
    cmd = [sys.executable, "-m", "bench.multiworker", "--one", str(ws), str(epochs), str(out)]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def finish(procs: list[subprocess.Popen]) -> float:
    started = time.monotonic()
    try:
        for p in procs:
            _, err = p.communicate(timeout=TIMEOUT_S)
            if p.returncode:
                raise SystemExit(f"a training process failed:\n{err[-3000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return time.monotonic() - started


def main(ws: Path, epochs: int) -> dict:
    if not (ws / "data/processed/dataset_info.json").exists():
        raise SystemExit(
            f"{ws}/data/processed has no shards: run `make run` (or dvc repro shard) there first."
        )
    out = WORK / "multiworker"
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    one_wall = finish([spawn(ws, epochs, out / "single.json", None)])
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    configs = [
        json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}) for i in range(2)
    ]
    two_wall = finish([spawn(ws, epochs, out / f"worker{i}.json", c) for i, c in enumerate(configs)])
    single = json.loads((out / "single.json").read_text())
    w0, w1 = (json.loads((out / f"worker{i}.json").read_text()) for i in range(2))
    result = {
        "measured": measured(),
        "epochs": epochs,
        "single": {**single, "process_wall_s": round(one_wall, 1)},
        "two_workers": {**w0, "process_wall_s": round(two_wall, 1)},
        "throughput_ratio": round(w0["train_images_per_s"] / single["train_images_per_s"], 2),
        "workers_identical_weights": w0["weights_sha256"] == w1["weights_sha256"],
        "seconds": round(time.monotonic() - started, 1),
    }
    write_result(RESULTS / "multiworker.json", result)
    print(
        f"one process: {single['train_images_per_s']} img/s; two workers on loopback: "
        f"{w0['train_images_per_s']} img/s ({result['throughput_ratio']}x); identical weights on both "
        f"workers: {result['workers_identical_weights']}; total {result['seconds']} s"
    )
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        train_once(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        args = sys.argv[1:]
        main(Path(args[0]).resolve() if args else ROOT, int(args[1]) if len(args) > 1 else 2)
