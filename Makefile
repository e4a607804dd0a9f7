# Everything a newcomer runs installs what it needs into .venv from a bare checkout.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint schemas bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install  ## MenuGen walkthrough: a real MCP client drives `scalemule serve` over stdio
	$(BIN)/python examples/menugen.py

test: install  ## the whole suite on SQLite and PostgreSQL
	$(BIN)/pytest

lint: install  ## ruff and strict mypy over src
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

schemas: install  ## regenerate tool_schemas/ and docs/tools.md from the registry
	$(BIN)/scalemule schemas

# BENCH_ARGS: e.g. --quick, --only latency,http, --stores sqlite (see benchmarks/README.md).
bench: install  ## every performance target: ratio to the SDK's floor measured in the same run, PASS/OVER
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/jobs_throughput.py
	$(BIN)/python benchmarks/audit_verify.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
