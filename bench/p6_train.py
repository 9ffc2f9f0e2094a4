"""One training run in its own process (P6 time-to-accuracy, P7 runtime settings):

python -m bench.p6_train WORKSPACE MODEL OUT.json [--epochs N] [--size PX] [--tensorflow JSON]
                         [--budget-s S] [--test-each-epoch]

--tensorflow overrides params.yaml `tensorflow:` keys for this run (P7 compares settings).
--budget-s sizes the schedule to a time budget: the epochs that fit in it at the speed a short probe
measures (never more than params.yaml's train.epochs), so each model's learning rate anneals to its
end inside the budget. --test-each-epoch measures test accuracy after every epoch (the way evaluate
does, flip average included); that time is left out of the training minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

PROBE_WARMUP = 5  # batches before the probe's clock starts (tracing, the shuffle buffer's first fill)
PROBE_BATCHES = 25  # batches the probe times


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.p6_train")
    parser.add_argument("workspace", type=Path)
    parser.add_argument("model")
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, help="default: params.yaml train.epochs (or --budget-s)")
    parser.add_argument("--size", type=int, help="image size; default: params.yaml train.image_size")
    parser.add_argument("--tensorflow", type=json.loads, default={}, help="JSON of tensorflow: overrides")
    parser.add_argument("--budget-s", type=float, help="size the epochs to this many seconds of training")
    parser.add_argument("--test-each-epoch", action="store_true")
    return parser.parse_args()


def probe_epoch_seconds(processed: Path, info: Any, cfg: Any) -> float:
    """Seconds one epoch (train split plus the val pass) takes for cfg's model, from PROBE_BATCHES."""
    import keras

    from tasks import train

    n_train, n_val = info.examples("train"), info.examples("val")
    steps = math.ceil(n_train / cfg.batch_size)
    data = train.make_dataset(
        train.split_files(processed, info, "train"),
        num_classes=info.num_classes,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        shuffled=train.Shuffled(cfg.seed, cfg.shuffle_buffer, cfg.augment, train.split_sizes(info, "train")),
        repeat=True,
    ).take(PROBE_WARMUP + PROBE_BATCHES)
    marks: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if batch + 1 in (PROBE_WARMUP, PROBE_WARMUP + PROBE_BATCHES):
                marks.append(time.perf_counter())

    model = train.build_and_compile(cfg, info.num_classes, steps)
    model.fit(data, epochs=1, verbose=0, callbacks=[Clock()])
    per_batch = (marks[1] - marks[0]) / PROBE_BATCHES
    # The val pass: a forward pass only, about a third of a training step per photo.
    return per_batch * steps * (1 + n_val / n_train / 3)


def main() -> None:
    args = parse_args()
    from tasks import runtime
    from tasks.params import load_params

    ws = args.workspace
    params = load_params(ws / "params.yaml")
    settings = params.tensorflow.model_copy(update=args.tensorflow)
    runtime.configure(settings)  # before TensorFlow is imported
    import keras

    from tasks import evaluate, train
    from tasks.datasetinfo import DatasetInfo

    processed = ws / "data/processed"
    info = DatasetInfo.read(processed)
    cfg = params.train.model_copy(
        update={"model": args.model, "image_size": args.size or params.train.image_size}
    )
    probe_s = None
    epochs = args.epochs or cfg.epochs
    if args.budget_s:
        probe_s = probe_epoch_seconds(processed, info, cfg)
        epochs = max(1, min(cfg.epochs, math.floor(args.budget_s / probe_s)))
    cfg = cfg.model_copy(update={"epochs": epochs, "early_stopping_patience": epochs})
    tta = params.evaluate.tta

    def test_set() -> Any:
        return train.make_dataset(
            train.split_files(processed, info, "test"),
            num_classes=info.num_classes,
            image_size=cfg.image_size,
            batch_size=params.evaluate.batch_size,
            with_meta=True,
        )

    class TestEachEpoch(keras.callbacks.Callback):
        """Test accuracy after every epoch; the seconds it takes are kept apart from training's."""

        def __init__(self) -> None:
            super().__init__()
            self.curve: list[dict] = []
            self.eval_s = 0.0
            self.started = 0.0

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            t = time.monotonic()
            pred, _ = evaluate.predict(self.model, test_set(), tta)
            self.curve.append(
                {
                    "epoch": epoch + 1,
                    "train_s": round(t - self.started - self.eval_s, 1),
                    "test_accuracy": round(float(pred.correct.mean()), 4),
                    "val_accuracy": round(float((logs or {}).get("val_accuracy", float("nan"))), 4),
                }
            )
            self.eval_s += time.monotonic() - t

    tracker = TestEachEpoch()
    result = train.train(
        processed,
        info,
        cfg,
        args.out.with_suffix(".work"),
        progress=False,
        callbacks=[tracker] if args.test_each_epoch else (),
    )
    model_path = args.out.with_suffix(".keras")
    model_path.write_bytes(result.model)
    net = keras.saving.load_model(model_path, compile=False)
    pred, _ = evaluate.predict(net, test_set(), tta)
    r, run = result.report, result.run
    args.out.write_text(
        json.dumps(
            {
                "model": args.model,
                "parameters": r["parameters"],
                "image_size": cfg.image_size,
                "epochs": epochs,
                "epochs_run": r["epochs_run"],
                "probe_epoch_s": None if probe_s is None else round(probe_s, 1),
                "tensorflow": runtime.describe(settings),
                "train_wall_time_s": round(run.wall_time_s - tracker.eval_s, 1),
                "images_per_s": run.train_images_per_s,
                "peak_rss_mb": run.peak_rss_mb,
                "model_md5": hashlib.md5(model_path.read_bytes()).hexdigest(),
                "test_accuracy": float(pred.correct.mean()),  # the kept (best val loss) model's
                "tta": tta,
                "curve": tracker.curve,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
