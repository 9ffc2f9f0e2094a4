"""The robustness slice's rendering (sizes, JPEG quality, no upscaling, determinism), its predictions
(the same as `pawflow predict` on the rendered photo), its place in metrics and the HTML report;
reports/evaluation.html from tasks/evaluate.py's functions on small made-up predictions (no training),
rendered in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import browser
import imagegen
import numpy as np
import pytest
from conftest import run_flows, shipped, workspace_of
from PIL import Image

from tasks import evaluate, predict
from tasks.core.fileio import sha256_file
from tasks.core.params import Params
from tasks.evaluate import Predictions, render_web
from tasks.model import gate
from tasks.photos import images
from tasks.photos.datasetinfo import DatasetInfo, ImageFormat, ShardFile, SplitFiles
from tasks.reports import present, reports, summary

WEB = {"max_side": 250, "quality": (50, 60), "crop": 0.1}


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def quality_of(data: bytes) -> int:
    """The libjpeg quality whose quantization tables the JPEG carries (Pillow writes them per quality)."""
    tables = Image.open(io.BytesIO(data)).quantization
    probe = imagegen.photo(0, (16, 16))
    matches = [
        q
        for q in range(1, 101)
        if Image.open(io.BytesIO(images.encode_jpeg(probe, q))).quantization == tables
    ]
    assert len(matches) == 1, matches
    return matches[0]


def test_large_photo_gets_longer_side_max_side_and_keeps_its_aspect():
    src = imagegen.jpeg(1, (400, 300))
    for key in ("Cat/1.jpg", "Dog/2.jpg", "Cat/3.jpg"):
        w, h = size_of(render_web(src, key, **WEB))
        assert max(w, h) == 250
        assert abs(w / h - 4 / 3) < 0.02


def test_crop_cuts_at_most_the_fraction_and_varies_by_photo():
    src = imagegen.jpeg(2, (200, 160))  # below max_side: only the crop changes the size
    sizes = [size_of(render_web(src, f"Cat/{i}.jpg", 1000, (90, 90), 0.1)) for i in range(20)]
    for w, h in sizes:
        assert 180 <= w <= 200 and 144 <= h <= 160
    assert len(set(sizes)) > 5  # a different crop for different photos
    assert size_of(render_web(src, "Cat/1.jpg", 1000, (90, 90), 0.0)) == (200, 160)


def test_small_photo_is_never_upscaled():
    src = imagegen.jpeg(3, (120, 90))
    assert size_of(render_web(src, "Dog/small.jpg", 250, (55, 55), 0.0)) == (120, 90)
    w, h = size_of(render_web(src, "Dog/small.jpg", 250, (55, 55), 0.1))
    assert w <= 120 and h <= 90


def test_jpeg_quality_is_applied():
    src = imagegen.jpeg(4, (300, 200), quality=95)
    assert quality_of(src) == 95
    assert quality_of(render_web(src, "Cat/a.jpg", 250, (55, 55), 0.1)) == 55
    drawn = {quality_of(render_web(src, f"Cat/{i}.jpg", **WEB)) for i in range(40)}
    assert drawn <= set(range(50, 61)) and len(drawn) >= 5
    # and it costs what JPEG quality 50-60 costs: fewer bytes than the same crop at quality 95
    assert len(render_web(src, "Cat/a.jpg", 250, (55, 55), 0.1)) < len(
        render_web(src, "Cat/a.jpg", 250, (95, 95), 0.1)
    )


def test_rendering_is_deterministic_and_keyed_by_the_photo():
    src = imagegen.jpeg(5, (320, 240))
    first = render_web(src, "Dog/x.jpg", **WEB)
    np.random.seed(0)  # no global RNG is involved
    _ = [render_web(src, f"Dog/{i}.jpg", **WEB) for i in range(5)]  # nor the order of calls
    np.random.seed(12345)
    assert render_web(src, "Dog/x.jpg", **WEB) == first
    assert render_web(src, "Dog/y.jpg", **WEB) != first


@pytest.fixture(scope="module")
def tiny_model():
    import keras

    from tasks.model.model import make_model

    keras.utils.set_random_seed(7)
    return make_model((32, 32, 3), 2, width=4, blocks=(1,), dropout=0.0)


CARD = predict.ModelCard(
    class_names=["Cat", "Dog"],
    image_size=32,
    max_side=224,
    jpeg_quality=90,
    formats=["JPEG"],
    max_pixels=10**8,
    tensorflow=shipped("tensorflow"),
)


def test_robust_predictions_are_what_predict_says_of_the_rendered_photo(tiny_model, tmp_path: Path):
    """predict_robust == `pawflow predict` (tasks.predict) run on the rendered files themselves."""
    settings = predict.settings_for(CARD, max_pixels=10**8, formats=("JPEG",))
    records = []
    for i in range(5):
        _, thumb = images.check_bytes(imagegen.jpeg(10 + i, (300, 220)), settings)
        records.append((f"{CARD.class_names[i % 2]}/{i}.jpg", i % 2, thumb))
    for tta in (False, True):
        robust = evaluate.predict_robust(tiny_model, records, 32, 2, tta, WEB, settings)
        assert robust.paths == [r[0] for r in records] and list(robust.labels) == [r[1] for r in records]
        files = []
        for path, _, jpeg in records:
            f = tmp_path / path.replace("/", "_")
            f.write_bytes(render_web(jpeg, path, **WEB))
            files.append(f)
        p = predict.Predictor(tiny_model, CARD.class_names, 32, settings, tta)
        rows = list(predict.predict(p, iter(files)))
        assert [r.label for r in rows] == [CARD.class_names[k] for k in robust.predicted]
        np.testing.assert_allclose([r.confidence for r in rows], robust.confidence, atol=1e-5)


def test_robust_metrics_in_metrics_and_report():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    test = Predictions(probs, np.array([0, 1, 1, 1]), ["a", "b", "c", "d"])
    robust = Predictions(probs[[0, 2, 2, 2]], np.array([0, 1, 1, 1]), ["a", "b", "c", "d"])
    m = evaluate.compute_metrics(test, ["Cat", "Dog"], 5, robust)
    assert m["accuracy"] == 0.75 and m["robust_accuracy"] == 0.25 and m["robust_examples"] == 4
    json.dumps(m)  # metrics.json-ready
    assert "robust_accuracy" not in evaluate.compute_metrics(test, ["Cat", "Dog"], 5)
    decision = gate.decide(test.correct, None, 0.5, 0.05, robust.correct, 0.0)
    page = evaluate.html_report(m, decision, {}, [], ["Cat", "Dog"], None, SCORED, True, WEB)
    assert "Robustness slice" in page and "<b>25.0 %</b>" in page and "quality 50-60" in page
    assert "Test accuracy minus this: +50.0 points" in page and "mirror image" in page
    train = {"model": "pawnet", "parameters": 1, "epochs_run": 1, "best_epoch": 1, "wall_time_s": 812.5}
    page = evaluate.html_report(m, decision, {}, [], ["Cat", "Dog"], train, SCORED, False, WEB)
    assert "812.5" not in page and "wall_time_s" not in page  # no timings in a tracked output
    assert "evaluate.tta is off" in page


CLASSES = ["Cat", "Dog"]
# What a report scored: made-up hashes of the model, dataset_info.json and the one test shard.
SCORED = evaluate.Scored(
    model_sha256="ab" * 32,
    dataset_sha256="cd" * 32,
    test_shards=(("test-00000-of-00001.tfrecord", "ef" * 32, 40),),
    test_counts=(("Cat", 20), ("Dog", 20)),
)


def page(tmp_path: Path) -> Path:
    """The report as the evaluate flow writes it, for 40 test photos of which about a quarter are wrong."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    labels = np.array([0, 1] * 20)
    p_dog = np.clip(labels * 0.5 + 0.25 + rng.normal(0, 0.25, size=40), 0.01, 0.99)
    paths = [f"{CLASSES[y]}/{i}.jpg" for i, y in enumerate(labels)]
    pred = evaluate.Predictions(evaluate.as_class_probs(p_dog[:, None]), labels, paths)
    jpegs = {p: imagegen.jpeg(i, (64, 48)) for i, p in enumerate(paths) if not pred.correct[i]}
    assert 0 < len(jpegs) < 40
    m = evaluate.compute_metrics(pred, CLASSES, bins=10)
    decision = gate.decide(pred.correct, None, 0.0, 0.05)
    tables = evaluate.plot_tables(pred, CLASSES, bins=10)
    history = {"loss": [0.7, 0.5, 0.4], "val_loss": [0.7, 0.6, 0.5], "accuracy": [0.5, 0.7, 0.8]}
    pngs = evaluate.render_plots(m, tables, CLASSES, history)
    mistakes = evaluate.mistakes(pred, jpegs, CLASSES, count=8)
    out = tmp_path / "evaluation.html"
    out.write_text(evaluate.html_report(m, decision, pngs, mistakes, CLASSES, {"model": "pawnet"}, SCORED))
    return out


