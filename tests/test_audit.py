"""tasks/audit.py: which photos are new, and the audit's decision on given scores (no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shipped
from scipy.stats import binom

from tasks import audit
from tasks.core.fileio import write_parquet
from tasks.reports.reports import AUDIT

CFG = shipped("audit")  # confidence 0.9, tolerance 0.05, alpha 0.01, min_photos 20
CHAMP = audit.Champion(Path("champion"), "ab" * 32, test_accuracy=0.85, test_photos=600)


def scored(labels: list[str], predicted: list[str], confidence: float | list[float] = 0.95) -> pd.DataFrame:
    n = len(labels)
    conf = confidence if isinstance(confidence, list) else [confidence] * n
    return pd.DataFrame(
        {
            "path": [f"{lbl}/{i}.jpg" for i, lbl in enumerate(labels)],
            "label": labels,
            "sha256": [f"{i:064x}" for i in range(n)],
            "predicted": predicted,
            "confidence": conf,
        }
    )


def batch(n: int, wrong: int, seed: int = 0) -> pd.DataFrame:
    """n photos of which the champion labels `wrong` otherwise (at random places)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(["Cat", "Dog"], n).tolist()
    flip = set(rng.choice(n, wrong, replace=False).tolist())
    other = {"Cat": "Dog", "Dog": "Cat"}
    return scored(labels, [other[lbl] if i in flip else lbl for i, lbl in enumerate(labels)])


def test_a_batch_labelled_as_well_as_the_test_split_is_trained_on():
    rep = audit.decide(batch(200, 30), CHAMP, CFG, "b1", 200)  # 15 %: the champion's own test error
    assert not rep["tripped"] and rep["quarantined"] == 0
    assert rep["disagreements"] == 30 and rep["disagreement_rate"] == pytest.approx(0.15)
    assert rep["normal_rate"] == pytest.approx(0.20) and rep["p_value"] > 0.9
    assert rep["reason"].startswith("the champion disagrees with 30 of 200 new photos' labels (15.0%; normal")
    assert rep["reason"].endswith(">= audit.alpha 0.01: trained on")
    AUDIT.check(rep)  # the contract the alerts read


def test_a_batch_with_30_percent_of_labels_swapped_is_quarantined():
    # 30 % swapped on a champion right 85 % of the time: 0.3 * 0.85 + 0.7 * 0.15 = 36 % disagreements.
    rep = audit.decide(batch(200, 72), CHAMP, CFG, "b2", 200)
    assert rep["tripped"] and rep["quarantined"] == 200 and rep["p_value"] < 1e-6
    assert rep["p_value"] == pytest.approx(binom.sf(71, 200, 0.20))  # P(X >= 72), X ~ B(200, normal)
    assert "batch b2 quarantined, not trained on" in rep["reason"]


def test_the_exact_threshold_is_alpha():
    n, normal = 200, 0.20
    k = next(k for k in range(n + 1) if binom.sf(k - 1, n, normal) < CFG.alpha)  # first k that trips
    assert audit.decide(batch(n, k), CHAMP, CFG, "b", n)["tripped"]
    assert not audit.decide(batch(n, k - 1), CHAMP, CFG, "b", n)["tripped"]


def test_fewer_than_min_photos_are_listed_never_quarantined():
    small = batch(CFG.min_photos - 1, CFG.min_photos - 1)  # every label contradicted
    rep = audit.decide(small, CHAMP, CFG, "b", len(small))
    assert not rep["tripped"] and rep["p_value"] < 1e-9 and "fewer than audit.min_photos 20" in rep["reason"]
    assert rep["contradicted"] == len(small) == len(rep["contradicted_photos"])


def test_only_confident_contradictions_are_listed_sorted_by_path():
    s = scored(["Dog", "Cat", "Cat", "Dog"], ["Cat", "Dog", "Cat", "Cat"], [0.99, 0.6, 0.99, 0.9])
    rep = audit.decide(s, CHAMP, CFG, "b", 4)
    assert rep["disagreements"] == 3 and rep["contradicted"] == 2
    assert [c["path"] for c in rep["contradicted_photos"]] == ["Dog/0.jpg", "Dog/3.jpg"]
    assert rep["contradicted_photos"][0] == {
        "path": "Dog/0.jpg",
        "label": "Dog",
        "predicted": "Cat",
        "confidence": 0.99,
    }


