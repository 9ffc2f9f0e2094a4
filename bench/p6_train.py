"""One training run in its own process (P6, P7):
python -m bench.p6_train WORKSPACE MODEL EPOCHS SIZE OUT.json [TENSORFLOW_JSON]

TENSORFLOW_JSON overrides params.yaml `tensorflow:` keys for this run (P7 compares settings)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def main() -> None:
    from tasks import runtime
    from tasks.params import load_params

    ws, model, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[5])
    epochs, size = int(sys.argv[3]), int(sys.argv[4])
    params = load_params(ws / "params.yaml")
    settings = params.tensorflow.model_copy(update=json.loads(sys.argv[6]) if len(sys.argv) > 6 else {})
    runtime.configure(settings)  # before TensorFlow is imported
    import keras

    from tasks import evaluate, train
    from tasks.datasetinfo import DatasetInfo

    cfg = params.train.model_copy(
        update={"model": model, "epochs": epochs, "image_size": size, "early_stopping_patience": epochs}
    )
    info = DatasetInfo.read(ws / "data/processed")
    result = train.train(ws / "data/processed", info, cfg, out.with_suffix(".work"), progress=False)
    model_path = out.with_suffix(".keras")
    model_path.write_bytes(result.model)
    net = keras.saving.load_model(model_path, compile=False)
    test = train.make_dataset(
        train.split_files(ws / "data/processed", info, "test"),
        num_classes=info.num_classes,
        image_size=cfg.image_size,
        batch_size=64,
        with_meta=True,
    )
    pred, _ = evaluate.predict(net, test)
    r, run = result.report, result.run
    out.write_text(
        json.dumps(
            {
                "model": model,
                "parameters": r["parameters"],
                "epochs_run": r["epochs_run"],
                "tensorflow": runtime.describe(settings),
                "train_wall_time_s": run.wall_time_s,
                "images_per_s": run.train_images_per_s,
                "peak_rss_mb": run.peak_rss_mb,
                "model_md5": hashlib.md5(model_path.read_bytes()).hexdigest(),
                "test_accuracy": float(pred.correct.mean()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
