"""The promotion gate: is the new model (challenger) significantly worse than the champion?

McNemar's exact test on the photos where exactly one of the two models is right: under "equally
good" each such photo is a fair coin. The one-sided p-value is the probability of the challenger
losing at least as many of them as it did. Promote unless that is below alpha, and only when the
challenger also meets the absolute accuracy floors (test split, and the robustness slice: the test
photos re-rendered the way web photos arrive).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from scipy.stats import binomtest

from tasks.core.status import Decision
from tasks.reports.reports import GateDecision


def mcnemar(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> dict:
    """Disagreement counts and exact p-values for paired right/wrong vectors of the same photos."""
    champ = np.asarray(champion_correct, dtype=bool)
    chall = np.asarray(challenger_correct, dtype=bool)
    if champ.shape != chall.shape:
        raise ValueError(f"paired vectors differ in length: {champ.shape} vs {chall.shape}")
    lost = int(np.sum(champ & ~chall))  # champion right, challenger wrong
    won = int(np.sum(~champ & chall))  # challenger right, champion wrong
    n = lost + won
    return {
        "photos": int(champ.size),
        "challenger_wins": won,
        "challenger_losses": lost,
        "p_worse": float(binomtest(lost, n, 0.5, alternative="greater").pvalue) if n else 1.0,
        "p_better": float(binomtest(won, n, 0.5, alternative="greater").pvalue) if n else 1.0,
        "p_two_sided": float(binomtest(lost, n, 0.5).pvalue) if n else 1.0,
    }


def _accuracy(correct: np.ndarray) -> float:
    return float(np.mean(correct)) if len(correct) else 0.0


def decide(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray | None,
    min_accuracy: float,
    alpha: float,
    robust_correct: np.ndarray | None = None,
    min_robust_accuracy: float = 0.0,
) -> GateDecision:
    """The gate's decision and the numbers behind it (reports/gate.json).

    robust_correct: the challenger's right/wrong on the robustness slice; its accuracy must be at least
    min_robust_accuracy (0, the default, never rejects)."""
    acc = _accuracy(challenger_correct)
    # Built step by step, in gate.json's key order; every return below has set each required key.
    out: dict[str, Any] = {
        "challenger_accuracy": acc,
        "min_accuracy": min_accuracy,
        "alpha": alpha,
        "test": "McNemar exact (one-sided: challenger worse)",
    }
    floor = None
    if acc < min_accuracy:
        floor = f"accuracy {acc:.4f} < evaluate.min_accuracy {min_accuracy}"
    if robust_correct is not None:
        robust = _accuracy(robust_correct)
        out.update(challenger_robust_accuracy=robust, min_robust_accuracy=min_robust_accuracy)
        if floor is None and robust < min_robust_accuracy:
            floor = (
                f"robustness-slice accuracy {robust:.4f} < evaluate.min_robust_accuracy {min_robust_accuracy}"
            )
    if champion_correct is None:
        out.update(champion_accuracy=None, p_value=None)
        out.update(
            promoted=floor is None,
            decision=Decision.PROMOTED if floor is None else Decision.REJECTED,
            reason="no champion yet; "
            + (f"accuracy {acc:.4f} >= {min_accuracy}" if floor is None else floor),
        )
        return cast(GateDecision, out)
    stats = mcnemar(champion_correct, challenger_correct)
    out.update(stats, champion_accuracy=float(np.mean(champion_correct)), p_value=stats["p_worse"])
    if floor is not None:
        out.update(promoted=False, decision=Decision.REJECTED, reason=floor)
    elif stats["p_worse"] < alpha:
        out.update(
            promoted=False,
            decision=Decision.REJECTED,
            reason=f"significantly worse than the champion (p={stats['p_worse']:.4g} < alpha={alpha}; "
            f"lost {stats['challenger_losses']}, won {stats['challenger_wins']} of the disagreements)",
        )
    else:
        out.update(
            promoted=True,
            decision=Decision.PROMOTED,
            reason=f"not significantly worse than the champion (p={stats['p_worse']:.4g} >= "
            f"alpha={alpha}; won {stats['challenger_wins']}, lost {stats['challenger_losses']})",
        )
    return cast(GateDecision, out)
