# Skein: every set-up step lives here, so a fresh machine needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTO  := schemas/skein/v1/frames.proto
HOST   ?= 127.0.0.1
PORT   ?= 4433

.PHONY: help install certs proto lint test test-under-load test-browser chromium fuzz run demo bench bench-flat profile soak clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,loadgen]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install Skein with its dev and loadgen extras

certs: $(STAMP)  ## make (or refresh) the development CA and server certificate in certs/
	$(BIN)/python -m gateway.server.certs --dir certs

proto: $(STAMP)  ## regenerate gateway/wire/_pb from schemas/ (pinned compiler: reproducible)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m grpc_tools.protoc -Ischemas \
		--python_out=gateway/wire/_pb --mypy_out=gateway/wire/_pb $(PROTO)

lint: $(STAMP)  ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check gateway loadgen bench tests
	$(BIN)/ruff format --check gateway loadgen bench tests
	$(BIN)/mypy

# The browser tests run in `make test` (~10 s; installing chromium the first time ~25 s). Without
# chromium (no root, no apt) they are skipped with the reason instead of failing the run.
test: $(STAMP) certs lint  ## lint, type-check and run the tests (the browser tests included), then the end-to-end tests again on the qh3 QUIC engine
	@sh scripts/ensure-chromium.sh || echo "make test: no chromium: the browser tests will be skipped"
	$(BIN)/python -m pytest -q
	SKEIN_QUIC_ENGINE=qh3 $(BIN)/python -m pytest -q tests/e2e tests/test_engine.py

test-under-load: $(STAMP)  ## make test 3 times in a row while a bounded burner keeps one core busy (RUNS=3)
	$(BIN)/python scripts/under_load.py --runs $(or $(RUNS),3) -- $(MAKE) test

fuzz: $(STAMP)  ## fuzz the decoder and the hub: 100,000 cases per test (about an hour)
	SKEIN_FUZZ=1 $(BIN)/python -m pytest -q tests/fuzz

bench: $(STAMP) certs  ## run the benchmark suite; prints a table, writes bench/results.json
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-flat: $(STAMP) certs  ## latency flat over 5 minutes? 200 x 100 msgs/s, p50/p99 per 10 s (FLAT_ARGS="--engine qh3")
	$(BIN)/python -m bench.flat $(FLAT_ARGS)

profile: $(STAMP) certs  ## where the gateway's CPU goes per delivered message (py-spy; PROFILE_ARGS="--engine qh3")
	$(BIN)/python -m bench.profile $(PROFILE_ARGS)

soak: $(STAMP) certs  ## soak the gateway (~9 min): kill -9 + restart, 5% loss, slow consumers; then 20 kill -9s between publish and retry, and slow-reader attacks; fails on a lost acked reliable message, a duplicate, or rising memory
	$(BIN)/python -m loadgen.soak $(SOAK_ARGS)
	SKEIN_SOAK=1 $(BIN)/python -m pytest -q -s tests/soak

demo: $(STAMP) certs  ## the main job: gateway + a load run across network handoffs (migration vs reconnect), report and plot
	$(BIN)/python -m loadgen.demo

chromium:  ## install Debian's chromium (for the browser tests) if it is missing; needs root
	@sh scripts/ensure-chromium.sh

test-browser: $(STAMP) certs chromium  ## only the browser tests: the chat page in headless Chromium (results/browser.png)
	SKEIN_BROWSER_SCREENSHOT=results/browser.png $(BIN)/python -m pytest -q tests/browser

run: $(STAMP) certs  ## serve on the embedded default (127.0.0.1:4433)
	$(BIN)/skein serve --host $(HOST) --port $(PORT)

clean:  ## remove the venv and caches (keeps certs/)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
