"""Audit: the champion checks a run's new photos before they are split and trained on.

New photos are those clean kept that the split ledger has never seen (nor a quarantine batch, nor the
exclude list). The champion (models/champion) labels each one it can (its classes): a photo it labels
otherwise is a disagreement, and with at least audit.confidence a confident contradiction, listed in
reports/data.html with its thumbnail.

Is the run's disagreement rate far above normal for this champion? Normal is its test error (1 - the
test accuracy it was promoted with) plus audit.tolerance (new photos may differ a little from the test
split), and never less than the one-sided (1 - alpha) Clopper-Pearson upper bound of that test error (a
test split of a few photos vouches for little). A one-sided exact binomial test gives the probability
of at least this many disagreements at the normal rate; below audit.alpha, with at least
audit.min_photos scored, the audit trips: the batch is quarantined (tasks/photos/quarantine.py), held out of
the split until a person releases it. Under "the batch is as well labelled as the test split" the test
trips with probability at most alpha, so alpha is the false-alarm rate of a normal night (bench/audit.py
measures it on real photos, with the catch rate of a batch with 30 % of its labels swapped).

The decision (`decide`) is a pure function of the scores; scoring (`score`) needs TensorFlow and runs
only in the Prefect pipeline's audit stage: `dvc repro` alone never audits (flows/audit.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from scipy.stats import beta, binomtest

from tasks.core.fileio import read_parquet, sha256_file
from tasks.core.status import Status
from tasks.photos import quarantine
from tasks.reports.reports import AuditReport, ContradictedPhoto

if TYPE_CHECKING:
    from tasks.core.params import Audit, TensorFlow

# Contradicted photos listed in audit.json (git-tracked): a batch with every label swapped lists this
# many, with the count of all of them (reports/data.html draws at most its own cap).
MAX_LISTED = 500
NEVER_AUDITED = (
    "no audit has run: the label audit runs in Prefect pipeline runs that bring new photos and have a "
    "champion (`dvc repro` alone never audits; it applies the quarantine list as it is)"
)
SCORED_COLUMNS = ["path", "label", "sha256", "predicted", "confidence"]


def initial() -> AuditReport:
    """audit.json before any audit (what `dvc repro` alone writes where there is none)."""
    return idle(NEVER_AUDITED, new_photos=0)


def idle(reason: str, new_photos: int, champion_sha256: str | None = None) -> AuditReport:
    """A report of a run whose new photos were not scored (none, or nothing to score them with)."""
    return {
        "tripped": False,
        "reason": reason,
        "batch": None,
        "champion_sha256": champion_sha256,
        "new_photos": new_photos,
        "scored": 0,
        "disagreements": 0,
        "contradicted": 0,
        "disagreement_rate": None,
        "champion_test_error": None,
        "champion_test_photos": None,
        "normal_rate": None,
        "p_value": None,
        "quarantined": 0,
        "settings": {},
        "contradicted_photos": [],
    }


def ledger_photos(interim: Path) -> set[str]:
    """sha256 of every photo the split ledger (shard's split.parquet) has seen: not new."""
    ledger = interim / "split.parquet"
    return set(read_parquet(ledger)["sha256"]) if ledger.exists() else set()


def new_photos(clean_rows: pd.DataFrame, seen: set[str], excluded: set[str]) -> pd.DataFrame:
    """The photos clean kept whose bytes were never split nor audited (seen), and not excluded (paths);
    path, label, sha256, sorted by path."""
    kept = clean_rows[clean_rows["status"] == Status.KEPT]
    new = kept[~kept["sha256"].isin(seen) & ~kept["path"].isin(excluded)]
    return new[["path", "label", "sha256"]].sort_values("path", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Champion:
    """What the audit knows of the champion: its bytes' hash and the test accuracy it was promoted with."""

    folder: Path
    sha256: str
    test_accuracy: float
    test_photos: int


def champion(folder: Path) -> tuple[Champion | None, str]:
    """The champion in folder (models/champion), or None and why there is none to audit with."""
    model, card = folder / "model.keras", folder / "champion.json"
    if not model.exists():
        return None, "no champion yet"
    try:
        metrics = json.loads(card.read_text(encoding="utf-8"))["metrics"]
        accuracy, photos = float(metrics["accuracy"]), int(metrics["examples"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{card} does not record the champion's test accuracy"
    if photos <= 0:
        return None, f"{card} records no test photo"
    return Champion(folder, sha256_file(model), accuracy, photos), ""


def normal_rate(test_error: float, test_photos: int, tolerance: float, alpha: float) -> float:
    """The disagreement rate taken as normal: test error + tolerance, at least the one-sided (1 - alpha)
    Clopper-Pearson upper bound of the test error measured on test_photos photos."""
    errors = round(test_error * test_photos)
    bound = 1.0 if errors >= test_photos else float(beta.ppf(1 - alpha, errors + 1, test_photos - errors))
    return min(1.0, max(test_error + tolerance, bound))


def decide(scored: pd.DataFrame, champ: Champion, cfg: Audit, batch: str, new: int) -> AuditReport:
    """The audit's verdict on scored photos (SCORED_COLUMNS; champ: the test accuracy to compare with)."""
    n = len(scored)
    wrong = scored["predicted"] != scored["label"]
    confident = wrong & (scored["confidence"] >= cfg.confidence)
    k = int(wrong.sum())
    test_error = 1.0 - champ.test_accuracy
    normal = normal_rate(test_error, champ.test_photos, cfg.tolerance, cfg.alpha)
    p = float(binomtest(k, n, normal, alternative="greater").pvalue) if n else 1.0
    tripped = n >= cfg.min_photos and p < cfg.alpha
    rate = k / n if n else None
    if not n:
        reason = f"none of the {new} new photos is of a class the champion knows: nothing scored"
    else:
        seen = (
            f"the champion disagrees with {k} of {n} new photos' labels ({rate:.1%}; normal up to "
            f"{normal:.1%}, its test error {test_error:.1%} + audit.tolerance), p={p:.3g}"
        )
        if tripped:
            reason = f"{seen} < audit.alpha {cfg.alpha:g}: batch {batch} quarantined, not trained on"
        elif n < cfg.min_photos:
            reason = f"{seen}; fewer than audit.min_photos {cfg.min_photos}: trained on"
        else:
            reason = f"{seen} >= audit.alpha {cfg.alpha:g}: trained on"
    listed = scored[confident].sort_values("path", kind="stable").head(MAX_LISTED)
    photos: list[ContradictedPhoto] = [
        {
            "path": str(r.path),
            "label": str(r.label),
            "predicted": str(r.predicted),
            "confidence": float(r.confidence),
        }
        for r in listed.itertuples()
    ]
    return {
        "tripped": tripped,
        "reason": reason,
        "batch": batch,
        "champion_sha256": champ.sha256,
        "new_photos": new,
        "scored": n,
        "disagreements": k,
        "contradicted": int(confident.sum()),
        "disagreement_rate": rate,
        "champion_test_error": test_error,
        "champion_test_photos": champ.test_photos,
        "normal_rate": normal,
        "p_value": p,
        "quarantined": new if tripped else 0,
        "settings": {
            "confidence": cfg.confidence,
            "tolerance": cfg.tolerance,
            "alpha": cfg.alpha,
            "min_photos": cfg.min_photos,
        },
        "contradicted_photos": photos,
    }


def score(champ: Champion, photos: pd.DataFrame, raw: Path, tf_settings: TensorFlow) -> pd.DataFrame:
    """The champion's label and confidence for each photo of a class it knows (SCORED_COLUMNS); photos
    are prepared as for `pawflow predict` (tasks.predict: as the champion's shards were made), TensorFlow
    set up as params.yaml `tensorflow:` says (as train and evaluate, in the same pipeline process)."""
    from tasks import predict
    from tasks.model import runtime

    runtime.configure(tf_settings)

    predictor = predict.load(champ.folder)
    known = photos[photos["label"].isin(predictor.class_names)].reset_index(drop=True)
    rows = list(predict.predict(predictor, iter(raw / p for p in known["path"])))
    out = known.assign(
        predicted=[r.label for r in rows],
        confidence=[float(r.confidence) if r.confidence is not None else 0.0 for r in rows],
    )
    # A photo clean kept decodes; one that changed since cannot be scored: it is left out, not guessed.
    ok = [not r.error for r in rows]
    return out[ok][SCORED_COLUMNS].reset_index(drop=True)


def hold(q: quarantine.Quarantine, report: AuditReport, new: pd.DataFrame) -> quarantine.Quarantine:
    """The quarantine after an audit: the batch added when the audit tripped."""
    if not report["tripped"]:
        return q
    return quarantine.add(q, quarantine.new_batch(new, report["reason"]))
