"""dedup: collapse exact and near duplicates within a label; drop photos that appear under two labels; hold
out the photos the exclude list names and those the label audit quarantined."""

from __future__ import annotations

import sys
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.common import friendly, publish, stage_main, stage_run_name
from tasks import dedup
from tasks.core.fileio import read_parquet, write_bytes, write_parquet
from tasks.core.params import Params
from tasks.photos import exclude, quarantine
from tasks.reports import datareport, summary
from tasks.reports.reports import AUDIT, DEDUP, DedupReport


def held_out(params: Params, kept) -> tuple:
    """The kept photos held out of the split (dedup.held_out), and the exclude list's entries that name
    no photo of the collection (a typo, or a photo that left the source)."""
    entries = exclude.read(params.paths.exclude)
    excluded = exclude.matches(entries, kept)
    held = {
        p.sha256: f"label audit batch {b.id}"
        for b in quarantine.read(params.paths.interim).held_batches()
        for p in b.photos
    }
    return dedup.held_out(kept, excluded, held), exclude.unmatched(
        entries, read_parquet(params.paths.interim / "ingest.parquet")
    )


@task(name="find-duplicates")
def find_duplicates(params: Params) -> DedupReport:
    """Hold out excluded and quarantined photos; group the other kept photos by sha256 and perceptual-hash
    distance; write dedup.parquet and its report."""
    kept = dedup.kept_photos(read_parquet(params.paths.interim / "clean.parquet"))
    held, unmatched = held_out(params, kept)
    log = get_run_logger()
    for e in unmatched:
        log.warning(
            "%s line %d: %s names no photo of the collection (a typo, or it left the source)",
            params.paths.exclude,
            e.line,
            e.key,
        )
    index = dedup.load_index(params.paths.cache, params.dedup.max_distance, params.dedup.hash_size)
    grouped, new_index = dedup.find_duplicates_indexed(
        kept[~kept["path"].isin(held["path"])], params.dedup.max_distance, index
    )
    dd = dedup.with_held(grouped, held, kept)
    get_run_logger().info(
        "dedup: %d distinct hash(es), %d of them new (compared against an index of %d from the last run)",
        len(new_index.packed),
        new_index.fresh,
        0 if index is None else len(index.packed),
    )
    rep = dedup.report(dd, held)
    write_parquet(params.paths.interim / "dedup.parquet", dd)
    DEDUP.write(params.paths.reports, rep)
    dedup.save_index(new_index, params.paths.cache)
    return rep


@task(name="data-report")
def data_report(params: Params) -> str:
    """reports/data.html from clean.parquet, dedup.parquet, the exclude list, the label audit and the
    photos in data/raw; returns Markdown."""
    clean_rows = read_parquet(params.paths.interim / "clean.parquet")
    held, unmatched = held_out(params, dedup.kept_photos(clean_rows))
    report = datareport.build(
        clean_rows,
        read_parquet(params.paths.interim / "dedup.parquet"),
        params.paths.raw,
        params.clean.formats,
        params.clean.max_pixels,
        params.dedup.max_distance,
        params.clean.flags,
        datareport.HeldOut(
            held=held,
            unmatched=tuple(unmatched),
            audit=AUDIT.read_if_written(params.paths.reports),
            batches=tuple(quarantine.read(params.paths.interim).held_batches()),
        ),
    )
    page = params.paths.reports / "data.html"
    write_bytes(page, datareport.render_html(report).encode("utf-8"))
    return summary.data_quality_markdown(report, str(page))


@flow(name="dedup", flow_run_name=stage_run_name, log_prints=True)
@friendly
def dedup_flow(params: Params, refresh: bool = False) -> DedupReport:
    """Exact and near duplicates collapse to one kept photo; label conflicts are dropped and reported."""
    started = time.monotonic()
    rep = find_duplicates(params)
    markdown = data_report(params)
    rows: list[list[Any]] = [
        ["photos", rep["photos"]],
        ["kept", rep["kept"]],
        ["duplicates (exact)", rep["exact_duplicates"]],
        ["duplicates (near)", rep["near_duplicates"]],
        ["duplicate groups", rep["duplicate_groups"]],
        ["label conflicts (dropped)", rep["conflict"]],
        ["excluded by you", rep["excluded"]],
        ["held in quarantine", rep["quarantined"]],
        ["seconds", f"{time.monotonic() - started:.1f}"],
    ]
    publish("dedup", "dedup: duplicate groups", ["", "count"], rows)
    page = params.paths.reports / "data.html"
    create_markdown_artifact(
        key="data-quality",
        markdown=markdown,
        description="rejected, flagged and duplicate photos, with a few pictures (reports/data.html in full)",
    )
    print(f"data-quality report: {page}")
    return rep


if __name__ == "__main__":
    sys.exit(stage_main("dedup", dedup_flow))
