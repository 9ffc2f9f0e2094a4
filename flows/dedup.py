"""dedup: collapse exact and near duplicates within a label; drop photos that appear under two labels."""

from __future__ import annotations

import sys
import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.common import friendly, publish, stage_main, stage_run_name
from tasks import datareport, dedup, summary
from tasks.fileio import read_parquet, write_bytes, write_parquet
from tasks.params import Params
from tasks.reports import DEDUP, DedupReport


@task(name="find-duplicates")
def find_duplicates(params: Params) -> DedupReport:
    """Group kept photos by sha256 and perceptual-hash distance; write dedup.parquet and its report."""
    kept = dedup.kept_photos(read_parquet(params.paths.interim / "clean.parquet"))
    index = dedup.load_index(params.paths.cache, params.dedup.max_distance, params.dedup.hash_size)
    dd, new_index = dedup.find_duplicates_indexed(kept, params.dedup.max_distance, index)
    get_run_logger().info(
        "dedup: %d distinct hash(es), %d of them new (compared against an index of %d from the last run)",
        len(new_index.packed),
        new_index.fresh,
        0 if index is None else len(index.packed),
    )
    rep = dedup.report(dd)
    write_parquet(params.paths.interim / "dedup.parquet", dd)
    DEDUP.write(params.paths.reports, rep)
    dedup.save_index(new_index, params.paths.cache)
    return rep


@task(name="data-report")
def data_report(params: Params) -> str:
    """reports/data.html from clean.parquet, dedup.parquet and the photos in data/raw; returns Markdown."""
    report = datareport.build(
        read_parquet(params.paths.interim / "clean.parquet"),
        read_parquet(params.paths.interim / "dedup.parquet"),
        params.paths.raw,
        params.clean.formats,
        params.clean.max_pixels,
        params.dedup.max_distance,
        params.clean.flags,
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
    rows = [
        ["photos", rep["photos"]],
        ["kept", rep["kept"]],
        ["duplicates (exact)", rep["exact_duplicates"]],
        ["duplicates (near)", rep["near_duplicates"]],
        ["duplicate groups", rep["duplicate_groups"]],
        ["label conflicts (dropped)", rep["conflict"]],
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
