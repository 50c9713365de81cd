# The README's two commands: `make run` and `make test`. Everything else is a helper.
#
# Installs are reproducible: `make run` and `make test` install the exact versions (with
# their hashes) in requirements/run.lock and requirements/test.lock, so a release upstream
# never changes what a fresh clone gets. pyproject.toml keeps the compatible ranges for
# people who `pip install` the package. `make lock` re-resolves both lock files to the
# newest releases those ranges allow; `make test-latest` runs the suite on the newest
# releases without a lock, to find upgrades before `make lock` takes them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_LOCK := requirements/run.lock
TEST_LOCK := requirements/test.lock
RUN_STAMP := $(VENV)/.run-$(shell cat $(RUN_LOCK) pyproject.toml | cksum | cut -d' ' -f1)
TEST_STAMP := $(VENV)/.test-$(shell cat $(TEST_LOCK) pyproject.toml | cksum | cut -d' ' -f1)
# node-casbin for the parity test (tests/node): `npm ci` from its committed package-lock.json.
NODE_DIR := tests/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed-$(shell cat $(NODE_DIR)/package-lock.json | cksum | cut -d' ' -f1)
LATEST_VENV := .venv-latest
LOCK_VENV := .venv-lock
UV_VERSION := 0.13.8
UV_COMPILE := $(LOCK_VENV)/bin/uv pip compile pyproject.toml requirements/build.in \
	--universal --python-version 3.11 --generate-hashes --quiet

.PHONY: run test suite test-latest lock lint typecheck protos check-protos check-system \
	check-python clean

check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "consentauthz needs Python 3.11 or newer")'

# The lock first (hash-checked: a file whose hash is not in the lock is refused), then the
# project itself, without dependencies and without a build environment of its own (its
# build tools are in the lock too).
define install_locked
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r $(1)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
endef

$(RUN_STAMP): $(RUN_LOCK) pyproject.toml | check-python
	$(call install_locked,$(RUN_LOCK))
	rm -f $(VENV)/.run-*
	touch $@

$(TEST_STAMP): $(TEST_LOCK) pyproject.toml | check-python
	$(call install_locked,$(TEST_LOCK))
	rm -f $(VENV)/.test-* $(VENV)/.run-*
	# The test set holds the run set at the same versions: `make run` needs nothing more.
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/consentauthz serve

check-system:
	@command -v redis-server >/dev/null 2>&1 || { echo "redis-server is required by the test suite: install it with 'sudo apt-get install -y redis-server' (Debian/Ubuntu) or 'brew install redis' (macOS)"; exit 1; }
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { echo "node and npm are required by the test suite (node-casbin parity): install them with 'sudo apt-get install -y nodejs npm' (Debian/Ubuntu) or 'brew install node' (macOS)"; exit 1; }

$(NODE_STAMP): $(NODE_DIR)/package-lock.json | check-system
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	touch $@

check-protos: $(TEST_STAMP)
	$(PY) scripts/gen_protos.py --check

protos: $(TEST_STAMP)
	$(PY) scripts/gen_protos.py

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests scripts benchmarks

typecheck: $(TEST_STAMP)
	$(VENV)/bin/mypy

test: $(TEST_STAMP) check-system $(NODE_STAMP)
	@$(MAKE) --no-print-directory suite

# The whole suite in whatever venv VENV names (test and test-latest share it).
suite:
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest

test-latest: check-python check-system $(NODE_STAMP)
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet --upgrade pip setuptools wheel
	$(LATEST_VENV)/bin/pip install --quiet --upgrade -e '.[test]'
	$(LATEST_VENV)/bin/pip list --format=freeze > $(LATEST_VENV)/versions.txt
	@echo "newest releases installed: $(LATEST_VENV)/versions.txt"
	@$(MAKE) --no-print-directory suite VENV=$(LATEST_VENV)

$(LOCK_VENV)/bin/uv: | check-python
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet uv==$(UV_VERSION)

# The test set is resolved first; the run set is constrained to it, so the two agree on
# every version they share.
lock: $(LOCK_VENV)/bin/uv
	$(UV_COMPILE) --upgrade --extra test -o $(TEST_LOCK)
	$(UV_COMPILE) --upgrade -c $(TEST_LOCK) -o $(RUN_LOCK)

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The benchmark suite (benchmarks/, issue 7): one table on stdout and in docs/performance.md.
# Needs what `make test` needs (redis-server, PostgreSQL on 127.0.0.1:5432). It installs
# py-spy for its profile (without it, the run goes on and says the profile was skipped).
# BENCH_QUICK=1: a scaled-down smoke run of about a minute (it leaves the docs alone).
.PHONY: bench
bench: $(TEST_STAMP) check-system
	$(PY) -m pip install --quiet py-spy==0.4.3 || echo "py-spy could not be installed: the profile will be skipped"
	BENCH_QUICK=$(BENCH_QUICK) $(PY) -m benchmarks
