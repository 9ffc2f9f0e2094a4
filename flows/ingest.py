"""ingest: make data/raw follow the source (folder, archive or URL) incrementally and write the manifest."""

from __future__ import annotations

import os
import sys
import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows.common import friendly, publish, record_stage_run, stage_main, stage_run_name
from tasks import ingest
from tasks.core.errors import PawflowError, report
from tasks.core.fileio import write_parquet
from tasks.core.params import Params
from tasks.photos import store
from tasks.photos.listing import Listing
from tasks.reports import present
from tasks.reports.reports import INGEST, IngestReport

# Ingest looks at the source on every run: its tasks are never cached, so Prefect need not hash their
# inputs. The listing (one entry per source file) is passed quoted: Prefect would otherwise walk it
# entry by entry, looking for futures, for every task that takes it (~0.5 s per pass at 18,000 files).


@task(name="resolve-source", cache_policy=NO_CACHE)
def resolve_source(params: Params) -> Listing:
    """List the source's files by class (a URL is downloaded first, resuming and retrying)."""
    return ingest.resolve(params.ingest, params.paths.cache / "downloads")


def accepted_removals(value: str | None) -> tuple[bool, int | None]:
    """(accept any removal, accept exactly this many) from PAWFLOW_ACCEPT_REMOVALS's value."""
    if value is None or not value.strip():
        return False, None
    if value.strip() == "any":
        return True, None
    if value.strip().isdigit():
        return False, int(value)
    raise PawflowError(
        f"{ingest.ACCEPT_ENV}={value!r}: expected the number of photos whose removal you accept (as the "
        "refusal names it) or 'any'.",
        f"e.g. `{ingest.ACCEPT_ENV}=120 dvc repro`, or leave it unset.",
    )


@task(name="copy-new-files", cache_policy=NO_CACHE)
def copy_new_files(
    listing: Listing, params: Params, refresh: bool, accept_all: bool, accept_count: int | None
) -> ingest.SyncResult:
    """Mirror moves and removals (mirror mode, refused when too many), then copy new or changed files
    into data/raw (each atomically); unchanged ones are not read."""
    ingest.remove_temporaries(params.paths.raw)
    with store.connect(params.paths.cache) as con:
        known = {} if refresh else store.get_stats(con)
    cfg = params.ingest
    result = ingest.update(
        listing, params.paths.raw, known, cfg.mode, cfg.max_removed_fraction, accept_all, accept_count
    )
    with store.connect(params.paths.cache) as con:
        store.put_stats(con, result.hashes)
    return result


@task(name="write-manifest", cache_policy=NO_CACHE)
def write_manifest(
    listing: Listing, result: ingest.SyncResult, params: Params, refresh: bool
) -> tuple[IngestReport, dict]:
    """Hash data/raw (reusing hashes of files whose size, mtime and inode are unchanged); returns the
    report and this run's figures."""
    with store.connect(params.paths.cache) as con:
        known = {} if refresh else store.get_stats(con)
        df, fresh = ingest.manifest(params.paths.raw, known)
        store.put_stats(con, fresh)
    rep = ingest.report(listing, result, df, params.ingest.mode)
    write_parquet(params.paths.interim / "ingest.parquet", df)
    INGEST.write(params.paths.reports, rep)
    return rep, ingest.run_figures(result, hashed=len(result.hashes) + len(fresh))


@flow(name="ingest", flow_run_name=stage_run_name, log_prints=True)
@friendly
def ingest_flow(
    params: Params, refresh: bool = False, accept_removals: bool = False, accept_count: int | None = None
) -> dict:
    """Make data/raw hold the source's photos and list every file with its sha256.

    accept_removals: remove whatever the source no longer holds, even above ingest.max_removed_fraction;
    accept_count: only if that is exactly this many photos. Returns {"report": ingest.json's contents,
    "figures": what this run changed (also in the run history)}."""
    started = time.monotonic()
    deadline = params.ingest.download_deadline_s
    try:
        # A deadline, not only a per-read timeout: a server that trickles bytes would never end.
        listing = resolve_source.with_options(timeout_seconds=deadline)(params)
    except TimeoutError:  # Prefect's TaskRunTimeoutError (download() turns its own timeouts into retries)
        raise PawflowError(
            f"ingest.source {params.ingest.source}: reading the source (downloading and listing it) took "
            f"longer than ingest.download_deadline_s ({deadline:g} s); stopped.",
            "Check the network or the server, or raise ingest.download_deadline_s; a partial download is "
            "resumed by the next run.",
        ) from None
    result = copy_new_files(quote(listing), params, refresh, accept_removals, accept_count)  # type: ignore[call-overload]  # Prefect's Task typing does not model quote()
    rep, figures = write_manifest(quote(listing), quote(result), params, refresh)  # type: ignore[call-overload]  # Prefect's Task typing does not model quote()
    record_stage_run(params, "ingest", figures)
    log = get_run_logger()
    if figures["removed"] or figures["relabelled"] or figures["renamed"]:
        log.info("the collection follows the source: %s", present.collection_line(figures))
    for s in rep["skipped"]:
        log.warning("skipped %s: %s", s["path"], s["reason"])
    for s in rep["ignored_folders"]:
        log.warning("ignored folder %s (%s file(s)): %s", s["path"], s["files"], s["reason"])
    if rep["not_in_source"]:
        log.warning(
            "%d file(s) in %s are no longer in the source; they stay (ingest.mode: append)",
            len(rep["not_in_source"]),
            params.paths.raw,
        )
    rows = [[f"files ({label})", n] for label, n in rep["per_label"].items()]
    rows += [
        ["files", rep["files"]],
        ["copied (new)", figures["copied"]],
        ["updated", figures["updated"]],
        ["removed (no longer in the source)", figures["removed"]],
        ["relabelled (moved to another class)", figures["relabelled"]],
        ["renamed (within its class)", figures["renamed"]],
        ["unchanged", figures["unchanged"]],
        ["skipped", len(rep["skipped"])],
        ["ignored folders", len(rep["ignored_folders"])],
        ["seconds", f"{time.monotonic() - started:.1f}"],
    ]
    publish("ingest", f"ingest: {rep['source']['location']}", ["", "count"], rows)
    return {"report": rep, "figures": figures}


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.ingest`: a missing or unusable source, or a bad PAWFLOW_ACCEPT_REMOVALS, is bad
    usage (exit 2, one message), not a failed flow run."""
    from tasks.check import preflight

    try:
        accept_all, accept_count = accepted_removals(os.environ.get(ingest.ACCEPT_ENV))
    except PawflowError as err:
        return report("pawflow ingest", err)
    options = {"accept_removals": accept_all, "accept_count": accept_count}
    return stage_main("ingest", ingest_flow, argv, load=preflight, options=options)


if __name__ == "__main__":
    sys.exit(main())
