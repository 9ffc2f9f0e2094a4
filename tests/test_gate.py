"""The promotion gate's statistics on hand-made prediction vectors."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.model.gate import decide, mcnemar


def vectors(
    both: int, only_champion: int, only_challenger: int, neither: int
) -> tuple[np.ndarray, np.ndarray]:
    champ = [True] * both + [True] * only_champion + [False] * only_challenger + [False] * neither
    chall = [True] * both + [False] * only_champion + [True] * only_challenger + [False] * neither
    return np.array(champ), np.array(chall)


def test_clearly_better_challenger_is_promoted():
    champ, chall = vectors(500, 2, 40, 58)
    out = decide(chall, champ, min_accuracy=0.5, alpha=0.05)
    assert out["promoted"] and out["challenger_wins"] == 40 and out["challenger_losses"] == 2
    assert out["p_better"] < 1e-8 and out["p_value"] > 0.99


def test_clearly_worse_challenger_is_rejected():
    champ, chall = vectors(500, 40, 2, 58)
    out = decide(chall, champ, min_accuracy=0.5, alpha=0.05)
    assert not out["promoted"] and out["decision"] == "rejected"
    assert out["p_value"] < 1e-8 and "significantly worse" in out["reason"]


def test_tie_is_promoted():
    champ, chall = vectors(500, 10, 10, 80)
    out = decide(chall, champ, min_accuracy=0.5, alpha=0.05)
    assert out["promoted"] and out["p_value"] == pytest.approx(0.588, abs=1e-3)


def test_identical_predictions_have_p_one():
    champ, chall = vectors(90, 0, 0, 10)
    assert mcnemar(champ, chall)["p_worse"] == 1.0
    assert decide(chall, champ, 0.5, 0.05)["promoted"]


def test_slightly_worse_but_not_significantly_is_promoted():
    champ, chall = vectors(500, 12, 8, 80)  # lost 12, won 8: p = P(X >= 12 | n=20) = 0.25
    out = decide(chall, champ, 0.5, 0.05)
    assert out["promoted"] and out["p_value"] == pytest.approx(0.2517, abs=1e-3)


def test_exact_p_value_matches_the_binomial_tail():
    champ, chall = vectors(0, 8, 2, 0)  # P(X >= 8 | n=10, 1/2) = 56/1024
    assert mcnemar(champ, chall)["p_worse"] == pytest.approx(56 / 1024)


def test_accuracy_floor_applies_even_when_better():
    champ, chall = vectors(50, 0, 20, 30)
    out = decide(chall, champ, min_accuracy=0.8, alpha=0.05)
    assert not out["promoted"] and "min_accuracy" in out["reason"]


def test_first_model_needs_only_the_floor():
    assert decide(np.array([True] * 9 + [False]), None, 0.8, 0.05)["promoted"]
    out = decide(np.array([True] * 7 + [False] * 3), None, 0.8, 0.05)
    assert not out["promoted"] and out["p_value"] is None


def test_unpaired_vectors_are_refused():
    with pytest.raises(ValueError, match="paired"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


def test_robust_floor_rejects_a_model_that_fails_on_web_photos():
    champ, chall = vectors(500, 2, 40, 58)  # clearly better on the test split
    robust = np.array([True] * 60 + [False] * 40)
    out = decide(chall, champ, 0.5, 0.05, robust, min_robust_accuracy=0.7)
    assert not out["promoted"] and "evaluate.min_robust_accuracy 0.7" in out["reason"]
    assert out["challenger_robust_accuracy"] == 0.6
    first = decide(np.ones(10, bool), None, 0.5, 0.05, robust, min_robust_accuracy=0.7)
    assert not first["promoted"] and "robustness-slice accuracy 0.6000" in first["reason"]
    assert decide(chall, champ, 0.5, 0.05, robust, min_robust_accuracy=0.6)["promoted"]


def test_default_robust_floor_changes_no_decision():
    champ, chall = vectors(500, 10, 10, 80)
    robust = np.zeros(100, bool)  # even nothing right on the slice
    with_slice = decide(chall, champ, 0.5, 0.05, robust)
    without = decide(chall, champ, 0.5, 0.05)
    assert with_slice["promoted"] and with_slice["reason"] == without["reason"]
    assert with_slice["min_robust_accuracy"] == 0.0 and "min_robust_accuracy" not in without
