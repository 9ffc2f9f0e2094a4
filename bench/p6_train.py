"""One training run in its own process (P6 time-to-accuracy, P7 runtime settings):

python -m bench.p6_train WORKSPACE MODEL OUT.json [--epochs N] [--size PX] [--tensorflow JSON]
                         [--budget-s S] [--test-each-epoch] [--marks-s S [S ...]] [--apart PREFIX]

--tensorflow overrides params.yaml `tensorflow:` keys for this run (P7 compares settings).
--budget-s sizes the schedule to a time budget: the epochs that fit in it at the speed a short probe
measures (never more than params.yaml's train.epochs), so each model's learning rate anneals to its
end inside the budget. --test-each-epoch measures test accuracy after every epoch (the way evaluate
does, flip average included); that time is left out of the training minutes. --marks-s measures it
when the training clock passes each mark (mid-epoch: the weights of that moment), and stops training
at the last one (the full-collection case, where an epoch is long). --apart PREFIX also reports the
accuracy on the test photos whose file name does not start with PREFIX (the sample's, in a collection
grown with prefixed photos).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

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
    parser.add_argument("--marks-s", type=float, nargs="+", default=[], help="test at these training seconds")
    parser.add_argument("--apart", help="also the accuracy on test photos not named with this prefix")
    return parser.parse_args()


def probe_epoch_seconds(processed: Path, info: Any, cfg: Any) -> float:
    """Seconds one epoch (train split plus the val pass) takes for cfg's model: PROBE_BATCHES train
    batches timed, then PROBE_BATCHES val batches, each after PROBE_WARMUP. The val pass used to be
    guessed as a third of a train step per photo. What an epoch spends outside batches (its callbacks,
    starting the val iterator) is still not counted: on the full collection the old probe foresaw
    94-99 s epochs that took ~110 s, and how much of that gap the val timing closes is not measured."""
    import keras

    from tasks import train

    n_train, n_val = info.examples("train"), info.examples("val")
    steps, val_steps = math.ceil(n_train / cfg.batch_size), math.ceil(n_val / cfg.batch_size)
    data = train.make_dataset(
        train.split_files(processed, info, "train"),
        num_classes=info.num_classes,
        image_size=cfg.image_size,
        batch_size=cfg.batch_size,
        shuffled=train.Shuffled(cfg.seed, cfg.shuffle_buffer, cfg.augment, train.split_sizes(info, "train")),
        repeat=True,
    ).take(PROBE_WARMUP + PROBE_BATCHES)
    marks: dict[str, list[float]] = {"train": [], "val": []}
    timed = (PROBE_WARMUP, PROBE_WARMUP + PROBE_BATCHES)

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if batch + 1 in timed:
                marks["train"].append(time.perf_counter())

        def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if batch + 1 in timed:
                marks["val"].append(time.perf_counter())

    model = train.build_and_compile(cfg, info.num_classes, steps)
    model.fit(data, epochs=1, verbose=0, callbacks=[Clock()])
    if val_steps:
        val = train.make_dataset(
            train.split_files(processed, info, "val"),
            num_classes=info.num_classes,
            image_size=cfg.image_size,
            batch_size=cfg.batch_size,
            repeat=True,
        ).take(PROBE_WARMUP + PROBE_BATCHES)
        model.evaluate(val, verbose=0, callbacks=[Clock()])
    per_batch = {k: (m[1] - m[0]) / PROBE_BATCHES for k, m in marks.items() if m}
    return per_batch["train"] * steps + per_batch.get("val", 0.0) * val_steps


def main() -> None:
    args = parse_args()
    from tasks.core.params import load_params
    from tasks.model import runtime

    ws = args.workspace
    params = load_params(ws / "params.yaml")
    settings = params.tensorflow.model_copy(update=args.tensorflow)
    runtime.configure(settings)  # before TensorFlow is imported
    import keras

    from tasks import evaluate, train
    from tasks.photos.datasetinfo import DatasetInfo

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

    def test_accuracy(model: Any) -> dict:
        pred, _ = evaluate.predict(model, test_set(), tta)
        out = {"test_accuracy": round(float(pred.correct.mean()), 4)}
        if args.apart:
            kept = np.array([not p.rsplit("/", 1)[-1].startswith(args.apart) for p in pred.paths])
            out["test_accuracy_apart"] = round(float(pred.correct[kept].mean()), 4)
            out["test_photos_apart"] = int(kept.sum())
        return out

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
            self.curve.append(
                {
                    "epoch": epoch + 1,
                    "train_s": round(t - self.started - self.eval_s, 1),
                    **test_accuracy(self.model),
                    "val_accuracy": round(float((logs or {}).get("val_accuracy", float("nan"))), 4),
                }
            )
            self.eval_s += time.monotonic() - t

    class TestAtMarks(keras.callbacks.Callback):
        """Test accuracy when the training clock (test time left out) passes each mark; training stops
        at the last. A run that ends before a mark is measured at its end (the kept weights)."""

        def __init__(self, marks: list[float]) -> None:
            super().__init__()
            self.todo = sorted(marks)
            self.readings: list[dict] = []
            self.eval_s = 0.0
            self.started = 0.0
            self.epoch = 0
            self.steps = math.ceil(info.examples("train") / cfg.batch_size)

        def clock(self) -> float:
            return time.monotonic() - self.started - self.eval_s

        def read(self, mark: float, batch: int) -> None:
            t = time.monotonic()
            reading = {"mark_s": mark, "train_s": round(self.clock(), 1)}
            reading["epochs_done"] = round(self.epoch + batch / self.steps, 2)
            self.readings.append({**reading, **test_accuracy(self.model)})
            print(json.dumps(self.readings[-1]), flush=True)
            self.eval_s += time.monotonic() - t

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.started = time.monotonic()

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.todo and self.clock() >= self.todo[0]:
                self.read(self.todo.pop(0), batch + 1)
                if not self.todo:
                    self.model.stop_training = True

        def on_train_end(self, logs: dict | None = None) -> None:
            while self.todo:  # the schedule ended first: its kept model, for every mark left
                self.read(self.todo.pop(0), self.steps)

    tracker = TestEachEpoch()
    marks = TestAtMarks(args.marks_s)
    result = train.train(
        processed,
        info,
        cfg,
        args.out.with_suffix(".work"),
        progress=False,
        callbacks=[*([tracker] if args.test_each_epoch else ()), *([marks] if args.marks_s else ())],
    )
    model_path = args.out.with_suffix(".keras")
    model_path.write_bytes(result.model)
    final = {} if args.marks_s else test_accuracy(keras.saving.load_model(model_path, compile=False))
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
                "train_wall_time_s": round(run.wall_time_s - tracker.eval_s - marks.eval_s, 1),
                "images_per_s": run.train_images_per_s,
                "peak_rss_mb": run.peak_rss_mb,
                "model_md5": hashlib.md5(model_path.read_bytes()).hexdigest(),
                "test_accuracy": final.get("test_accuracy"),  # the kept (best val loss) model's
                "test_accuracy_apart": final.get("test_accuracy_apart"),
                "marks": marks.readings,
                "tta": tta,
                "curve": tracker.curve,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
