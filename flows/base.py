"""base: models/base, the starting weights of train (a warm start's, or none: docs/design.md, "Warm start").

The folder is a DVC output (persist) so that the train stage can depend on it without a cycle: the Prefect
pipeline sets it from the champion (or empties it) before train and records it with `dvc commit base`.
This command, which `dvc repro` runs only when models/base is missing or this code changed, writes an
empty one (`null`: from scratch) where there is none and checks the one there; it never reads the
champion, so `dvc repro` alone never warm-starts. No Prefect flow: there is nothing to orchestrate,
and under `dvc repro` a flow would cost a Prefect API start for one small file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flows.command import stage_arguments
from flows.lock import workspace_lock
from tasks import base
from tasks.base import ensure_base
from tasks.core.errors import PawflowError, report
from tasks.core.params import Params, load_params
from tasks.photos.datasetinfo import DatasetInfo


def prepare_base(
    params: Params, root: Path, warm_start: bool, full_retrain: bool, train_will_run: bool
) -> tuple[str, str, bool]:
    """models/base before train, for the entry points that choose it (the Prefect pipeline, `pawflow
    run`): the champion (a warm start), empty (from scratch) or left as it is, as
    tasks.base.choose_base decides, then recorded with `dvc commit base` when it changed.

    train_will_run: train is out of date for a reason besides models/base (new shards, --force); DVC is
    asked too. Returns (choice, why, whether dvc.lock's base changed). Needs the data stages done (it
    reads dataset_info.json) and the workspace lock."""
    from tasks.history import versioning

    folder = params.paths.models / "base"
    before = versioning.lock_summary(root).get("base")
    base_changed = bool(versioning.stage_status(root, "base"))  # missing, or its code changed
    current = ensure_base(folder)
    if base_changed:
        versioning.commit_stage(root, "base")
    info_path = DatasetInfo.path(params.paths.processed)
    choice, why = "keep", f"{info_path} not found"
    champion = base.base_from_champion(params.paths.models / "champion")
    if info_path.exists():
        info = DatasetInfo.read(params.paths.processed)
        will_run = train_will_run or bool(versioning.stage_status(root, "train"))
        choice, why = base.choose_base(
            warm_start,
            full_retrain,
            will_run,
            current,
            champion,
            base.shaping(params.train, info),
            base.train_examples(info),
            params.train.finetune,
        )
    if choice == "champion":
        base.write_base(folder, champion)
    elif choice == "scratch" and current is not None:
        base.write_base(folder, None)
    if choice != "keep":
        versioning.commit_stage(root, "base")
    return choice, why, versioning.lock_summary(root).get("base") != before


def main(argv: list[str] | None = None) -> int:
    args = stage_arguments("base", __doc__.splitlines()[0], argv)
    try:
        params = load_params(args.params)
        folder = params.paths.models / "base"
        with workspace_lock():
            base = ensure_base(folder)
    except PawflowError as err:
        return report("pawflow base", err)
    if base is None:
        print(f"pawflow base: {folder} is empty: train starts from scratch")
    else:
        print(f"pawflow base: {folder} holds {base.sha256[:12]} (warm start #{base.count + 1} if it fits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