def test_scores_are_the_headline_numbers_and_the_gate():
    m = {"accuracy": 0.9, "f1_macro": 0.8, "roc_auc": 0.95, "ece": 0.02, "log_loss": 0.3, "per_class": {}}
    assert evaluate.scores(m, {"decision": "promoted", "reason": "long text"}) == {
        "accuracy": 0.9,
        "f1_macro": 0.8,
        "roc_auc": 0.95,
        "ece": 0.02,
        "gate": "promoted",
    }


@pytest.mark.slow
def test_every_image_of_evaluation_html_loads_in_chromium(tmp_path: Path):
    first = page(tmp_path / "first")
    seen = browser.image_status(first)
    # training curves, confusion, ROC, precision-recall, calibration, then the mistakes (at most 8) by file
    plots = ["training", "confusion", "roc", "precision_recall", "calibration"]
    assert [alt for alt, _ in seen][:5] == plots
    mistakes = [alt for alt, _ in seen][5:]
    assert 1 <= len(mistakes) <= 8 and all(alt.endswith(".jpg") for alt in mistakes)
    assert [alt for alt, ok in seen if not ok] == []
    # a DVC output: the same predictions give the same bytes, pictures included
    assert page(tmp_path / "second").read_bytes() == first.read_bytes()


# --------------------------------------------------------------------------- known answers
# Small examples worked out by hand, so a wrong formula (not just a wrong type) fails.


