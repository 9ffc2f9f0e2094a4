"""The robustness slice's rendering (sizes, JPEG quality, no upscaling, determinism), its predictions
(the same as `pawflow predict` on the rendered photo), its place in metrics and the HTML report;
reports/evaluation.html from tasks/evaluate.py's functions on small made-up predictions (no training),
rendered in headless Chromium."""

from __future__ import annotations

import io
import json
from pathlib import Path

import browser
import imagegen
import numpy as np
import pytest
from PIL import Image

from tasks import evaluate, gate, images, predict
from tasks.evaluate import Predictions, render_web

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

    from tasks.model import make_model

    keras.utils.set_random_seed(7)
    return make_model((32, 32, 3), 2, width=4, blocks=(1,), dropout=0.0)


CARD = {"class_names": ["Cat", "Dog"], "image_size": 32, "max_side": 224, "jpeg_quality": 90}


def test_robust_predictions_are_what_predict_says_of_the_rendered_photo(tiny_model, tmp_path: Path):
    """predict_robust == `pawflow predict` (tasks.predict) run on the rendered files themselves."""
    settings = predict.settings_for(CARD, max_pixels=10**8)
    records = []
    for i in range(5):
        _, thumb = images.check_bytes(imagegen.jpeg(10 + i, (300, 220)), settings)
        records.append((f"{CARD['class_names'][i % 2]}/{i}.jpg", i % 2, thumb))
    for tta in (False, True):
        robust = evaluate.predict_robust(tiny_model, records, 32, 2, tta, WEB, settings)
        assert robust.paths == [r[0] for r in records] and list(robust.labels) == [r[1] for r in records]
        files = []
        for path, _, jpeg in records:
            f = tmp_path / path.replace("/", "_")
            f.write_bytes(render_web(jpeg, path, **WEB))
            files.append(f)
        p = predict.Predictor(tiny_model, CARD["class_names"], 32, settings, tta)
        rows = list(predict.predict(p, iter(files)))
        assert [r.label for r in rows] == [CARD["class_names"][k] for k in robust.predicted]
        np.testing.assert_allclose([r.confidence for r in rows], robust.confidence, atol=1e-5)


def test_robust_metrics_in_metrics_and_report():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    test = Predictions(probs, np.array([0, 1, 1, 1]), ["a", "b", "c", "d"])
    robust = Predictions(probs[[0, 2, 2, 2]], np.array([0, 1, 1, 1]), ["a", "b", "c", "d"])
    m = evaluate.compute_metrics(test, ["Cat", "Dog"], 5, robust)
    assert m["accuracy"] == 0.75 and m["robust_accuracy"] == 0.25 and m["robust_examples"] == 4
    json.dumps(m)  # metrics.json-ready
    assert "robust_accuracy" not in evaluate.compute_metrics(test, ["Cat", "Dog"], 5)
    page = evaluate.html_report(m, {"promoted": True}, {}, b"png", ["Cat", "Dog"], None, True, WEB)
    assert "Robustness slice" in page and "25.00%" in page and "quality 50-60" in page
    assert "mirror image" in page
    train = {"model": "pawnet", "parameters": 1, "epochs_run": 1, "best_epoch": 1, "wall_time_s": 812.5}
    page = evaluate.html_report(m, {"promoted": False}, {}, b"png", ["Cat", "Dog"], train, False, WEB)
    assert "812.5" not in page and "wall_time_s" not in page  # no timings in a tracked output
    assert "evaluate.tta is off" in page


CLASSES = ["Cat", "Dog"]


def page(tmp_path: Path) -> Path:
    """The report as the evaluate flow writes it, for 40 test photos of which about a quarter are wrong."""
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
    mistakes = evaluate.worst_mistakes(pred, jpegs, CLASSES, count=8)
    out = tmp_path / "evaluation.html"
    out.write_text(evaluate.html_report(m, decision, pngs, mistakes, CLASSES, {"model": "pawnet"}))
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
    seen = browser.image_status(page(tmp_path))
    # training curves, confusion, ROC, precision-recall, calibration, the mistakes grid
    assert [alt for alt, _ in seen] == [
        "training",
        "confusion",
        "roc",
        "precision_recall",
        "calibration",
        "misclassified",
    ]
    assert [alt for alt, ok in seen if not ok] == []
