"""evaluate: test-split metrics, plots, an HTML report, and the gate that may promote the model."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.utilities.annotations import NotSet

from flows.common import content_cache, friendly, publish, result_storage, stage_main, stage_run_name
from tasks.core.errors import PawflowError
from tasks.core.fileio import sha256_file, write_bytes
from tasks.core.params import Params, TensorFlow
from tasks.history import versioning
from tasks.model import runtime
from tasks.photos.datasetinfo import DatasetInfo, Verified, verified
from tasks.reports import present, summary
from tasks.reports.reports import GATE, METRICS, SCORES, TRAIN, GateReport

if TYPE_CHECKING:
    from tasks.predict import ModelCard


# Keyed on the model file's, dataset_info.json's and the test shards' hashes (content, not paths; the
# shards hashed just before and checked against dataset_info.json, so no result from a damaged shard is
# ever stored), the model card, how the photos are predicted (and, for the robustness slice,
# re-rendered), and the code.
@task(
    name="predict-test-photos",
    task_run_name="predict-test-photos-{slice_name}",
    cache_policy=content_cache(
        "tasks.evaluate",
        "tasks.model.inference",
        "tasks.train",
        "tasks.predict",
        "tasks.photos.images",
        "tasks.photos.tfrecord",
        "tasks.model.runtime",
        exclude=("model_path", "processed"),
    ),
    persist_result=True,
)
def predict_test_photos(
    model_sha256: str,
    dataset_sha256: str,
    shards_sha256: dict[str, str],
    card: ModelCard,
    batch_size: int,
    tta: bool,
    robustness: dict | None,
    tf_settings: TensorFlow,
    model_path: Path,
    processed: Path,
    slice_name: str = "test",
):
    """tasks.evaluate.predict_test_photos; tf_settings (params.yaml tensorflow:, applied by the flow)
    is part of the cache key."""
    from tasks import evaluate

    info = DatasetInfo.read(processed)
    return evaluate.predict_test_photos(model_path, processed, info, card, batch_size, tta, robustness)


def _predictions(params: Params, model_dir: Path, data: Verified, refresh: bool, robust: bool = False):
    """The test photos' predictions by the model in model_dir (robust: of the robustness slice), from
    test shards verified against dataset_info.json (their hashes are part of the cache key)."""
    from tasks import predict

    model, card = predict.model_files(model_dir)  # its sha256 checked against model.json
    run = predict_test_photos.with_options(  # NotSet: the task's own setting (Prefect's default)
        result_storage=result_storage(params), refresh_cache=True if refresh else NotSet
    )
    return run(
        sha256_file(model),
        data.info_sha256,
        data.shards,
        card,
        params.evaluate.batch_size,
        params.evaluate.tta,
        params.evaluate.robustness.model_dump(mode="python") if robust else None,
        params.tensorflow,
        model_dir / "model.keras",
        params.paths.processed,
        "robust" if robust else "test",
    )


@flow(name="evaluate", flow_run_name=stage_run_name, log_prints=True)
@friendly
def evaluate_flow(params: Params, refresh: bool = False) -> dict:
    """Metrics on the test split, plots, reports/evaluation.html, and the promotion gate."""
    runtime.configure(params.tensorflow)  # before TensorFlow is imported
    from tasks import evaluate
    from tasks.model import gate

    started = time.monotonic()
    log = get_run_logger()
    e, models, reports = params.evaluate, params.paths.models, params.paths.reports
    for needed in (models / "model.keras", models / "model.json"):
        if not needed.exists():
            raise PawflowError(f"{needed} not found.", "Run the earlier stages first (`dvc repro`).")
    data = verified(params.paths.processed, ("test",))  # every test shard, before one is read
    log.info("%d test shard file(s) verified against dataset_info.json", len(data.shards))
    info = data.info
    if info.examples("test") == 0:
        raise PawflowError(
            "the test split is empty: nothing to evaluate on.", "Add photos or raise shard.split.test."
        )
    class_names = info.class_names
    pred, jpegs = _predictions(params, models, data, refresh)
    robust, _ = _predictions(params, models, data, refresh, robust=True)
    m = evaluate.compute_metrics(pred, class_names, e.calibration_bins, robust)
    champion_dir = models / "champion"
    champion_correct = None
    comparable, why_not = evaluate.comparable_champion(champion_dir, class_names)
    if comparable:
        champ_pred, _ = _predictions(params, champion_dir, data, refresh)
        champion_correct = champ_pred.correct
    elif (champion_dir / "model.keras").exists():
        log.warning("%s; the gate uses min_accuracy only", why_not)
    verdict = gate.decide(
        pred.correct, champion_correct, e.min_accuracy, e.alpha, robust.correct, e.min_robust_accuracy
    )
    decision: GateReport = {**verdict, "model_sha256": sha256_file(models / "model.keras")}
    tables = evaluate.plot_tables(pred, class_names, e.calibration_bins)
    train_report = TRAIN.read_if_written(reports)
    history = train_report.get("history") if train_report else None
    pngs = evaluate.render_plots(m, tables, class_names, history)
    mistakes = evaluate.mistakes(pred, jpegs, class_names, e.misclassified)
    scored = evaluate.scored(info, data.info_sha256, decision["model_sha256"])
    page = evaluate.html_report(
        m,
        decision,
        pngs,
        mistakes,
        class_names,
        train_report,
        scored,
        e.tta,
        e.robustness.model_dump(mode="json"),
    )
    # Every output is built, and every report checked against its contract, before the first is
    # written: a failure leaves the last run's outputs as they were, never half of a new set.
    outputs = {
        reports / "misclassified.png": evaluate.worst_mistakes(pred, jpegs, class_names, e.misclassified),
        reports / "evaluation.html": page.encode("utf-8"),
        METRICS.path(reports): METRICS.check(m).encode("utf-8"),
        GATE.path(reports): GATE.check(decision).encode("utf-8"),
        SCORES.path(reports): SCORES.check(evaluate.scores(m, decision)).encode("utf-8"),
    }
    evaluate.write_plot_tables(reports / "plots", tables)
    for path, content in outputs.items():
        write_bytes(path, content)
    evaluate.promote(models, champion_dir, m, decision, e.tta)
    (log.info if decision["promoted"] else log.warning)("%s", present.gate_sentence(decision))
    rows = [*evaluate.summary_rows(m, decision, e.tta), ["seconds", f"{time.monotonic() - started:.1f}"]]
    publish("evaluate", "evaluate: test split", ["", "value"], rows)
    # What the tracked report leaves out (it must not differ between two runs of the same inputs).
    run = {
        "code": versioning.git_commit(Path.cwd()) or "n/a (not a git checkout)",
        "evaluated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    create_markdown_artifact(
        key="evaluation-report",
        description="the gate, key figures, plots and worst mistakes (reports/evaluation.html in full)",
        markdown=summary.evaluation_markdown(m, decision, e.tta, pngs, mistakes, scored, run),
    )
    return {"metrics": m, "gate": decision}


if __name__ == "__main__":
    sys.exit(stage_main("evaluate", evaluate_flow))
