# Two commands on a fresh machine: `make run` (the whole pipeline) and `make test` (the test suite).
# Set-up is idempotent: the venv is rebuilt only when requirements.lock or pyproject.toml change.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export PATH := $(CURDIR)/$(BIN):$(PATH)
# pip installs with --no-compile (make setup 2 min faster); each module is compiled to .pyc on its first
# import instead. A PYTHONDONTWRITEBYTECODE=1 inherited from the caller would make every later process
# compile again: importing torch, lightning and mlflow took 42 s of CPU without .pyc files, 15 s with them.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup postgresql chromium run study lint test test-all ui lock clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-compile -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# PostgreSQL for the team-stack tests (tests/test_team_stack.py start their own cluster as an unprivileged
# user): Debian's package, installed only when no initdb is found, so this is a no-op once present.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; }

# Chromium for the MLflow UI test (tests/test_ui.py drives it with Playwright's executable_path): Debian's
# package, installed only when no chromium is found. Never `playwright install`: it downloads browsers.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }

run: setup
	$(BIN)/dvc repro

# The sequence-model study (docs/study.md): 81 queued DVC experiments (27 cells × 3 seeds), under 90 minutes
# on 2 CPU cores; `seqlm study --quick` is a first look in under 20, `seqlm study --gpu` the GPU path.
study: setup
	$(BIN)/seqlm study

lint: setup
	$(BIN)/ruff format --check src tests bench pipeline
	$(BIN)/ruff check src tests bench pipeline

test: setup lint postgresql chromium
	HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -m "not gpu" -q

test-all: setup postgresql chromium
	HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

lock: setup
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements.lock

clean:
	rm -rf data models reports
