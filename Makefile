# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates the virtualenv and installs the project (with its pinned ranges) when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo dev test lint bench faults cdc bench-cdc screenshots clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rds_pipeline needs Python 3.11 or newer; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rds-pipeline demo

dev: $(STAMP)
	$(BIN)/rds-pipeline demo --ui

# two workers (pytest-xdist), each with its own servers: about 9 minutes on 2 cores instead of 15
test: lint
	$(BIN)/pytest -n 2

# Faults injected mid-copy into a 1.5M-row sync (source through a real sshd, destination on another server);
# prints one row per fault and writes bench/FAULTS.md. `make test` runs the same suite on 200,000 rows.
faults: $(STAMP)
	FAULT_ROWS=1500000 FAULTS_REPORT=bench/FAULTS.md $(BIN)/pytest rds_pipeline_tests/faults -q -p no:cacheprovider

# Log-based replication at size: one 5,000,000-row transaction within the memory bound (`make test` runs it
# with 300,000 rows). .ci/run runs it after `make test`.
cdc: $(STAMP)
	CDC_BIG_ROWS=5000000 $(BIN)/pytest rds_pipeline_tests/engine/test_cdc_large.py -q -s -p no:cacheprovider

# Log-based against PostgreSQL's own subscriber (1M changes), lag under 5k changes/s: writes bench/CDC.md.
bench-cdc: $(STAMP)
	$(BIN)/python -m bench.bench_cdc
	$(BIN)/python -m bench.bench_snapshot

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# Writes bench/REPORT.md, bench/chart.png and bench/results.json (about 10 minutes on 2 cores).
bench: $(BENCH_STAMP)
	SLING_DISABLE_TELEMETRY=true $(BIN)/python -m bench.run_all

# The Dagster UI on the Pagila demo, in Debian's headless Chromium (apt-get install chromium chromium-driver):
# writes docs/screenshots/*.png, which the README embeds.
screenshots: $(STAMP)
	$(BIN)/python -m tools.screenshots

# ruff's rules and its formatter own the code; mypy checks the package, strictly in the engine
lint: $(STAMP)
	$(BIN)/ruff check rds_pipeline rds_pipeline_tests bench tools
	$(BIN)/ruff format --check rds_pipeline rds_pipeline_tests bench tools
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .demo .dagster_home
