"""The `pawflow` command: run the pipeline, serve its deployments, predict with the champion."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tasks.errors import PawflowError
from tasks.params import Pipeline, load_params

PREFECT_HOME = Path(".pawflow/prefect")


def tool_env() -> dict[str, str]:
    """Environment for dvc and the stage commands: this interpreter's bin first, no telemetry."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


class RunFailed(PawflowError):
    """The run started and failed (exit 1); bad params or usage are refused before it starts (exit 2)."""

    exit_code = 1


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], env=tool_env())
    if check and proc.returncode != 0:
        # The stage's own message above says what to do; finished stages are recorded in dvc.lock.
        raise RunFailed(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}); its message is above.")
    return proc


def has_remote() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "default"], env=tool_env(), capture_output=True, text=True
    )
    return out.returncode == 0 and bool(out.stdout.strip())


def cmd_run(args: argparse.Namespace) -> int:
    """dvc repro with a Prefect API for its stage flows, then dvc push to the default remote."""
    from flows.common import run_lock
    from flows.server import prefect_api
    from tasks import versioning
    from tasks.preflight import preflight

    root = project_root(Path.cwd())
    os.chdir(root)
    # Bad params, an unreadable source (a pipe would block DVC) or a busy workspace: refused before
    # DVC or a Prefect server starts. dvc repro then runs the same checks as its first stage.
    params = preflight(Path("params.yaml"))
    with run_lock(root):
        pass
    started = time.monotonic()
    before = versioning.lock_stages(root)
    stages = (versioning.CHECK_STAGE, *versioning.STAGES)
    if not args.force and not any(versioning.stage_status(root, s) for s in stages):
        # Nothing for dvc repro to do: skip starting a Prefect server for it.
        print("pawflow run: every stage is up to date (dvc.lock); nothing to do.")
    else:
        with prefect_api(PREFECT_HOME):
            dvc("repro", *(["--force"] if args.force else []))
    pushed = None
    if args.push and params.pipeline.push and has_remote():
        dvc("push")
        pushed = True
    after = versioning.lock_stages(root)
    stages = {
        s: "ran" if before.get(s) != after.get(s) or args.force else "skipped (up to date)"
        for s in versioning.STAGES
    }
    versioning.record_run(
        root, params, "dvc repro", stages, {"seconds": round(time.monotonic() - started, 1), "pushed": pushed}
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Label photos with the champion (or --model); exit 1 if any file could not be labelled."""
    import csv

    from tasks import predict, runtime
    from tasks.params import Params

    params = load_params(Path("params.yaml")) if Path("params.yaml").exists() else None
    defaults = Params.model_fields
    max_pixels = params.clean.max_pixels if params else defaults["clean"].default.max_pixels
    model = args.model or (params.paths.models / "champion" if params else Path("models/champion"))
    predict.model_files(model)  # the model and the photos are checked before TensorFlow is imported
    files = predict.list_files(args.targets)
    runtime.configure(params.tensorflow if params else defaults["tensorflow"].default)
    predictor = predict.load(model, max_pixels)
    failed = 0
    writer = csv.writer(sys.stdout, lineterminator="\n") if args.csv else None
    if writer:
        writer.writerow(["path", "label", "confidence", "error"])
    for row in predict.predict(predictor, iter(files)):
        failed += bool(row.error)
        conf = "" if row.confidence is None else f"{row.confidence:.4f}"
        if writer:
            writer.writerow([row.path, row.label, conf, row.error])
        elif row.error:
            print(f"{row.path}\terror: {row.error}")
        else:
            print(f"{row.path}\t{row.label}\t{conf}")
        sys.stdout.flush()
    return 1 if failed else 0


def project_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").exists() and (folder / "params.yaml").exists():
            return folder
    raise PawflowError(
        f"{start} is not inside a pawflow project (no dvc.yaml + params.yaml found).",
        "Run this from the project folder.",
    )


def deployments(params_path: Path) -> list:
    """pipeline/manual (run on demand), pipeline/retrain-nightly and pipeline/retrain-full (crons from
    params.yaml)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron

    from flows.pipeline import pipeline

    p = load_params(params_path).pipeline
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE")
    manual = pipeline.to_deployment(
        name="manual",
        concurrency_limit=one_at_a_time,
        tags=["pawflow"],
        description="The whole pipeline on demand: prefect deployment run 'pipeline/manual' "
        "[--param epochs=3] [--param source=...] [--param force=true]",
    )
    nightly = pipeline.to_deployment(
        name="retrain-nightly",
        concurrency_limit=one_at_a_time,
        tags=["pawflow"],
        schedule=Cron(p.schedule, timezone=p.timezone),
        parameters={"warm_start": True},
        description=f"Re-ingest the source at '{p.schedule}' ({p.timezone}); retrain and gate only when "
        "new photos arrived, else finish fast with 'no new data'. Fine-tunes the champion (warm start) "
        "unless a full retrain is due (README 'Warm-start training').",
    )
    return [manual, nightly, retrain_full_deployment(pipeline, p, one_at_a_time)]


def retrain_full_deployment(pipeline: Any, p: Pipeline, limit: Any) -> Any:
    """pipeline/retrain-full: a model trained from scratch on the slower schedule pipeline.full_schedule."""
    from prefect.schedules import Cron

    return pipeline.to_deployment(
        name="retrain-full",
        concurrency_limit=limit,
        tags=["pawflow"],
        schedule=Cron(p.full_schedule, timezone=p.timezone),
        parameters={"full_retrain": True},
        description=f"At '{p.full_schedule}' ({p.timezone}): the whole pipeline with a model trained from "
        "scratch, even when no photos arrived (the nightly runs warm-start from the champion).",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve pipeline/manual and pipeline/retrain-nightly against PREFECT_API_URL until stopped."""
    from prefect import serve
    from prefect.client.orchestration import get_client

    from flows.pipeline import CONCURRENCY_LIMIT
    from flows.server import healthy

    api = os.environ.get("PREFECT_API_URL")
    if not api or not healthy(api):
        raise PawflowError(
            f"pawflow serve needs a running Prefect server (PREFECT_API_URL={api or 'unset'}).",
            "In another terminal: `prefect server start`; then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` and run `pawflow serve` again.",
        )
    root = project_root(Path.cwd())
    os.chdir(root)  # flow runs start in the serving process's folder: the workspace
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(CONCURRENCY_LIMIT, limit=1)
    # pause_on_shutdown=False: stopping this process must not leave the nightly schedule paused.
    serve(*deployments(root / "params.yaml"), pause_on_shutdown=False, limit=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pawflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline (dvc repro) and push data and model")
    run.add_argument("--force", action="store_true", help="re-run every stage")
    run.add_argument("--no-push", dest="push", action="store_false", help="do not dvc push afterwards")
    run.set_defaults(fn=cmd_run)
    srv = sub.add_parser(
        "serve", help="serve the pipeline deployments (manual + retrain-nightly) until stopped"
    )
    srv.set_defaults(fn=cmd_serve)
    pred = sub.add_parser("predict", help="label photos (files or folders, recursively) with the champion")
    pred.add_argument("targets", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    pred.add_argument(
        "--model",
        type=Path,
        help="a .keras file or a folder with model.keras + model.json (default: models/champion)",
    )
    pred.add_argument("--csv", action="store_true", help="CSV: path,label,confidence,error")
    pred.set_defaults(fn=cmd_predict)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except PawflowError as err:
        print(f"\npawflow {args.command}: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(
            f"\npawflow {args.command}: interrupted; run it again to finish (finished work is kept).",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
