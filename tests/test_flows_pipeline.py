"""flows/pipeline.py without a flow run: its concurrency limit and its command line."""

from __future__ import annotations

import argparse
import contextlib

import pytest

from flows.pipeline import main, workspace_limit


def test_a_local_run_takes_no_global_concurrency_limit():
    # Outside a deployment the limit `pawflow serve` creates does not exist: taking it would warn.
    assert isinstance(workspace_limit(), contextlib.nullcontext)


def test_every_option_of_python_m_flows_pipeline_has_help(monkeypatch: pytest.MonkeyPatch):
    seen: list[argparse.ArgumentParser] = []

    def stop(parser, args=None, namespace=None):
        seen.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(SystemExit):
        main(["-h"])
    (parser,) = seen
    options = [a for a in parser._actions if a.option_strings]
    assert {"--source", "--epochs", "--force", "--no-push", "--until", "--warm-start", "--full-retrain"} <= {
        o for a in options for o in a.option_strings
    }
    assert [a.option_strings for a in options if not (a.help or "").strip()] == []
    assert parser.description and "ingest -> clean" in parser.description
