# pmsctl: run `make help` for the targets. Every target sets up .venv first when it is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRACTICES ?= practices

.PHONY: help setup run test test-fast testenv check lint typecheck crds check-crds bench soak clean

help: ## Show the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pmsctl needs Python 3.11 or newer")'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install pmsctl with its dev tools

run: setup ## Set everything up and run the main job: pmsctl up --simulate on practices/
	$(BIN)/pmsctl up --simulate $(PRACTICES)

testenv: ## Build etcd, kube-apiserver and kubectl from pinned Go modules (cached in ~/.cache/pmsctl)
	@hack/testenv/build.sh >/dev/null

test: setup testenv ## Run every test, against a real kube-apiserver from the testenv
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup ## Run the tests that need no API server
	$(BIN)/pytest -m "not kube" $(PYTEST_ARGS)

crds: setup ## Generate crds/ from schemas/
	$(BIN)/python -m reconciler.api.crdgen --write

check-crds: setup ## Fail when crds/ differs from what the generator writes
	$(BIN)/python -m reconciler.api.crdgen --check

lint: setup ## ruff (lint and format check), mypy strict, import-linter layering contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

check: check-crds lint ## Everything a pull request must pass besides the tests

bench: setup ## Run the benchmarks in bench/ (minutes; figures go in the README)
	$(BIN)/python bench/run_all.py

soak: setup ## Soak change capture: 10,000+ hostile changes per PMS, lost/doubled counts (minutes)
	$(BIN)/python bench/soak_capture.py $(SOAK_ARGS)

clean: ## Remove .venv and caches (not the testenv cache in ~/.cache/pmsctl)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .pmsctl
