"""reports/evaluation.html from tasks/evaluate.py's functions on small made-up predictions (no training)."""

from __future__ import annotations

from pathlib import Path

import browser
import imagegen
import numpy as np
import pytest

from tasks import evaluate, gate

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
