"""train: fit the model from the TFRecord shards and save it with what prediction needs."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.utilities.annotations import NotSet

from flows.common import (
    content_cache,
    friendly,
    progress_artifact,
    publish,
    record_stage_run,
    result_storage,
    stage_main,
    stage_run_name,
)
from tasks import base
from tasks.core.errors import PawflowError
from tasks.core.fileio import MODEL_SHA256, sha256_bytes, write_json
from tasks.core.params import Params, TensorFlow, Train
from tasks.model import runtime
from tasks.photos.datasetinfo import DatasetInfo, verified
from tasks.reports.reports import TRAIN, TrainReport
from tasks.scaleout.cluster import role

if TYPE_CHECKING:
    from tasks.train import TrainResult

# The splits train reads: it fits on train and early-stops on val (never the test split).
TRAIN_SPLITS = ("train", "val")


# Keyed on dataset_info.json's hash, the sha256 of every shard file read as hashed just before (checked
# against dataset_info.json: a damaged shard is refused, so no result from one is ever stored), the
# starting model's sha256 (None from scratch), the config and the code. The result
# (tasks.train.TrainResult) carries the model and every log file, so a cache hit rewrites all of train's
# outputs.
@task(
    name="fit-model",
    cache_policy=content_cache(
        "tasks.train",
        "tasks.scaleout.distributed",
        "tasks.scaleout.cluster",
        "tasks.model.model",
        "tasks.photos.tfrecord",
        "tasks.model.runtime",
        exclude=("processed", "workdir", "tf_config", "start"),
    ),
    persist_result=True,
)
def fit_model(
    dataset_sha256: str,
    shards_sha256: dict[str, str],
    cfg: Train,
    tf_settings: TensorFlow,
    processed: Path,
    workdir: Path,
    tf_config: str | None,
    start_sha256: str | None = None,
    start: Path | None = None,
) -> TrainResult:
    """Fit on the train split, early-stop on val; the model file, the logs and the report as values.

    tf_settings (params.yaml tensorflow:, applied by the flow) is an input so that the cache key
    changes with the kernels that compute the model."""
    from tasks import train

    info = DatasetInfo.read(processed)
    log = get_run_logger()
    epochs = cfg.finetune.epochs if start is not None else cfg.epochs  # as train.train decides
    bar = progress_artifact("train-progress", f"train: 0 of {epochs} epochs", epochs)

    def say(done: int, line: str) -> None:
        log.info(line)
        bar(done, description=f"train: {line}")

    result = train.train(processed, info, cfg, workdir, tf_config, say=say, start=start)
    bar(epochs, description=f"train: done, {result.report['epochs_run']} epochs")
    return result


@flow(name="train", flow_run_name=stage_run_name, log_prints=True)
@friendly
def train_flow(params: Params, refresh: bool = False) -> TrainReport:
    """Train a Keras model from the shards; write models/model.keras, model.json and reports/train*."""
    runtime.configure(params.tensorflow)  # before TensorFlow is imported
    from tasks import train

    started = time.monotonic()
    log = get_run_logger()
    data = verified(params.paths.processed, TRAIN_SPLITS)  # every shard train reads, before it reads one
    log.info("%d shard file(s) verified against dataset_info.json", len(data.shards))
    info = data.info
    if info.examples("train") == 0:
        raise PawflowError("the train split is empty.", "Add photos or raise shard.split.train.")
    cfg = params.train
    # Warm start or from scratch: decided by models/base, params and the shards alone (tasks.base).
    base_dir = params.paths.models / "base"
    now = base.shaping(params.train, info)
    plan = base.plan(base.read_base(base_dir), now, base.train_examples(info), params.train.finetune)
    log.info("%s: %s", "warm start" if plan.warm else "from scratch", plan.reason)
    tf_config = os.environ.get("TF_CONFIG")
    me = role(tf_config)
    # In a cluster every worker must train: one answered from its cache would leave the others
    # waiting for it at the first all-reduce. NotSet: the task's own setting (Prefect's default).
    fit = fit_model.with_options(
        result_storage=result_storage(params), refresh_cache=True if refresh or me.workers > 1 else NotSet
    )
    result = fit(
        data.info_sha256,
        data.shards,
        cfg,
        params.tensorflow,
        params.paths.processed,
        params.paths.cache / "train",
        tf_config,
        plan.from_sha256,
        base_dir / base.BASE_MODEL if plan.warm else None,
    )
    rep: TrainReport = {
        **result.report,
        "tensorflow": runtime.describe(params.tensorflow),
        "warm_start": base.warm_start_report(plan),
        "start_reason": plan.reason,
    }
    log.info(
        "trained %s on %s: best epoch %s of %s",
        rep["model"],
        rep["device"],
        rep["best_epoch"],
        rep["epochs_run"],
    )
    if not me.chief:
        log.info("worker %d of %d: worker 0 writes the model and reports", me.index, me.workers)
        return rep
    models, reports = params.paths.models, params.paths.reports
    train.write_outputs(result, models / "model.keras", reports / "train", reports / "tensorboard")
    write_json(
        models / "model.json",
        {
            **train.model_card(info, cfg, params.clean, params.tensorflow),
            MODEL_SHA256: sha256_bytes(result.model),  # evaluate and predict check the file against it
            base.LINEAGE_KEY: base.lineage(plan, now),
        },
    )
    TRAIN.write(reports, rep)
    record_stage_run(params, "train", {**asdict(result.run), "warm_start": rep["warm_start"]})
    best = rep["best"]
    rows: list[list[Any]] = [
        ["model", f"{rep['model']} ({rep['parameters']:,} parameters)"],
        ["device", rep["device"]],
        ["start", f"warm start #{plan.count} from {plan.start_sha256[:12]}" if plan.warm else "from scratch"],
        ["epochs run (best)", f"{rep['epochs_run']} ({rep['best_epoch']})"],
        [
            "val accuracy (best epoch)",
            f"{100 * best['val_accuracy']:.1f} %" if "val_accuracy" in best else None,
        ],
        ["train images/s", result.run.train_images_per_s],
        ["training wall time (s)", result.run.wall_time_s],
        ["peak RSS (MB)", result.run.peak_rss_mb],
        ["seconds", f"{time.monotonic() - started:.1f}"],
    ]
    publish("train", "train: fitted model", ["", "value"], rows)
    return rep


if __name__ == "__main__":
    sys.exit(stage_main("train", train_flow))
