"""Numbers and facts as a person reads them: one place for every report, summary table and artifact.

Plain text only: the HTML reports escape it where they write it (jinja autoescape), and the Markdown
builders (tasks/reports/summary.py) where they write it. A missing value (None, NaN) is "n/a" everywhere,
never `None` or `nan`; ratios are percentages ("85.0 %"), counts have thousands separators ("1,234").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

NA = "n/a"
PERCENT_DIGITS = 1  # 85.0 %: a tenth of a percent is 1 photo in 1,000
DECIMALS = 3  # ROC AUC 0.923, ECE 0.024, log loss 0.359
P_FLOOR = 0.001  # p-values below this read "p < 0.001"
SHA_SHORT = 12  # hex digits of a sha256 where a short form is enough (git shows 7-12)


def missing(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def count(n: int | None) -> str:
    """1234 -> "1,234"."""
    return NA if n is None or missing(n) else f"{int(n):,}"


def percent(x: float | None, digits: int = PERCENT_DIGITS) -> str:
    """A fraction as a percentage: 0.85 -> "85.0 %"."""
    return NA if x is None or missing(x) else f"{100 * x:.{digits}f} %"


def share(part: int, whole: int) -> str:
    """part of whole as a percentage with two decimals (for rare things: 9 of 4,002 -> "0.22 %")."""
    return percent(part / whole, 2) if whole else NA


def decimal(x: float | None, digits: int = DECIMALS) -> str:
    """0.9229888 -> "0.923"."""
    return NA if x is None or missing(x) else f"{x:.{digits}f}"


def p_value(p: float | None) -> str:
    """A test's p-value: "p = 0.031", "p < 0.001", "p = n/a"."""
    if p is None or missing(p):
        return f"p = {NA}"
    return f"p < {P_FLOOR}" if p < P_FLOOR else f"p = {p:.3f}"


def seconds(s: float | None) -> str:
    """12.34 -> "12.3 s"; 754 -> "12 min 34 s"."""
    if s is None or missing(s):
        return NA
    if s < 60:
        return f"{s:.1f} s"
    minutes, rest = divmod(round(s), 60)
    return f"{minutes} min {rest:02d} s"


def short_sha(sha: str | None) -> str:
    return NA if not sha else sha[:SHA_SHORT]


def yes_no(flag: bool | None) -> str:
    return NA if flag is None else ("yes" if flag else "no")


def tally(counts: Mapping[str, int]) -> str:
    """{"not_an_image": 5, "truncated": 2} -> "not_an_image 5, truncated 2" ("none" when empty)."""
    return ", ".join(f"{k} {count(v)}" for k, v in counts.items() if v) or "none"


# --------------------------------------------------------------------------- the model's numbers

# reports/metrics.json's headline numbers: label, how it is written, what it means.
METRICS: dict[str, tuple[str, str, str]] = {
    "accuracy": ("accuracy", "percent", "test photos classified right"),
    "precision_macro": ("precision (mean of classes)", "percent", "of the photos called X, how many are X"),
    "recall_macro": ("recall (mean of classes)", "percent", "of the photos of X, how many were found"),
    "f1_macro": ("F1 (mean of classes)", "percent", "precision and recall in one number"),
    "roc_auc": ("ROC AUC", "decimal", "how well the scores rank the classes: 0.5 chance, 1 perfect"),
    "log_loss": ("log loss", "decimal", "cost of the probabilities given to the true class; lower is better"),
    "ece": ("calibration error (ECE)", "decimal", "gap between confidence and accuracy; 0 is calibrated"),
    "examples": ("test photos", "count", "photos in the test split"),
    "robust_accuracy": ("robustness-slice accuracy", "percent", "the test photos re-rendered as web photos"),
    "robust_examples": ("robustness-slice photos", "count", "photos in the robustness slice"),
}
_KINDS: dict[str, Callable[[Any], str]] = {"percent": percent, "decimal": decimal, "count": count}


def metric(key: str, value: Any) -> str:
    """A headline metric's value as METRICS writes it."""
    return _KINDS[METRICS[key][1]](value)


