# Two commands on a fresh machine: `make run` (the whole pipeline) and `make test` (the test suite).
# `make help` lists every target.
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

.PHONY: setup postgresql chromium run study lint test test-fast test-all ui lock clean help

setup: $(STAMP) ## the .venv from requirements.lock (only when it or pyproject.toml changed)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-compile -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# PostgreSQL for the team-stack tests (tests/test_team_stack.py start their own cluster as an unprivileged
# user): Debian's package, installed only when no initdb is found, so this is a no-op once present.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
postgresql: ## Debian's PostgreSQL for the team-stack tests, with sudo apt-get when initdb is missing
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; }

# Chromium for the MLflow UI test (tests/test_ui.py drives it with Playwright's executable_path): Debian's
# package, installed only when no chromium is found. Never `playwright install`: it downloads browsers.
chromium: ## Debian's Chromium for the MLflow UI test, with sudo apt-get when it is missing
	@command -v chromium >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }

run: setup ## the whole pipeline: dvc repro
	$(BIN)/dvc repro

# The sequence-model study (docs/study.md): 445 queued DVC experiments (89 cells × 5 seeds), at most about 15 h
# on 2 CPU cores (probes stop when solved): run it with STUDY=--gpu, or across machines (STUDY="--shard 1/3
# --stamp S" on each, then STUDY="--collect --stamp S"; docs/study-design.md); STUDY=--quick is a first look in
# under 20 minutes, STUDY=--tune chooses the probes' learning rates first.
STUDY ?=
study: setup ## the sequence-model study, docs/study.md (hours: see seqlm study --dry-run; STUDY=--quick 20 min)
	$(BIN)/seqlm study $(STUDY)

lint: setup ## ruff format --check and ruff check
	$(BIN)/ruff format --check src tests bench pipeline
	$(BIN)/ruff check src tests bench pipeline

test: setup lint postgresql chromium ## lint, then every test but gpu (installs PostgreSQL and Chromium if missing)
	HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -m "not gpu" -q

# The loop to run while editing: it selects no test that needs PostgreSQL, Chromium or an S3 server
# (marker services) or that runs for long (marker slow: whole pipelines, DVC queues, DDP, kill-and-resume),
# so it needs no sudo and ends in under 3 minutes on 2 cores. `make test` still runs them all.
test-fast: setup ## the tests that need no services and are not slow: no sudo, under 3 minutes
	HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not services and not gpu" -q

test-all: setup postgresql chromium ## every test, gpu included
	HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

ui: setup ## the MLflow UI over the project's store on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

lock: setup ## rewrite requirements.lock from the installed .venv
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements.lock

clean: ## remove the pipeline's outputs (data/, models/, reports/)
	rm -rf data models reports

help: ## this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
