# The README's two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint typecheck protos check-protos check-system clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "consentauthz needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(VENV)/bin/consentauthz serve

check-system:
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server is required by the test suite: install it with 'sudo apt-get install -y redis-server' (Debian/Ubuntu) or 'brew install redis' (macOS)"; exit 1; }

check-protos: $(STAMP)
	$(PY) scripts/gen_protos.py --check

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: $(STAMP) check-system check-protos lint typecheck
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The benchmark suite (benchmarks/, issue 7): one table on stdout and in docs/performance.md.
# Needs what `make test` needs (redis-server, PostgreSQL on 127.0.0.1:5432). It installs
# py-spy for its profile (without it, the run goes on and says the profile was skipped).
# BENCH_QUICK=1: a scaled-down smoke run of about a minute (it leaves the docs alone).
.PHONY: bench
bench: $(STAMP) check-system
	$(PY) -m pip install --quiet py-spy || echo "py-spy could not be installed: the profile will be skipped"
	BENCH_QUICK=$(BENCH_QUICK) $(PY) -m benchmarks
