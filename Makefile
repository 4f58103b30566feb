# Local development entry points. `make help` lists them.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the dependency list changes.
STAMP := $(VENV)/.installed
DATA_DIR := $(or $(DUNNING_DATA_DIR),data)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.PHONY: help install up worker api test histories clean reset-data

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install the project with test extras

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Order-only: recreating the interpreter must not force a reinstall by itself.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	touch $@

up: install ## Run Temporal dev server, worker and HTTP service (Ctrl-C stops all)
	$(BIN)/python -m dunning.stack

worker: install ## Run only the worker against TEMPORAL_ADDRESS (default 127.0.0.1:7233)
	$(BIN)/python worker.py

api: install ## Run only the HTTP service against TEMPORAL_ADDRESS (default 127.0.0.1:7233)
	$(BIN)/python starter.py

test: install ## Run the whole test suite
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

histories: install ## Re-record tests/histories from the workflow tests (commit the result)
	DUNNING_RECORD_HISTORIES=1 $(BIN)/python -m pytest -p no:cacheprovider tests/workflows/test_dunning_workflow.py

clean: ## Remove build and test caches (keeps .venv and data)
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf build dist *.egg-info .pytest_cache .hypothesis

reset-data: ## Delete the data dir (Temporal history, store, logs); stop the stack first
	rm -rf -- '$(DATA_DIR)'
