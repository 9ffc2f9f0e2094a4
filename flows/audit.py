"""audit: the champion scores a run's new photos; a batch it contradicts far more than normal is quarantined.

Two entry points, like base (docs/design.md "Warm start"): the audit needs the champion, which is
evaluate's output, so the audit stage's outputs (reports/audit.json, <paths.interim>/quarantine.json)
are set by the Prefect pipeline, which runs `audit_flow` between clean and dedup and records them with
`dvc commit audit`. The stage's command, `python -m flows.audit`, which `dvc repro` runs only when an
output is missing or this code changed, writes empty ones where there are none and keeps the ones there:
`dvc repro` alone never audits, and applies the quarantine as it is (dedup holds its photos out).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.command import stage_arguments
from flows.common import friendly, publish, record_stage_run, stage_run_name
from flows.lock import workspace_lock
from tasks import audit
from tasks.core.errors import PawflowError, report
from tasks.core.fileio import read_parquet
from tasks.core.params import Params, load_params
from tasks.photos import exclude, quarantine
from tasks.reports.reports import AUDIT, AuditReport


def ensure_outputs(interim: Path, reports: Path) -> bool:
    """Write the initial audit.json and an empty quarantine where they are missing; whether it wrote."""
    wrote = False
    if not quarantine.path(interim).exists():
        quarantine.write(interim, quarantine.Quarantine())
        wrote = True
    if not AUDIT.path(reports).exists():
        AUDIT.write(reports, audit.initial())
        wrote = True
    return wrote


@flow(name="audit", flow_run_name=stage_run_name, log_prints=True)
@friendly
def audit_flow(params: Params, refresh: bool = False) -> AuditReport:
    """Score the run's new photos with the champion; quarantine the batch when its labels are contradicted
    far more than the champion's test error allows (reports/audit.json says why)."""
    started = time.monotonic()
    log = get_run_logger()
    p = params.paths
    ensure_outputs(p.interim, p.reports)
    champ, why = audit.champion(p.models / "champion")
    held = quarantine.read(p.interim)
    if champ is None:
        # Nothing is written: the outputs stay what `dvc repro` alone leaves (a first run has no champion).
        log.info("label audit: %s, new photos are not audited", why)
        return AUDIT.read(p.reports)
    clean_rows = read_parquet(p.interim / "clean.parquet")
    excluded = exclude.matches(exclude.read(p.exclude), clean_rows)
    seen = audit.ledger_photos(p.interim) | held.seen()
    new = audit.new_photos(clean_rows, seen, set(excluded["path"]))
    if new.empty:
        rep = audit.idle("no new photos to audit", 0, champ.sha256)
    else:
        log.info("label audit: the champion scores %d new photo(s)", len(new))
        scored = audit.score(champ, new, p.raw, params.tensorflow)
        rep = audit.decide(scored, champ, params.audit, quarantine.batch_id(new["sha256"].tolist()), len(new))
        quarantine.write(p.interim, audit.hold(held, rep, new))  # before the report that names the batch
    AUDIT.write(p.reports, rep)
    record_stage_run(params, "audit", {"new_photos": rep["new_photos"], "tripped": rep["tripped"]})
    (log.warning if rep["tripped"] else log.info)("label audit: %s", rep["reason"])
    rows: list[list[Any]] = [
        ["new photos", rep["new_photos"]],
        ["scored by the champion", rep["scored"]],
        ["disagreements", rep["disagreements"]],
        [f"confidently contradicted (>= {params.audit.confidence:g})", rep["contradicted"]],
        ["p-value", "" if rep["p_value"] is None else f"{rep['p_value']:.3g}"],
        ["quarantined", rep["quarantined"]],
        ["held in quarantine (all batches)", len(quarantine.read(p.interim).held())],
        ["seconds", f"{time.monotonic() - started:.1f}"],
    ]
    publish("audit", f"audit: {rep['reason']}", ["", "count"], rows)
    return rep


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.audit` (dvc repro's command): the outputs where they are missing; never audits."""
    args = stage_arguments("audit", __doc__.splitlines()[0], argv)
    try:
        params = load_params(args.params)
        with workspace_lock():
            wrote = ensure_outputs(params.paths.interim, params.paths.reports)
            held = quarantine.read(params.paths.interim).held_batches()
    except PawflowError as err:
        return report("pawflow audit", err)
    state = "wrote empty ones" if wrote else "kept"
    print(
        f"pawflow audit: {state} (dvc repro never audits); {len(held)} batch(es) held in quarantine "
        f"({sum(len(b.photos) for b in held)} photos, `pawflow quarantine list`)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