def test_metrics_of_four_photos_worked_out_by_hand():
    # labels  0    0    1    1 ; predicted 0 (0.9), 1 (0.4 for Cat), 1, 0 -> one error per class
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    m = evaluate.compute_metrics(Predictions(probs, np.array([0, 0, 1, 1]), list("abcd")), CLASSES, bins=10)
    assert m["accuracy"] == 0.5 and m["examples"] == 4
    # Cat: predicted twice (a, d), right once -> precision 1/2; two Cats, one found -> recall 1/2
    assert m["per_class"]["Cat"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["Dog"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["precision_macro"] == m["recall_macro"] == m["f1_macro"] == 0.5
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    # ROC AUC on P(Dog) = 0.1, 0.6 | 0.8, 0.3: of the 4 (Dog, Cat) pairs, Dog scores higher in
    # (0.8 > 0.1), (0.8 > 0.6), (0.3 > 0.1), not (0.3 < 0.6) -> 3/4
    assert m["roc_auc"] == pytest.approx(0.75)
    # log loss: mean of -ln(p of the true class) = -(ln 0.9 + ln 0.4 + ln 0.8 + ln 0.3) / 4
    expected = -(np.log(0.9) + np.log(0.4) + np.log(0.8) + np.log(0.3)) / 4
    assert m["log_loss"] == pytest.approx(expected)


def test_ece_of_a_hand_computed_example():
    # Two bins of width 0.5: confidences 0.3 and 0.4 fall in [0, 0.5], 0.8, 0.9, 0.9 and 1.0 in (0.5, 1].
    confidence = np.array([0.3, 0.4, 0.8, 0.9, 0.9, 1.0])
    correct = np.array([True, False, True, True, False, True])
    cal = evaluate.calibration_bins(confidence, correct, bins=2)
    assert cal["count"].tolist() == [2, 4]
    assert cal["confidence"].tolist() == pytest.approx([0.35, 0.9])
    assert cal["accuracy"].tolist() == pytest.approx([0.5, 0.75])
    # ECE = 2/6 * |0.5 - 0.35| + 4/6 * |0.75 - 0.9| = 0.05 + 0.1
    assert evaluate.expected_calibration_error(confidence, correct, bins=2) == pytest.approx(0.15)


def test_a_perfectly_calibrated_model_has_ece_zero_and_empty_bins_count_nothing():
    confidence = np.array([0.75, 0.75, 0.75, 0.75])
    correct = np.array([True, True, True, False])
    assert evaluate.expected_calibration_error(confidence, correct, bins=10) == pytest.approx(0.0)
    assert len(evaluate.calibration_bins(confidence, correct, bins=10)) == 1  # the 9 empty bins: no row
    assert evaluate.expected_calibration_error(np.array([]), np.array([], dtype=bool), bins=10) == 0.0


def test_a_confidence_on_a_bin_edge_falls_in_the_lower_bin():
    cal = evaluate.calibration_bins(np.array([0.5, 0.50001]), np.array([True, True]), bins=2)
    assert cal["bin"].tolist() == [0, 1]


# --------------------------------------------------------------------------- summary and promotion

METRICS = {
    "accuracy": 0.91234,
    "precision_macro": 0.9,
    "recall_macro": 0.8,
    "f1_macro": 0.85,
    "roc_auc": None,
    "log_loss": 0.3,
    "ece": 0.02,
    "examples": 40,
    "robust_accuracy": 0.875,
    "robust_examples": 40,
    "per_class": {"Cat": {"precision": 0.9, "recall": 0.8, "f1": 0.84706, "support": 20}},
}
DECISION = {"decision": "promoted", "promoted": True, "reason": "no champion yet", "p_value": None}
# A complete gate.json of a first model (no champion): what the report is built from.
DECISION_FULL = gate.decide(np.array([True] * 9 + [False]), None, 0.8, 0.05)


def test_summary_rows_are_the_headline_metrics_as_a_person_reads_them():
    rows = evaluate.summary_rows(METRICS, DECISION, tta=True)
    labels = [label for label, _ in rows]
    assert labels[: len(evaluate.HEADLINE)] == [present.METRICS[k][0] for k in evaluate.HEADLINE]
    shown = dict(rows)
    assert shown["accuracy"] == "91.2 %" and shown["ROC AUC"] == "n/a" and shown["test photos"] == "40"
    assert shown["log loss"] == "0.300" and shown["robustness-slice accuracy"] == "87.5 %"
    assert rows[-3:] == [
        ["each photo and its mirror averaged (evaluate.tta)", "yes"],
        ["gate", "promoted"],
        ["gate p-value (McNemar, vs the champion)", "p = n/a"],
    ]
    without_robust = {k: v for k, v in METRICS.items() if not k.startswith("robust")}
    assert "robustness-slice accuracy" not in dict(evaluate.summary_rows(without_robust, DECISION, tta=False))


def report_text(page: str) -> str:
    """What a reader sees of the page: the body's text, tags and embedded pictures left out."""
    body = page.split("<body>", 1)[1]
    return re.sub(r"<[^>]+>", " ", body)


GATE_NO_CHAMPION = gate.decide(np.array([True] * 9 + [False]), None, 0.8, 0.05, np.array([True] * 10), 0.0)


def test_the_report_has_no_raw_python_values_and_formats_numbers():
    m = {**METRICS, "confusion_matrix": [[18, 2], [2, 18]], "per_class": {"Cat": METRICS["per_class"]["Cat"]}}
    text = report_text(evaluate.html_report(m, GATE_NO_CHAMPION, {}, [], ["Cat"], None, SCORED, True))
    for raw in ("None", "True", "False", "nan", "{", "0.91234", "0.875"):
        assert raw not in text, raw
    for label, value, _ in present.metric_rows(m):
        assert f"{label} {value}" in " ".join(text.split()), label
    assert "ROC AUC n/a" in " ".join(text.split())  # missing, not None
    assert "91.2 %" in text and "87.5 %" in text  # accuracy, robustness slice
    assert "Cat 90.0 % 80.0 % 84.7 % 20" in " ".join(text.split())  # per class, as percentages


def test_the_report_says_what_it_scored_by_content_hash():
    text = " ".join(
        report_text(evaluate.html_report(METRICS, DECISION_FULL, {}, [], ["Cat"], None, SCORED)).split()
    )
    assert f"models/model.keras, sha256 {'ab' * 32}" in text
    assert f"data/processed/dataset_info.json, sha256 {'cd' * 32}" in text
    assert f"test-00000-of-00001.tfrecord (40 photos) {'ef' * 32}" in text
    assert "40 photos: 20 Cat, 20 Dog" in text


def test_the_gate_is_a_sentence_and_a_compact_table():
    page = evaluate.html_report(METRICS, GATE_NO_CHAMPION, {}, [], ["Cat"], None, SCORED)
    text = " ".join(report_text(page).split())
    assert text.count(present.gate_sentence(GATE_NO_CHAMPION)) == 2  # the verdict and the gate section
    gate_table = page.split("<h2>Promotion gate</h2>", 1)[1].split("</table>", 1)[0]
    assert gate_table.count("<tr>") == 1 + 3  # header + test, robustness, champion
    assert '<td class="passed">passed</td>' in gate_table and "no champion yet" in gate_table
    assert "challenger_wins" not in page and "p_two_sided" not in page  # not the raw gate.json


def test_mistakes_are_a_grid_of_thumbnails_with_readable_captions():
    probs = np.array([[0.03, 0.97], [0.4, 0.6], [0.9, 0.1], [0.2, 0.8]])
    paths = ["Cat/<i>sly</i>.jpg", "Cat/b.jpg", "Cat/c.jpg", "Dog/d.jpg"]
    pred = Predictions(probs, np.array([0, 0, 0, 1]), paths)
    jpegs = {p: imagegen.jpeg(i, (224, 168)) for i, p in enumerate(paths[:2])}
    mistakes = evaluate.mistakes(pred, jpegs, CLASSES, count=16)
    assert [(x.path, x.true, x.predicted) for x in mistakes] == [
        ("Cat/<i>sly</i>.jpg", "Cat", "Dog"),  # most confident first
        ("Cat/b.jpg", "Cat", "Dog"),
    ]
    assert mistakes[0].confidence == pytest.approx(0.97) and (mistakes[0].width, mistakes[0].height) == (
        224,
        168,
    )
    thumb = Image.open(io.BytesIO(mistakes[0].thumbnail))
    assert thumb.format == "JPEG" and max(thumb.size) == evaluate.MISTAKE_SIDE
    page = evaluate.html_report(METRICS, DECISION_FULL, {}, mistakes, CLASSES[:1], None, SCORED)
    grid = page.split("<h2>Most confident mistakes</h2>", 1)[1]
    assert 'true <b>Cat</b>, predicted <span class="said">Dog</span> (97 % sure)' in grid
    assert "Cat/&lt;i&gt;sly&lt;/i&gt;.jpg (224x168)" in grid and "<i>sly" not in page
    assert grid.count('src="data:image/jpeg;base64,') == 2
    assert "figcaption{font-size:.95em" in page  # body-size text, not 7 pt drawn into a picture
    empty = evaluate.html_report(METRICS, DECISION_FULL, {}, [], CLASSES[:1], None, SCORED)
    assert "No mistakes: the model classified every test photo right." in empty


def test_misclassified_png_draws_names_literally():
    probs = np.array([[0.1, 0.9], [0.8, 0.2]])
    pred = Predictions(probs, np.array([0, 1]), ["Cat/x$^$.jpg", "Dog/a.jpg"])  # invalid as math text
    jpegs = {p: imagegen.jpeg(i, (64, 48)) for i, p in enumerate(pred.paths)}
    png = evaluate.worst_mistakes(pred, jpegs, ["A$_$", "Dog"], count=4)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def model_folder(folder: Path, data: bytes, class_names: list[str] = CLASSES) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(data)
    (folder / "model.json").write_text(json.dumps({"class_names": class_names, "image_size": 32}))
    return folder


def test_promote_makes_the_model_the_champion_with_its_card_and_why(tmp_path: Path):
    models = model_folder(tmp_path / "models", b"new model")
    model_folder(models / "champion", b"old champion")
    evaluate.promote(models, models / "champion", METRICS, DECISION, tta=True)
    champion = models / "champion"
    assert (champion / "model.keras").read_bytes() == b"new model"
    assert json.loads((champion / "model.json").read_text()) == {
        "class_names": CLASSES,
        "image_size": 32,
        "tta": True,
    }
    assert json.loads((champion / evaluate.CHAMPION_CARD).read_text()) == {
        "metrics": METRICS,
        "gate": DECISION,
    }


def test_not_promoted_keeps_the_champion_or_says_why_there_is_none(tmp_path: Path):
    refused = {**DECISION, "promoted": False, "decision": "rejected", "reason": "below min_accuracy"}
    models = model_folder(tmp_path / "models", b"new model")
    evaluate.promote(models, models / "champion", METRICS, refused, tta=True)
    assert sorted(p.name for p in (models / "champion").iterdir()) == [evaluate.CHAMPION_CARD]
    card = json.loads((models / "champion" / evaluate.CHAMPION_CARD).read_text())
    assert card == {"champion": None, "why": "below min_accuracy"}

    other = model_folder(tmp_path / "other", b"new model")
    model_folder(other / "champion", b"old champion")
    evaluate.promote(other, other / "champion", METRICS, refused, tta=True)
    assert (other / "champion" / "model.keras").read_bytes() == b"old champion"
    assert not (other / "champion" / evaluate.CHAMPION_CARD).exists()


def test_a_champion_of_other_classes_is_not_comparable(tmp_path: Path):
    assert evaluate.comparable_champion(tmp_path / "none", CLASSES) == (False, "no champion yet")
    same = model_folder(tmp_path / "same", b"m")
    assert evaluate.comparable_champion(same, CLASSES) == (True, "")
    other = model_folder(tmp_path / "other", b"m", ["ant", "bee"])
    comparable, why = evaluate.comparable_champion(other, CLASSES)
    assert not comparable and "other classes (['ant', 'bee'])" in why


def test_plot_tables_are_written_as_csv_and_replace_the_folder(tmp_path: Path):
    import pandas as pd

    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "stale.csv").write_text("old")
    evaluate.write_plot_tables(tmp_path / "plots", {"roc": pd.DataFrame({"fpr": [0.0, 1 / 3]})})
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["roc.csv"]
    assert (tmp_path / "plots" / "roc.csv").read_text() == "fpr\n0\n0.333333\n"


# --------------------------------------------------------------------------- the evaluate flow


def test_metrics_and_report(trained: Params):
    m = json.loads((workspace_of(trained) / "reports/metrics.json").read_text())
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "log_loss", "ece"):
        assert isinstance(m[key], float), key
    assert set(m["per_class"]) == {"Cat", "Dog"}
    info = json.loads((workspace_of(trained) / "data/processed/dataset_info.json").read_text())
    assert m["examples"] == info["splits"]["test"]["examples"]
    assert sum(map(sum, m["confusion_matrix"])) == m["examples"]
    assert m["robust_examples"] == m["examples"] and 0 <= m["robust_accuracy"] <= 1
    # `dvc metrics show` reads this one: the headline numbers of metrics.json and the gate's decision
    scores = json.loads((workspace_of(trained) / "reports/scores.json").read_text())
    gate = json.loads((workspace_of(trained) / "reports/gate.json").read_text())
    headline = {k: m[k] for k in ("accuracy", "f1_macro", "roc_auc", "ece")}
    assert scores == {**headline, "gate": gate["decision"]}
    page = (workspace_of(trained) / "reports/evaluation.html").read_text()
    assert "Robustness slice" in page and "mirror image" in page  # evaluate.tta is on by default
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained, opens offline
    images = [s.split('"')[0] for s in page.split('src="data:image/png;base64,')[1:]]
    assert len(images) >= 5
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    # what it scored, by content: the model's and dataset_info.json's sha256, never a date or commit
    info_sha = sha256_file(workspace_of(trained) / "data/processed/dataset_info.json")
    assert f"<code>{gate['model_sha256']}</code>" in page and f"<code>{info_sha}</code>" in page
    assert present.gate_sentence(gate) in page and "None" not in report_text(page)


