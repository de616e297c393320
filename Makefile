# Skein: every set-up step lives here, so a fresh machine needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTO  := schemas/skein/v1/frames.proto
HOST   ?= 127.0.0.1
PORT   ?= 4433

.PHONY: help install certs proto lint test run demo bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install Skein with its dev extras

certs: $(STAMP)  ## make (or refresh) the development CA and server certificate in certs/
	$(BIN)/python -m gateway.server.certs --dir certs

proto: $(STAMP)  ## regenerate gateway/wire/_pb from schemas/ (pinned compiler: reproducible)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Ischemas \
		--python_out=gateway/wire/_pb --mypy_out=gateway/wire/_pb $(PROTO)

lint: $(STAMP)  ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check gateway loadgen bench tests
	$(BIN)/ruff format --check gateway loadgen bench tests
	$(BIN)/mypy

test: $(STAMP) certs lint  ## lint, type-check and run the tests
	$(BIN)/python -m pytest -q

bench: $(STAMP) certs  ## run the benchmark suite; prints a table, writes bench/results.json
	$(BIN)/python -m bench.run $(BENCH_ARGS)

run: $(STAMP) certs  ## serve on the embedded default (127.0.0.1:4433)
	$(BIN)/skein serve --host $(HOST) --port $(PORT)

clean:  ## remove the venv and caches (keeps certs/)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