def metric_rows(m: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, meaning) of every headline metric that metrics.json holds, in METRICS order."""
    return [(label, metric(k, m[k]), meaning) for k, (label, _, meaning) in METRICS.items() if k in m]


# --------------------------------------------------------------------------- the gate


def gate_sentence(g: Mapping[str, Any]) -> str:
    """The promotion gate's decision as one sentence, from reports/gate.json's numbers (the order of the
    checks is tasks.model.gate.decide's: the accuracy floors, then the comparison with the champion)."""
    acc, floor = g["challenger_accuracy"], g["min_accuracy"]
    robust, robust_floor = g.get("challenger_robust_accuracy"), g.get("min_robust_accuracy", 0.0)
    champion = g.get("champion_accuracy") is not None
    stays = " The champion stays." if champion else ""
    if acc < floor:
        return (
            f"Not promoted: its test accuracy {percent(acc)} is below the floor of {percent(floor)} "
            f"(evaluate.min_accuracy).{stays}"
        )
    if robust is not None and robust < robust_floor:
        return (
            f"Not promoted: its robustness-slice accuracy {percent(robust)} is below the floor of "
            f"{percent(robust_floor)} (evaluate.min_robust_accuracy).{stays}"
        )
    if not champion:
        return (
            f"Promoted: there is no champion yet, and its test accuracy {percent(acc)} meets the floor "
            f"of {percent(floor)} (evaluate.min_accuracy)."
        )
    p, alpha = g["p_worse"], g["alpha"]
    wins, losses = g["challenger_wins"], g["challenger_losses"]
    disagreements = (
        f"on the {count(wins + losses)} test photos where the two disagree, it was right on "
        f"{count(wins)} and the champion on {count(losses)}"
        if wins + losses
        else "the two models agree on every test photo"
    )
    if p < alpha:
        return (
            f"Not promoted: significantly worse than the champion (McNemar {p_value(p)}, below "
            f"evaluate.alpha = {alpha}): {disagreements}. The champion stays."
        )
    return (
        f"Promoted: not significantly worse than the champion (McNemar {p_value(p)}, not below "
        f"evaluate.alpha = {alpha}): {disagreements}."
    )


def gate_checks(g: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """The gate's checks as rows: (check, what it needs, this model, passed / failed / not checked)."""

    def verdict(ok: bool) -> str:
        return "passed" if ok else "failed"

    acc, floor = g["challenger_accuracy"], g["min_accuracy"]
    rows = [
        (
            "test accuracy",
            f"≥ {percent(floor)} (evaluate.min_accuracy)",
            percent(acc),
            verdict(acc >= floor),
        )
    ]
    robust = g.get("challenger_robust_accuracy")
    if robust is not None:
        robust_floor = g["min_robust_accuracy"]
        needs = f"≥ {percent(robust_floor)} (evaluate.min_robust_accuracy)"
        rows.append(
            (
                "robustness-slice accuracy",
                needs + (": 0, never gates" if robust_floor == 0 else ""),
                percent(robust),
                verdict(robust >= robust_floor),
            )
        )
    needs = f"not significantly worse: McNemar p ≥ {g['alpha']} (evaluate.alpha)"
    if g.get("champion_accuracy") is None:
        rows.append(("compared with the champion", needs, "no champion yet", "not checked"))
    else:
        wins, losses = g["challenger_wins"], g["challenger_losses"]
        this = (
            f"{p_value(g['p_worse'])}; of {count(wins + losses)} disagreements it won {count(wins)}, "
            f"lost {count(losses)}; champion {percent(g['champion_accuracy'])}"
        )
        rows.append(("compared with the champion", needs, this, verdict(g["p_worse"] >= g["alpha"])))
    return rows


def collection_line(figures: dict, name: Callable[[str], str] = str) -> str:
    """What a run changed in the collection (ingest's run figures) in one line: "+5 new, 2 updated,
    removed 3, relabelled 2 (Cat -> Dog 2), renamed 1"; "no change" when there is none. name: how a class
    name is written (tasks.core.text.md in Markdown: the names are the user's folders)."""
    parts = [f"+{figures['copied']} new"] if figures.get("copied") else []
    parts += [f"{figures['updated']} updated"] if figures.get("updated") else []
    parts += [f"removed {figures['removed']}"] if figures.get("removed") else []
    if figures.get("relabelled"):
        moves = ", ".join(
            f"{name(old)} -> {name(new)} {n}"
            for old, to in figures.get("relabelled_per_class", {}).items()
            for new, n in to.items()
        )
        parts.append(f"relabelled {figures['relabelled']} ({moves})")
    parts += [f"renamed {figures['renamed']}"] if figures.get("renamed") else []
    return ", ".join(parts) or "no change"
