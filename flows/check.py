"""check: the first stage of dvc.yaml. Validates params.yaml, ingest.source and the exclude list (and, with
runner.kind dask and an address, the cluster: tasks.scaleout.workers.check_cluster) before DVC removes any
output of a later stage (DVC runs stages in order and stops at the first that fails).

Exit 0 and write `<paths.interim>/checked.txt` (constant text, so it never makes a later stage out of
date), or print one message and exit 2 (1 if the disk is too full to write it). Light imports only:
no Prefect, no TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.check import preflight, write_checked
from tasks.core.errors import PawflowError, report
from tasks.scaleout.workers import check_cluster


def main(params_path: Path = Path("params.yaml")) -> int:
    try:
        params = preflight(params_path, light=True)
        # A Dask cluster that cannot do the work is refused here, before DVC removes the outputs of clean.
        check_cluster(params, params_path.parent.absolute(), print)
    except PawflowError as err:
        return report("pawflow check", err)
    try:
        write_checked(params)
    except PawflowError as err:  # a full disk (tasks.core.fileio.NoSpace, exit 1): the check ran, its
        # write failed
        return report("pawflow check", err)
    print("pawflow check: params.yaml, ingest.source and the exclude list are fine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