def test_the_evaluation_artifact_carries_the_figures_and_pictures(trained: Params):
    from conftest import drain_prefect_workers
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    drain_prefect_workers()
    gate = json.loads((workspace_of(trained) / "reports/gate.json").read_text())
    with get_client(sync_client=True) as c:
        found = c.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["evaluation-report", "evaluation-html"])
            ),
            sort=ArtifactSort.CREATED_DESC,
        )
    assert found and {a.key for a in found} == {"evaluation-report"}  # no file:// link artifact
    md = next(a.data for a in found if gate["model_sha256"] in a.data)
    assert md.startswith("## Evaluation: promoted") and present.gate_sentence(gate) in md
    assert md.count("](data:image/png;base64,") >= 3 and "None" not in md
    assert [a.key for a in found if "file://" in str(a.data)] == []
    assert "evaluated " in md and " UTC" in md  # the run's facts: here, not in the tracked report


def test_first_model_is_promoted_and_gate_recorded(trained: Params):
    gate = json.loads((workspace_of(trained) / "reports/gate.json").read_text())
    assert gate["promoted"] and gate["p_value"] is None and "no champion yet" in gate["reason"]
    champion = workspace_of(trained) / "models/champion"
    assert (champion / "model.keras").read_bytes() == (
        workspace_of(trained) / "models/model.keras"
    ).read_bytes()
    card = json.loads((workspace_of(trained) / "models/model.json").read_text())
    assert json.loads((champion / "model.json").read_text()) == {**card, "tta": trained.evaluate.tta}
    assert "challenger_robust_accuracy" in gate and gate["min_robust_accuracy"] == 0.0


