"""tasks/core/errors.py: the one exception a person reads, and the one table of exit codes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tasks.core.errors import ExitCode, PawflowError, Refused, report
from tasks.core.fileio import NoSpace

ROOT = Path(__file__).resolve().parents[1]
CODES = {int(c) for c in ExitCode if c != ExitCode.OK}


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (PawflowError("bad params"), ExitCode.REFUSED),
        (Refused("the source lost most of the collection"), ExitCode.REFUSED),
        (NoSpace("no space left on /data"), ExitCode.FAILED),
    ],
)
def test_report_prints_one_message_and_returns_the_errors_code(err: PawflowError, code: ExitCode, capsys):
    assert report("pawflow clean", err) == code
    err_text = capsys.readouterr().err
    assert err_text.count("pawflow clean: ") == 1 and str(err) in err_text


def test_the_exit_codes_are_the_shells():
    """130 and 143 are what a shell reports for a process that SIGINT and SIGTERM ended."""
    assert (ExitCode.INTERRUPTED, ExitCode.TERMINATED) == (128 + 2, 128 + 15)


def _literal_codes(path: Path) -> list[str]:
    """Where a module returns, exits with, or sets exit_code to a bare failure number."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        value = None
        if isinstance(node, ast.Return):
            value = node.value
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "exit",
            "Exit",
            "SystemExit",
            "_exit",
        ):
            value = node.args[0] if node.args else None
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "exit_code" for t in node.targets):
            value = node.value
        if isinstance(value, ast.Constant) and type(value.value) is int and value.value in CODES:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {value.value}")
    return found


def test_no_entry_point_writes_an_exit_code_as_a_number():
    """The exit codes are written once, in ExitCode: a `return 2` in an entry point is a second copy."""
    modules = sorted((ROOT / "flows").glob("*.py"))
    assert modules
    found = [hit for m in modules for hit in _literal_codes(m)]
    assert not found, f"use tasks.core.errors.ExitCode instead of a number: {found}"
