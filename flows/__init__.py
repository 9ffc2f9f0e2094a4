"""pawflow's Prefect flows: one per stage (`python -m flows.<stage>`), plus the whole pipeline."""

import sys

# Prefect reads PREFECT_API_URL once, when it is first imported: a stage process run without it (as
# `dvc repro` runs them) must point at the background server before its module imports Prefect, so this
# runs first; see flows/server.py. Only for `python -m flows.<stage>`: importing flows does nothing else.
if "-m" in sys.orig_argv[:-1]:
    _module = sys.orig_argv[sys.orig_argv.index("-m") + 1]
    if _module.startswith("flows.") and _module != "flows.server":
        from flows.server import use_background_server

        use_background_server()
