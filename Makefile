# Everything a newcomer runs installs what it needs into .venv from a bare checkout.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint schemas conformance bench mutate clean

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
	$(BIN)/ruff check src tests benchmarks examples mutation
	$(BIN)/ruff format --check src tests benchmarks examples mutation
	$(BIN)/mypy

schemas: install  ## regenerate tool_schemas/, docs/tools.md and the served schemas from the registry
	$(BIN)/scalemule schemas

conformance: install  ## the MCP conformance suite's server scenarios over HTTP (installs the suite with npm into .conformance/)
	$(BIN)/python -m tests.e2e.conformance

# BENCH_ARGS: e.g. --quick, --only latency,http, --stores sqlite (see benchmarks/README.md).
bench: install  ## every performance target: ratio to the SDK's floor measured in the same run, PASS/OVER
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/jobs_throughput.py
	$(BIN)/python benchmarks/audit_verify.py

# The mutants' test stores live in memory where the system offers it: they need no durability, and
# fsync on a busy disk costs more than most mutants' tests.
MUTATE_TMP ?= $(if $(wildcard /dev/shm/.),/dev/shm,$(or $(TMPDIR),/tmp))

$(BIN)/.mutmut-installed: $(BIN)/.installed Makefile
	$(BIN)/pip install --quiet "mutmut==3.8.0" "pytest-timeout==2.4.0"
	touch $@

mutate: $(BIN)/.mutmut-installed  ## mutation score of the security core (mutation/README.md); not part of `make test`
	rm -rf mutants
	PYTHONPATH=$(CURDIR)/mutation TMPDIR=$(MUTATE_TMP) $(BIN)/mutmut run --max-children $(or $(MUTATE_JOBS),2)
	$(BIN)/python mutation/report.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants .conformance