def test_a_champion_tested_on_few_photos_vouches_for_little():
    # 6 test photos, all right: its test error may still be ~54 % (one-sided 99 % Clopper-Pearson bound).
    assert audit.normal_rate(0.0, 6, 0.05, 0.01) == pytest.approx(1 - 0.01 ** (1 / 6))
    assert audit.normal_rate(0.15, 600, 0.05, 0.01) == pytest.approx(0.20)  # the tolerance dominates
    assert audit.normal_rate(1.0, 10, 0.05, 0.01) == 1.0
    few = audit.Champion(Path("c"), "x", test_accuracy=1.0, test_photos=6)
    assert not audit.decide(batch(30, 15), few, CFG, "b", 30)["tripped"]  # a coin: not proof enough
    assert audit.decide(batch(30, 30), few, CFG, "b", 30)["tripped"]  # every label contradicted: it is


def test_false_alarms_on_normal_batches_stay_below_alpha():
    """Batches whose photos disagree with the champion at the very rate taken as normal (the worst normal
    night): the exact test trips on at most alpha of them."""
    rng = np.random.default_rng(7)
    n, runs = 100, 500  # seeded: the exact rate of tripping here is 0.6 %
    normal = audit.normal_rate(1 - CHAMP.test_accuracy, CHAMP.test_photos, CFG.tolerance, CFG.alpha)
    labels = ["Cat"] * n
    tripped = 0
    for k in rng.binomial(n, normal, size=runs):
        s = scored(labels, ["Dog"] * int(k) + ["Cat"] * (n - int(k)))
        tripped += audit.decide(s, CHAMP, CFG, "b", n)["tripped"]
    assert tripped / runs <= CFG.alpha


def test_nothing_scored_is_said():
    rep = audit.decide(scored([], []), CHAMP, CFG, "b", 5)
    assert not rep["tripped"] and rep["scored"] == 0 and "none of the 5 new photos" in rep["reason"]


def test_new_photos_are_kept_ones_never_split_audited_or_excluded(tmp_path: Path):
    clean_rows = pd.DataFrame(
        {
            "path": [
                "Cat/old.jpg",
                "Cat/held.jpg",
                "Cat/excl.jpg",
                "Cat/bad.jpg",
                "Dog/new.jpg",
                "Cat/new.jpg",
            ],
            "label": ["Cat", "Cat", "Cat", "Cat", "Dog", "Cat"],
            "sha256": ["1" * 64, "2" * 64, "3" * 64, "4" * 64, "5" * 64, "6" * 64],
            "status": ["kept", "kept", "kept", "rejected", "kept", "kept"],
        }
    )
    write_parquet(tmp_path / "split.parquet", pd.DataFrame({"sha256": ["1" * 64], "split": ["train"]}))
    seen = audit.ledger_photos(tmp_path) | {"2" * 64}
    new = audit.new_photos(clean_rows, seen, {"Cat/excl.jpg"})
    assert new.to_dict("list") == {
        "path": ["Cat/new.jpg", "Dog/new.jpg"],
        "label": ["Cat", "Dog"],
        "sha256": ["6" * 64, "5" * 64],
    }
    assert audit.ledger_photos(tmp_path / "none") == set()


def test_the_champion_and_why_there_is_none(tmp_path: Path):
    folder = tmp_path / "champion"
    assert audit.champion(folder) == (None, "no champion yet")
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"model")
    (folder / "champion.json").write_text(json.dumps({"champion": None, "why": "first run"}))
    champ, why = audit.champion(folder)
    assert champ is None and "does not record the champion's test accuracy" in why
    (folder / "champion.json").write_text(json.dumps({"metrics": {"accuracy": 0.9, "examples": 60}}))
    champ, _ = audit.champion(folder)
    assert (champ.test_accuracy, champ.test_photos) == (0.9, 60) and len(champ.sha256) == 64


def test_the_initial_report_says_dvc_repro_never_audits():
    rep = audit.initial()
    AUDIT.check(rep)
    assert not rep["tripped"] and "`dvc repro` alone never audits" in rep["reason"]
