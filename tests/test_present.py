"""tasks/reports/present.py: numbers and the gate's decision as a person reads them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tasks.model.gate import decide
from tasks.reports import present


def test_numbers():
    assert present.percent(0.85) == "85.0 %" and present.percent(0.8433, 0) == "84 %"
    assert present.percent(1.0) == "100.0 %" and present.share(9, 4002) == "0.22 %"
    assert present.decimal(0.9229888888888889) == "0.923" and present.decimal(0.0) == "0.000"
    assert present.count(1234567) == "1,234,567" and present.count(0) == "0"
    assert present.p_value(0.0312) == "p = 0.031" and present.p_value(1.0) == "p = 1.000"
    assert present.p_value(0.00001) == "p < 0.001"
    assert present.seconds(12.34) == "12.3 s" and present.seconds(754) == "12 min 34 s"
    assert present.tally({"not_an_image": 5, "truncated": 0, "corrupt": 2}) == "not_an_image 5, corrupt 2"
    assert present.tally({}) == "none" and present.short_sha("ab" * 32) == "ab" * 6


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_a_missing_value_is_na_everywhere(missing):
    for fmt in (present.percent, present.decimal, present.count, present.seconds):
        assert fmt(missing) == "n/a"
    assert present.p_value(missing) == "p = n/a" and present.share(1, 0) == "n/a"


def test_metric_rows_follow_metrics_json_and_skip_what_it_lacks():
    m = {"accuracy": 0.85, "roc_auc": None, "examples": 1200, "ece": 0.0241}
    assert present.metric_rows(m) == [
        ("accuracy", "85.0 %", "test photos classified right"),
        ("ROC AUC", "n/a", present.METRICS["roc_auc"][2]),
        ("calibration error (ECE)", "0.024", present.METRICS["ece"][2]),
        ("test photos", "1,200", "photos in the test split"),
    ]


def pair(both: int, only_champion: int, only_challenger: int, neither: int):
    champ = [True] * both + [True] * only_champion + [False] * only_challenger + [False] * neither
    chall = [True] * both + [False] * only_champion + [True] * only_challenger + [False] * neither
    return np.array(champ), np.array(chall)


def test_the_gate_sentence_says_what_the_gate_decided_in_every_case():
    """Every combination of floor, robustness floor and champion: the sentence's verdict is decide()'s."""
    cases = itertools.product(
        [(80, 1, 10, 9), (80, 10, 1, 9), (80, 3, 3, 14), (40, 1, 10, 49)],  # better, worse, tie, low
        [None, "champion"],
        [0.0, 0.9],  # the robustness floor: off, or above the challenger's robust accuracy
    )
    for counts, champion, robust_floor in cases:
        champ, chall = pair(*counts)
        robust = chall[: len(chall) // 2]
        g = decide(chall, champ if champion else None, 0.8, 0.05, robust, robust_floor)
        sentence = present.gate_sentence(g)
        assert sentence.startswith("Promoted: " if g["promoted"] else "Not promoted: "), (counts, sentence)
        checks = present.gate_checks(g)
        assert len(checks) == 3  # test accuracy, robustness slice, champion
        failed = [c for c, *_, result in checks if result == "failed"]
        assert bool(failed) != g["promoted"], (counts, champion, robust_floor, checks)


def test_gate_sentences_name_the_numbers_and_the_params():
    champ, chall = pair(80, 10, 1, 9)  # the challenger lost 10 of 11 disagreements
    worse = decide(chall, champ, 0.8, 0.05)
    assert present.gate_sentence(worse) == (
        "Not promoted: significantly worse than the champion (McNemar p = 0.006, below evaluate.alpha = "
        "0.05): on the 11 test photos where the two disagree, it was right on 1 and the champion on 10. "
        "The champion stays."
    )
    low = decide(np.array([True] * 7 + [False] * 3), None, 0.8, 0.05)
    assert present.gate_sentence(low) == (
        "Not promoted: its test accuracy 70.0 % is below the floor of 80.0 % (evaluate.min_accuracy)."
    )
    same = decide(np.array([True] * 9 + [False]), np.array([True] * 9 + [False]), 0.8, 0.05)
    assert present.gate_sentence(same) == (
        "Promoted: not significantly worse than the champion (McNemar p = 1.000, not below evaluate.alpha "
        "= 0.05): the two models agree on every test photo."
    )
    row = present.gate_checks(worse)[-1]
    assert row[1] == "not significantly worse: McNemar p ≥ 0.05 (evaluate.alpha)"
    assert row[2] == "p = 0.006; of 11 disagreements it won 1, lost 10; champion 90.0 %"
