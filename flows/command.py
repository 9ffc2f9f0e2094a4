"""The command line of the stage commands, `python -m flows.<stage>` (what dvc.yaml runs). Light (no
Prefect): the base and audit stages use it without importing flows.common."""

from __future__ import annotations

import argparse
from pathlib import Path


def stage_arguments(stage: str, description: str, argv: list[str] | None, refresh: bool = False):
    """The command line of `python -m flows.<stage>` (what dvc.yaml runs): --params, and --refresh for
    the stages with caches; bad usage exits 2 with argparse's message. The CLI people type is
    flows/cli.py (typer); these are the stage commands DVC and the pipeline run."""
    parser = argparse.ArgumentParser(prog=f"python -m flows.{stage}", description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    if refresh:
        parser.add_argument("--refresh", action="store_true", help="recompute instead of reusing caches")
    return parser.parse_args(argv)
