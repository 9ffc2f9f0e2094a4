"""P1: clean + dedup throughput on the real sample, pawflow vs cleanvision and imagededup (same files).

pawflow fully decodes every photo (and normalises it, hashes it, re-encodes it for the shards); the
peers do less per photo. Each tool starts from the same state: files on disk, page cache warm, no
result caches (pawflow's per-photo cache is empty for every repetition).
"""

from __future__ import annotations

import shutil
import sys
import time
import types
from pathlib import Path

from bench.common import ROOT, SAMPLE, WORK, image_files, median_of, save
from tasks.core.params import params_in

REPS = 3


def imagededup_phash():
    """imagededup's PHash. Its package __init__ imports the CNN method (torch + torchvision, several GB);
    PHash does not use them, so the two subpackages are opened without their __init__."""
    import imagededup

    root = Path(imagededup.__file__).parent
    for name in ("methods", "utils"):
        pkg = types.ModuleType(f"imagededup.{name}")
        pkg.__path__ = [str(root / name)]
        sys.modules.setdefault(f"imagededup.{name}", pkg)
    from imagededup.methods.hashing import PHash

    return PHash(verbose=False)


def run_pawflow(files: int) -> float:
    from flows.clean import clean_flow
    from flows.common import task_runner
    from flows.dedup import dedup_flow
    from flows.ingest import ingest_flow

    work = WORK / "p1-pawflow"
    shutil.rmtree(work, ignore_errors=True)
    params = params_in(ROOT / "params.yaml", work, SAMPLE)
    assert ingest_flow(params=params, return_state=True).is_completed()
    runner = task_runner(params.runner)
    started = time.monotonic()
    assert clean_flow.with_options(task_runner=runner)(params=params, return_state=True).is_completed()
    assert dedup_flow(params=params, return_state=True).is_completed()
    return files / (time.monotonic() - started)


def run_cleanvision(paths: list[Path]) -> float:
    from cleanvision import Imagelab

    started = time.monotonic()
    lab = Imagelab(filepaths=[str(p) for p in paths])
    lab.find_issues(verbose=False)
    return len(paths) / (time.monotonic() - started)


def run_imagededup(paths: list[Path]) -> float:
    phasher = imagededup_phash()
    started = time.monotonic()
    phasher.find_duplicates(image_dir=str(SAMPLE), max_distance_threshold=4, recursive=True)
    return len(paths) / (time.monotonic() - started)


def main() -> dict:
    all_files = sorted(p for p in SAMPLE.rglob("*") if p.is_file() and p.parent != SAMPLE)
    photos = image_files(SAMPLE)
    for p in photos:  # the same warm page cache for every tool
        p.read_bytes()
    paw, paw_runs = median_of(REPS, lambda: run_pawflow(len(all_files)))
    dup, dup_runs = median_of(REPS, lambda: run_imagededup(photos))
    cv, cv_runs = median_of(1, lambda: run_cleanvision(photos))
    ratio_cv, ratio_dup = paw / cv, paw / dup
    return save(
        1,
        f"pawflow {paw:.0f} img/s = {ratio_cv:.1f}x cleanvision ({cv:.0f}), "
        f"{ratio_dup:.1f}x imagededup ({dup:.0f})",
        ">= 5x cleanvision and >= 3x imagededup images/s",
        ratio_cv >= 5 and ratio_dup >= 3,
        pawflow_images_per_s=paw,
        cleanvision_images_per_s=cv,
        imagededup_images_per_s=dup,
        ratio_vs_cleanvision=ratio_cv,
        ratio_vs_imagededup=ratio_dup,
        runs={"pawflow": paw_runs, "imagededup": dup_runs, "cleanvision": cv_runs},
        files=len(all_files),
        photos=len(photos),
        notes="pawflow: clean + dedup flows in-process (Prefect server), per-photo cache empty each time, "
        "full decode + normalise + JPEG re-encode + perceptual hash; cleanvision: Imagelab default "
        "issue types (1 repetition: it is the slowest); imagededup: PHash.find_duplicates, distance 4.",
    )
