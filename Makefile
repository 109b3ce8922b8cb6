# qrmesh: `make run` starts the platform, `make test` tests it.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BUILD := .build
BREAKING_AGAINST ?= main

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "qrmesh needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[local,dev]'
	touch $@

.PHONY: install
install: $(INSTALLED) ## Create .venv and install qrmesh with its tools

.PHONY: gen
gen: $(INSTALLED) ## Regenerate gen/ (Python, .pyi, gRPC stubs, descriptor set) from proto/
	$(BIN)/python tools/genproto.py

.PHONY: check-gen
check-gen: gen ## Fail if gen/ differs from what proto/ generates
	@if [ -n "$$(git status --porcelain -- gen)" ]; then \
	  git status --porcelain -- gen; \
	  echo "gen/ is stale: run 'make gen' and commit the result"; exit 1; \
	fi

$(BUILD)/lint.binpb: $(INSTALLED) $(shell find proto -name '*.proto')
	$(BIN)/python tools/genproto.py --descriptor-only $@

.PHONY: lint
lint: $(BUILD)/lint.binpb ## buf lint and format, ruff, mypy
	$(BIN)/buf lint $(BUILD)/lint.binpb --path qrmesh
	$(BIN)/buf format proto --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

.PHONY: breaking
breaking: $(BUILD)/lint.binpb ## buf breaking against $(BREAKING_AGAINST)
	@rm -rf $(BUILD)/against && mkdir -p $(BUILD)/against
	@if ! git rev-parse --verify --quiet $(BREAKING_AGAINST):proto >/dev/null; then \
	  echo "$(BREAKING_AGAINST) has no proto/ yet: nothing to break"; exit 0; fi; \
	git archive $(BREAKING_AGAINST) proto | tar -x -C $(BUILD)/against; \
	$(BIN)/python tools/genproto.py --proto-root $(BUILD)/against/proto --descriptor-only $(BUILD)/against.binpb; \
	$(BIN)/buf breaking $(BUILD)/lint.binpb --against $(BUILD)/against.binpb --path qrmesh; \
	echo "no breaking changes against $(BREAKING_AGAINST)"

.PHONY: fmt
fmt: $(INSTALLED) ## Format Python and protos in place
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/buf format proto -w

.PHONY: test
test: $(INSTALLED) ## Run the whole test suite against real PostgreSQL, Redis and Envoy
	$(BIN)/pytest

.PHONY: bench
bench: $(INSTALLED) ## Every benchmark beside its baseline; writes BENCHMARKS.md (redirect: apt-get install wrk nginx-light)
	@command -v wrk >/dev/null && { command -v nginx >/dev/null || test -x /usr/sbin/nginx; } || \
		echo "note: the redirect part needs wrk and nginx (sudo apt-get install wrk nginx-light); without them it is not measured"
	$(BIN)/python -m bench --markdown BENCHMARKS.md

.PHONY: bench-%
bench-%: $(INSTALLED) ## One benchmark part, e.g. make bench-redirect
	$(BIN)/python -m bench --only $*

.PHONY: run
run: $(INSTALLED) ## Start PostgreSQL, Valkey, every service and Envoy; Ctrl-C stops them
	$(BIN)/qrmesh run

.PHONY: envoy-config
envoy-config: $(INSTALLED) ## Print the local Envoy configuration
	$(BIN)/qrmesh envoy-config

.PHONY: helm
helm: $(INSTALLED) ## Regenerate the chart's Envoy config; lint, render and validate the chart and the Dockerfile
	$(BIN)/python tools/helm_check.py --write
	$(BIN)/python tools/dockerfile_check.py

.PHONY: ci
ci: check-gen lint test ## What CI runs after installing

.PHONY: clean
clean: ## Remove build outputs (keeps .venv and local data)
	rm -rf $(BUILD) dist .pytest_cache .mypy_cache .ruff_cache
