# Local development entry points. `make help` lists them.

# The interpreter .venv is built on: the distribution's /usr/bin/python3 when it is 3.11 or newer
# and can make a venv (Debian's runs the engine 22-32% faster here than a pyenv build: README,
# Speed), else python3 from PATH. `make install PYTHON=...` chooses another. Probed only when a
# rule needs it (making a venv), not on every make.
SYSTEM_PYTHON = $(shell /usr/bin/python3 -c 'import ensurepip, sys; ensurepip.version(); sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && echo /usr/bin/python3)
PYTHON ?= $(or $(SYSTEM_PYTHON),python3)
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependency list changes.
STAMP := $(VENV)/.installed
# The engine's pure hot path, compiled by mypyc into extension modules beside the sources (the
# simulator runs about a third faster: README, Speed). Recompiled whenever one of them changes;
# dunning/__init__.py refuses a module whose source is newer than its compiled build.
COMPILED := dunning/budgets.py dunning/declines.py dunning/engine.py dunning/enums.py dunning/messaging.py dunning/simulate.py dunning/timing.py
COMPILED_STAMP := $(VENV)/.compiled
DATA_DIR := $(or $(DUNNING_DATA_DIR),data)
PYTEST_ARGS ?=
# Debian's headless Chromium for the dashboard's browser test (installed once, by apt).
CHROMIUM := /usr/bin/chromium
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)

.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.PHONY: help install up worker api test histories clean reset-data

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

install: $(STAMP) $(COMPILED_STAMP) ## Create .venv, install the project with test extras, compile the hot path

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Order-only: recreating the interpreter must not force a reinstall by itself.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test,build]'
	touch $@

# In the venv, after the dependencies: mypyc needs their types to compile fast code. Its shared
# runtime goes in the package too (dunning/compiled__mypyc...so), where imports find it.
$(COMPILED_STAMP): $(COMPILED) $(STAMP)
	$(BIN)/python -c 'import sys; from setuptools import setup; from mypyc.build import mypycify; \
		setup(script_args=["build_ext", "--inplace", "--force"], ext_modules=mypycify(sys.argv[1:], group_name="dunning.compiled"))' \
		$(COMPILED)
	touch $@

up: install ## Run Temporal dev server, worker and HTTP service (Ctrl-C stops all)
	$(BIN)/python -m dunning.stack

worker: install ## Run only the worker against TEMPORAL_ADDRESS (default 127.0.0.1:7233)
	$(BIN)/python worker.py

api: install ## Run only the HTTP service against TEMPORAL_ADDRESS (default 127.0.0.1:7233)
	$(BIN)/python starter.py

test: install | $(CHROMIUM) ## Run the whole test suite
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

histories: install ## Re-record tests/histories from the workflow tests (commit the result)
	DUNNING_RECORD_HISTORIES=1 $(BIN)/python -m pytest -p no:cacheprovider tests/workflows/test_dunning_workflow.py

# pip-audit runs from its own venv, so its dependencies are not audited with the engine's.
AUDIT_VENV := .audit-venv
PIP_AUDIT_VERSION := 2.10.1
PIP_AUDIT_ARGS ?=
.PHONY: audit
audit: install ## pip-audit every installed pinned dependency; fails if any could not be checked
	test -x $(AUDIT_VENV)/bin/pip-audit || { $(PYTHON) -m venv $(AUDIT_VENV) && $(AUDIT_VENV)/bin/python -m pip install --disable-pip-version-check -q pip-audit==$(PIP_AUDIT_VERSION); }
	@# --strict: a dependency the vulnerability service cannot answer for fails the audit (no silent pass).
	$(AUDIT_VENV)/bin/pip-audit --strict --skip-editable --progress-spinner off $(PIP_AUDIT_ARGS) \
		--path "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	|| { echo "audit: FAILED. Either a dependency has a known vulnerability (listed above), or pip-audit could not"; \
	     echo "audit: reach a vulnerability service (PyPI's per-release JSON, or OSV with PIP_AUDIT_ARGS='-s osv')"; \
	     echo "audit: and could not check every dependency. Run it where pypi.org or api.osv.dev is reachable."; exit 1; }

# Chaos suite (chaos/run.py): N journeys through a real stack on a temporary data dir while workers
# are killed and the Temporal server restarts; exits 1 on a lost journey, double charge or message.
chaos: N ?= 30
CHAOS_ARGS ?=
.PHONY: chaos
chaos: install ## Chaos suite: N journeys (make chaos N=30), worker kills, server restart, checks
	$(BIN)/python -m chaos --journeys $(N) $(CHAOS_ARGS)

clean: ## Remove build and test caches and the compiled modules (keeps .venv and data)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf build dist *.egg-info .pytest_cache .hypothesis dunning/*.so $(COMPILED_STAMP)

reset-data: ## Delete the data dir (Temporal history, store, logs); stop the stack first
	rm -rf -- '$(DATA_DIR)'