def test_second_evaluation_compares_with_the_champion(trained: Params):
    from flows.evaluate import evaluate_flow

    (gate,) = run_flows(trained, evaluate_flow)
    assert gate["gate"]["p_value"] == 1.0  # the same model: no disagreements
    assert gate["gate"]["challenger_wins"] == gate["gate"]["challenger_losses"] == 0


@pytest.mark.slow  # over 10 s: outside the fast tier (make test-fast <= 3 min)
def test_five_classes_train_and_evaluate(tmp_path: Path, prefect_server: str):
    from conftest import FAST_TRAIN, params_for

    from flows.clean import clean_flow
    from flows.dedup import dedup_flow
    from flows.evaluate import evaluate_flow
    from flows.ingest import ingest_flow
    from flows.shard import shard_flow
    from flows.train import train_flow

    source = imagegen.make_dataset(
        tmp_path / "five", per_class=8, classes=("ant", "bee", "cow", "doe", "elk")
    )
    params = params_for(tmp_path / "work", source, train=FAST_TRAIN, evaluate={"min_accuracy": 0.0})
    *_, result = run_flows(params, ingest_flow, clean_flow, dedup_flow, shard_flow, train_flow, evaluate_flow)
    assert set(result["metrics"]["per_class"]) == {"ant", "bee", "cow", "doe", "elk"}
    assert len(result["metrics"]["confusion_matrix"]) == 5


