# e2ekit: `make demo` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all reliability lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/e2ekit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# Kills, disk full, reader fuzzing, server fuzzing and load, hostile folders: one table
# (about 20 minutes on 2 cores; docs/reliability.md).
reliability: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[reliability]"
	$(BIN)/python -m reliability

lint: $(STAMP)
	$(BIN)/ruff check src tests reliability $(wildcard benchmarks)
	$(BIN)/ruff format --check src tests reliability $(wildcard benchmarks)

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks reliability
	$(BIN)/ruff check --fix src tests benchmarks reliability

bench: $(STAMP)
	@for script in benchmarks/*/bench_*.py benchmarks/bench_*.py; do \
		[ -f "$$script" ] || continue; echo "== $$script"; $(BIN)/python "$$script" || exit 1; \
	done

clean:
	rm -rf runs .pytest_cache build *.egg-info src/*.egg-info
