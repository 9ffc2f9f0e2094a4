"""base: models/base, the starting weights of train (a warm start's, or none: docs/design.md, "Warm start").

The folder is a DVC output (persist) so that the train stage can depend on it without a cycle: the Prefect
pipeline sets it from the champion (or empties it) before train and records it with `dvc commit base`.
This command, which `dvc repro` runs only when models/base is missing or this code changed, writes an
empty one (`null`: from scratch) where there is none and checks the one there; it never reads the
champion, so `dvc repro` alone never warm-starts. No Prefect flow: there is nothing to orchestrate,
and under `dvc repro` a flow would cost a Prefect API start for one small file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.common import workspace_lock
from tasks.errors import PawflowError
from tasks.params import load_params
from tasks.warmstart import ensure_base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.base", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        folder = params.paths.models / "base"
        with workspace_lock():
            base = ensure_base(folder)
    except PawflowError as err:
        print(f"\npawflow base: {err}", file=sys.stderr)
        return 2
    if base is None:
        print(f"pawflow base: {folder} is empty: train starts from scratch")
    else:
        print(f"pawflow base: {folder} holds {base.sha256[:12]} (warm start #{base.count + 1} if it fits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