# --------------------------------------------------------------------------- hostile names, undefined metrics

# Class and file names as a folder can hold them: math text for matplotlib, HTML and Markdown markup.
HOSTILE_CLASSES = ["A$b$", '"><img src=x onerror=alert(1)>', "x$^$y | `code` *b* [l](u)"]
HOSTILE_FILES = ["x$y$.jpg", "$\\frac{$.jpg", "<script>.jpg"]


def hostile_predictions(missing_class: bool) -> Predictions:
    """12 test photos of the hostile classes (the last class absent when missing_class), half wrong."""
    labels = np.array([0, 1] * 6 if missing_class else [0, 1, 2] * 4)
    probs = np.full((12, 3), 0.1)
    probs[np.arange(12), (labels + np.arange(12) % 2) % 3] = 0.8  # every second photo wrong
    names = [f"{HOSTILE_CLASSES[y]}/{HOSTILE_FILES[i % 3]}" for i, y in enumerate(labels)]
    return Predictions(probs, labels, names)


def markdown_html(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table").render(text)


@pytest.mark.parametrize("missing_class", [False, True])
def test_hostile_names_are_drawn_and_shown_literally_and_an_undefined_auc_is_n_a(missing_class: bool):
    """A `$` in a class or file name went to matplotlib's math-text parser (a crash, no report); a test
    split without one of the classes made the ROC AUC NaN, which JSON refuses. Both now give a report."""
    pred = hostile_predictions(missing_class)
    jpegs = {p: imagegen.jpeg(i, (64, 48)) for i, p in enumerate(pred.paths) if not pred.correct[i]}
    m = evaluate.compute_metrics(pred, HOSTILE_CLASSES, bins=10)
    assert (m["roc_auc"] is None) == missing_class
    reports.METRICS.check(m)  # valid JSON under the contract: null, not NaN
    decision = gate.decide(pred.correct, None, 0.0, 0.05)
    tables = evaluate.plot_tables(pred, HOSTILE_CLASSES, bins=10)
    pngs = evaluate.render_plots(m, tables, HOSTILE_CLASSES, None)
    assert {"confusion", "roc", "calibration"} <= set(pngs)
    picture = evaluate.worst_mistakes(pred, jpegs, HOSTILE_CLASSES, count=8)
    assert Image.open(io.BytesIO(picture)).format == "PNG"
    mistakes = evaluate.mistakes(pred, jpegs, HOSTILE_CLASSES, count=8)
    info = DatasetInfo(
        class_names=HOSTILE_CLASSES,
        num_classes=3,
        image=ImageFormat(encoding="jpeg", channels=3, max_side=64, jpeg_quality=90),
        features={},
        split_fractions={"train": 0.7, "val": 0.15, "test": 0.15},
        counts={"test": {c: int((pred.labels == k).sum()) for k, c in enumerate(HOSTILE_CLASSES)}},
        splits={
            "test": SplitFiles(
                examples=12,
                shards=[
                    ShardFile(file="test-0", examples=12, bytes=1, sha256="ef" * 32, arrival=0, contents="c")
                ],
            )
        },
    )
    scored = evaluate.scored(info, "cd" * 32, "ab" * 32)
    page = evaluate.html_report(m, decision, pngs, mistakes, HOSTILE_CLASSES, None, scored)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    roc_row = page[page.index("ROC AUC") :].split("</tr>", 1)[0]
    assert ("n/a" in roc_row) == missing_class
    run = {"code": "0123abc", "evaluated": "2026-12-05 03:00 UTC"}
    text = summary.evaluation_markdown(m, decision, False, pngs, mistakes, scored, run)
    rendered = markdown_html(text)
    assert "<img src=x" not in rendered and "<em>" not in rendered
    assert not any(
        name in code for code in re.findall(r"<code>(.*?)</code>", rendered) for name in ("x$", "img")
    )
    per_class = rendered.split("<th>class</th>", 1)[1].split("</table>", 1)[0]
    rows = per_class.split("<tr>")[1:]
    assert len(rows) == 3 and all(r.count("<td") == 5 for r in rows)  # one row per class, 5 cells
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in rendered  # the name, as text


def test_a_cut_test_shard_or_a_replaced_model_is_refused_and_never_cached(trained: Params, tmp_path: Path):
    """The issue's scenario: a test shard cut to half its records at a record boundary (a shorter file
    that reads as valid) was evaluated ("accuracy on 3 photos") and the result cached under
    dataset_info.json's hash; with the shard restored, the cache still answered 3 photos."""
    from conftest import copy_of_trained, first_records

    from flows.evaluate import evaluate_flow
    from tasks.photos.datasetinfo import DatasetInfo

    params = copy_of_trained(trained, tmp_path)
    info = DatasetInfo.read(params.paths.processed)
    (shard,) = info.split_paths(params.paths.processed, "test")
    intact = shard.read_bytes()
    shard.write_bytes(first_records(intact, info.examples("test") // 2))
    metrics = (params.paths.reports / "metrics.json").read_bytes()
    state = evaluate_flow(params=params, return_state=True)
    assert state.is_failed() and f"{shard}: " in state.message and "(cut short)" in state.message
    assert (params.paths.reports / "metrics.json").read_bytes() == metrics  # nothing written
    shard.write_bytes(intact)
    (result,) = run_flows(params, evaluate_flow)
    assert result["metrics"]["examples"] == info.examples("test")
    model = params.paths.models / "model.keras"
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
    state = evaluate_flow(params=params, return_state=True)
    assert state.is_failed() and f"{model} does not match" in state.message
