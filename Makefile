# pawflow. `make run`: the whole pipeline on the default dataset. `make test`: the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

# The stage commands in dvc.yaml call `python`: the project's interpreter comes first on PATH.
export PATH := $(BIN):$(PATH)
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 2
# oneDNN, its instruction-set cap and the thread pools are params (params.yaml tensorflow:), applied by
# each stage before TensorFlow starts: they decide the model's bytes.

.DEFAULT_GOAL := help
.PHONY: help install data run test test-fast bench lint format lock clean-cache screenshots plots-template

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs the ~230 pinned packages in ~20 s; pip is the fallback (~2 min).
	@$(PY) -m pip install -q --disable-pip-version-check uv 2>/dev/null || true
	@if [ -x $(BIN)/uv ]; then \
	  $(BIN)/uv pip install -q --python $(PY) --compile-bytecode -c requirements.lock -e '.[dev]'; \
	else \
	  $(PY) -m pip install -q -c requirements.lock -e '.[dev]' && $(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null; \
	fi
	@touch $@

install: $(STAMP) ## create .venv and install pawflow with its pinned dependencies

data: install ## get the photos when ../shared has none: Microsoft's PetImages (~800 MB, sha256-checked, resumable); sets ingest.source
	$(BIN)/pawflow data

run: install ## run the whole pipeline on the default dataset (dvc repro) and push data + model
	$(BIN)/pawflow run

test: install ## run every test (unit + end to end)
	$(PY) -m pytest

test-fast: install ## run the unit tests only
	$(PY) -m pytest -m "not slow"

bench: install ## run the benchmarks (hours: P6, P8, P9 and P10 train models), write bench/results/, regenerate the docs' tables
	@$(BIN)/uv pip install -q --python $(PY) --compile-bytecode -c requirements.lock -e '.[dev,bench]'
	@$(BIN)/uv pip install -q --python $(PY) --compile-bytecode --no-deps imagededup==0.3.3.post2
	$(PY) -m bench.run
	$(PY) -m bench.tables

lint: install ## ruff check + format check + mypy (flows/ and tasks/, configured in pyproject.toml)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

format: install ## ruff fix + format
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

lock: ## re-resolve requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra bench --universal --python-version 3.11 -o requirements.lock

plots-template: install ## rebuild .dvc/plots-offline.html (dvc plots show, offline) from the pinned vl-convert-python
	$(PY) -m tasks.reports.plotsview

screenshots: install ## retake the docs/*.png pictures (a small real run in a temporary copy, ~5 min)
	$(PY) docs/screenshots.py

clean-cache: ## delete the per-photo cache (only costs time on the next run)
	rm -rf .pawflow/cache
