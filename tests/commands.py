"""Commands run in a test workspace (a copy of the project): any program, python -m, dvc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import tool_env


def sh(
    ws: Path, *args: str, api: str | None, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args),
        cwd=ws,
        env={**tool_env(api), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def py(ws: Path, *args: str, api: str | None) -> subprocess.CompletedProcess:
    return sh(ws, sys.executable, *args, api=api)


def dvc(ws: Path, *args: str, api: str | None) -> subprocess.CompletedProcess:
    return py(ws, "-m", "dvc", *args, api=api)


def ran(out: str) -> list[str]:
    """The stages a `dvc repro` ran, from its output."""
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
