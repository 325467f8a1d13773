# featsieve — the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv tools demo test test-fast mutants lint kafka-up kafka-down kafka-status bench clean

help:
	@echo "make demo        set up, start local Kafka, generate a stream, run the daemon, show the mask vs ground truth"
	@echo "make test        set up, start local Kafka, run the whole test suite"
	@echo "make test-fast   unit tests only (no broker)"
	@echo "make mutants     the meta-check: each formerly unfalsifiable test fails on a build broken for it"
	@echo "make lint        ruff, import contracts, mypy"
	@echo "make kafka-up | kafka-down | kafka-status"

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# featsieve-client first: the daemon depends on it, and it is installed from ./client
	$(BIN)/pip install -q -e ./client
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

tools:
	@scripts/install-tools

kafka-up:
	@scripts/kafka up
kafka-down:
	@scripts/kafka down
kafka-logs:
	@scripts/kafka logs
kafka-status:
	@scripts/kafka status

demo: venv tools
	@scripts/demo

test: venv tools
	@scripts/test

test-fast: venv
	$(BIN)/pytest -m "not broker and not slow and not prometheus" -q

mutants: venv tools
	@scripts/test tests/test_mutants.py

lint: venv
	$(BIN)/ruff check daemon connectors models tests client
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: venv tools
	@scripts/kafka up
	$(BIN)/featsieve bench e2e

clean:
	rm -rf demo-out .pytest_cache .mypy_cache .ruff_cache
