"""evaluate: test-split metrics, plots, an HTML report, and the gate that may promote the model."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.common import content_cache, friendly, publish, result_storage, stage_main
from tasks import runtime
from tasks.datasetinfo import DatasetInfo
from tasks.errors import PawflowError
from tasks.fileio import atomic_dir, sha256_file, write_bytes, write_json
from tasks.params import Params

CHAMPION_CARD = "champion.json"


# Keyed on the model file's and dataset_info.json's hashes: content, not paths.
@task(
    name="predict-test-split",
    cache_policy=content_cache(
        "tasks.evaluate",
        "tasks.inference",
        "tasks.train",
        "tasks.tfrecord",
        "tasks.runtime",
        exclude=("model_path", "processed"),
    ),
    persist_result=True,
)
def predict_test_split(
    model_sha256: str,
    dataset_sha256: str,
    image_size: int,
    batch_size: int,
    tta: bool,
    tf_settings,
    model_path: Path,
    processed: Path,
):
    """Class probabilities for every test photo (and the JPEGs of the ones it gets wrong).

    tf_settings (params.yaml tensorflow:, applied by the flow) is part of the cache key."""
    import keras

    from tasks import evaluate, train

    info = DatasetInfo.read(processed)
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    ds = train.make_dataset(
        train.split_files(processed, info, "test"),
        info.num_classes,
        image_size,
        batch_size,
        training=False,
        with_meta=True,
    )
    return evaluate.predict(model, ds, tta)


# Keyed like predict-test-split, plus how the photos are re-rendered and prepared.
@task(
    name="predict-robustness-slice",
    cache_policy=content_cache(
        "tasks.evaluate",
        "tasks.inference",
        "tasks.predict",
        "tasks.images",
        "tasks.tfrecord",
        "tasks.runtime",
        exclude=("model_path", "processed"),
    ),
    persist_result=True,
)
def predict_robustness_slice(
    model_sha256: str,
    dataset_sha256: str,
    card: dict,
    batch_size: int,
    tta: bool,
    render: dict,
    tf_settings,
    model_path: Path,
    processed: Path,
):
    """Class probabilities for every test photo re-rendered the way web photos arrive."""
    import keras

    from tasks import evaluate, predict

    info = DatasetInfo.read(processed)
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    return evaluate.predict_robust(
        model,
        evaluate.split_records(processed, info, "test"),
        int(card["image_size"]),
        batch_size,
        tta,
        render,
        # the rendered photo has at most max_side**2 pixels: the size limit never applies to it
        predict.settings_for(card, max_pixels=render["max_side"] ** 2),
    )


def _cached(task_fn, params: Params, refresh: bool):
    return task_fn.with_options(result_storage=result_storage(params), refresh_cache=refresh or None)


def _predictions(params: Params, model_dir: Path, dataset_sha: str, refresh: bool):
    card = json.loads((model_dir / "model.json").read_text())
    return _cached(predict_test_split, params, refresh)(
        sha256_file(model_dir / "model.keras"),
        dataset_sha,
        int(card["image_size"]),
        params.evaluate.batch_size,
        params.evaluate.tta,
        params.tensorflow,
        model_dir / "model.keras",
        params.paths.processed,
    )


def _robust_predictions(params: Params, model_dir: Path, dataset_sha: str, refresh: bool):
    return _cached(predict_robustness_slice, params, refresh)(
        sha256_file(model_dir / "model.keras"),
        dataset_sha,
        json.loads((model_dir / "model.json").read_text()),
        params.evaluate.batch_size,
        params.evaluate.tta,
        params.evaluate.robustness.model_dump(mode="python"),
        params.tensorflow,
        model_dir / "model.keras",
        params.paths.processed,
    )


@flow(name="evaluate", log_prints=True)
@friendly
def evaluate_flow(params: Params, refresh: bool = False) -> dict:
    """Metrics on the test split, plots, reports/evaluation.html, and the promotion gate."""
    runtime.configure(params.tensorflow)  # before TensorFlow is imported
    from tasks import evaluate, gate

    started = time.monotonic()
    log = get_run_logger()
    e, models, reports = params.evaluate, params.paths.models, params.paths.reports
    info_path = DatasetInfo.path(params.paths.processed)
    for needed in (info_path, models / "model.keras", models / "model.json"):
        if not needed.exists():
            raise PawflowError(f"{needed} not found.", "Run the earlier stages first (`dvc repro`).")
    info = DatasetInfo.read(params.paths.processed)
    if info.examples("test") == 0:
        raise PawflowError(
            "the test split is empty: nothing to evaluate on.", "Add photos or raise shard.split.test."
        )
    class_names = info.class_names
    dataset_sha = sha256_file(info_path)
    pred, jpegs = _predictions(params, models, dataset_sha, refresh)
    robust = _robust_predictions(params, models, dataset_sha, refresh)
    m = evaluate.compute_metrics(pred, class_names, e.calibration_bins, robust)
    champion_dir = models / "champion"
    champion_correct = None
    if (champion_dir / "model.keras").exists():
        champ_card = json.loads((champion_dir / "model.json").read_text())
        if champ_card["class_names"] != class_names:
            log.warning(
                "the champion knows other classes (%s): it cannot be compared; the gate uses "
                "min_accuracy only",
                champ_card["class_names"],
            )
        else:
            champ_pred, _ = _predictions(params, champion_dir, dataset_sha, refresh)
            champion_correct = champ_pred.correct
    decision = gate.decide(
        pred.correct, champion_correct, e.min_accuracy, e.alpha, robust.correct, e.min_robust_accuracy
    )
    decision["model_sha256"] = sha256_file(models / "model.keras")
    tables = evaluate.plot_tables(pred, class_names, e.calibration_bins)
    train_report_path = reports / "train.json"
    train_report = json.loads(train_report_path.read_text()) if train_report_path.exists() else None
    pngs = evaluate.render_plots(m, tables, class_names, (train_report or {}).get("history"))
    mistakes = evaluate.worst_mistakes(pred, jpegs, class_names, e.misclassified)
    page = evaluate.html_report(
        m, decision, pngs, mistakes, class_names, train_report, e.tta, e.robustness.model_dump(mode="json")
    )
    with atomic_dir(reports / "plots") as tmp:
        for name, df in tables.items():
            df.to_csv(tmp / f"{name}.csv", index=False, float_format="%.6g")
    write_bytes(reports / "misclassified.png", mistakes)
    write_bytes(reports / "evaluation.html", page.encode("utf-8"))
    write_json(reports / "metrics.json", m)
    write_json(reports / "gate.json", decision)
    write_json(reports / "scores.json", evaluate.scores(m, decision))
    if decision["promoted"]:
        with atomic_dir(champion_dir) as tmp:
            (tmp / "model.keras").write_bytes((models / "model.keras").read_bytes())
            # + how it was evaluated and promoted, so `pawflow predict` repeats it (tasks.predict.load)
            card = json.loads((models / "model.json").read_text())
            write_json(tmp / "model.json", {**card, "tta": e.tta})
            write_json(tmp / CHAMPION_CARD, {"metrics": m, "gate": decision})
        log.info("promoted: %s", decision["reason"])
    else:
        if not champion_dir.exists():  # the folder is a DVC output: it exists even before a first champion
            with atomic_dir(champion_dir) as tmp:
                write_json(tmp / CHAMPION_CARD, {"champion": None, "why": decision["reason"]})
        log.warning("not promoted: %s", decision["reason"])
    rows = [
        [k, round(m[k], 4) if isinstance(m[k], float) else m[k]]
        for k in (
            "accuracy",
            "f1_macro",
            "roc_auc",
            "log_loss",
            "ece",
            "examples",
            "robust_accuracy",
            "robust_examples",
        )
    ]
    rows += [
        ["tta (flip average)", e.tta],
        ["gate", decision["decision"]],
        ["gate p-value", decision.get("p_value")],
        ["seconds", f"{time.monotonic() - started:.1f}"],
    ]
    publish("evaluate", "evaluate: test split", ["", "value"], rows)
    create_markdown_artifact(
        key="evaluation-report",
        description="evaluation and gate",
        markdown=(
            f"## Test accuracy {m['accuracy']:.2%} ({m['examples']} photos)\n\n"
            f"Robustness slice (the test photos as web photos arrive): {m['robust_accuracy']:.2%}"
            f"{' (flip-averaged)' if e.tta else ''}\n\n"
            f"**Gate: {decision['decision']}** — {decision['reason']}\n\n"
            "| class | precision | recall | f1 | support |\n|---|---|---|---|---|\n"
            + "".join(
                f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |\n"
                for c, v in m["per_class"].items()
            )
        ),
    )
    create_link_artifact(
        key="evaluation-html",
        link=(reports / "evaluation.html").resolve().as_uri(),
        link_text="reports/evaluation.html",
        description="the full HTML report",
    )
    return {"metrics": m, "gate": decision}


if __name__ == "__main__":
    sys.exit(stage_main("evaluate", evaluate_flow))
