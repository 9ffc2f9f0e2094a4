"""flows/logs.py: `pawflow logs` follows a flow run's log lines, its subflows' included, from the API,
and ends with the run's outcome."""

from __future__ import annotations

import logging

import pytest
from prefect import flow, get_run_logger

from flows import logs


@flow(name="logs-child")
def child(n: int) -> int:
    for epoch in range(1, n + 1):
        get_run_logger().info("epoch %d/%d: loss 0.%d", epoch, n, 9 - epoch)
    return n


@flow(name="logs-parent")
def parent(fail: bool) -> int:
    get_run_logger().info("no new data? no: 3 photos arrived")
    child(3)
    if fail:
        raise RuntimeError("the source went away")
    return 3


def finished_run(fail: bool):
    from conftest import drain_prefect_workers

    state = parent(fail, return_state=True)
    drain_prefect_workers()  # the log lines are in the API before we read them
    return state.state_details.flow_run_id


def test_follow_prints_the_runs_and_its_subflows_lines_and_its_outcome(prefect_server: str):
    run_id = finished_run(fail=False)
    lines: list[str] = []
    assert logs.follow(str(run_id), lines.append, poll_s=0.2, drain_s=0.5) == 0
    text = "\n".join(lines)
    assert "no new data? no: 3 photos arrived" in text
    assert [line.split(" | ")[1] for line in lines if "epoch" in line] == [
        "epoch 1/3: loss 0.8",
        "epoch 2/3: loss 0.7",
        "epoch 3/3: loss 0.6",
    ]
    assert len(lines) == len(set(lines))  # each line once
    assert lines[-1].endswith(": Completed")


def test_a_failed_run_ends_with_its_reason_and_exit_1(prefect_server: str):
    run_id = finished_run(fail=True)
    lines: list[str] = []
    assert logs.follow(str(run_id), lines.append, poll_s=0.2, drain_s=0.5) == 1
    assert "the source went away" in "\n".join(lines)
    assert "Failed" in lines[-1]


def test_an_unknown_run_is_one_message(prefect_server: str):
    from tasks.core.errors import PawflowError

    with pytest.raises(PawflowError, match="no flow run 'no-such-run'"):
        logs.follow("no-such-run", logging.info)
