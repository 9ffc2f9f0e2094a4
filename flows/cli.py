"""The `pawflow` command: run the pipeline, serve its deployments, predict with the champion."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from tasks.errors import PawflowError
from tasks.params import load_params

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


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], env=tool_env())
    if check and proc.returncode != 0:
        raise PawflowError(
            f"`dvc {' '.join(args)}` failed (exit {proc.returncode}); its message is above.",
            "Fix what it names, then run again: finished stages are not run twice.",
        )
    return proc


def has_remote() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "default"], env=tool_env(), capture_output=True, text=True
    )
    return out.returncode == 0 and bool(out.stdout.strip())


def cmd_run(args: argparse.Namespace) -> int:
    """dvc repro with a Prefect API for its stage flows, then dvc push to the default remote."""
    from flows.server import prefect_api

    load_params(Path("params.yaml"))  # a bad params.yaml is reported before anything starts
    with prefect_api(PREFECT_HOME):
        dvc("repro", *(["--force"] if args.force else []))
    if args.push and has_remote():
        dvc("push")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Label photos with the champion (or --model); exit 1 if any file could not be labelled."""
    import csv

    from tasks import predict

    params = load_params(Path("params.yaml")) if Path("params.yaml").exists() else None
    max_pixels = params.clean.max_pixels if params else 89_478_485
    model = args.model or (params.paths.models / "champion" if params else Path("models/champion"))
    predictor = predict.load(model, max_pixels)
    failed = 0
    writer = csv.writer(sys.stdout, lineterminator="\n") if args.csv else None
    if writer:
        writer.writerow(["path", "label", "confidence", "error"])
    for row in predict.predict(predictor, predict.iter_files(args.targets)):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pawflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline (dvc repro) and push data and model")
    run.add_argument("--force", action="store_true", help="re-run every stage")
    run.add_argument("--no-push", dest="push", action="store_false", help="do not dvc push afterwards")
    run.set_defaults(fn=cmd_run)
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
        return 2
    except KeyboardInterrupt:
        print(
            f"\npawflow {args.command}: interrupted; run it again to finish (finished work is kept).",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
