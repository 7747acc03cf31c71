# The README's two commands: `make app` (start the dashboard) and `make test` (run the tests).
# Both set everything up on a fresh Debian machine: Debian packages (when root), a virtual environment
# with the pinned packages, and this project installed in it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: app test test-fast lint bench setup system clean-cache

setup: system $(STAMP)

system:
	@bash scripts/setup_system.sh

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

app: setup
	$(BIN)/streamlit run serve.py --server.port $(PORT)

test: setup lint
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not browser"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python scripts/lint_imports_inside.py

bench: setup
	$(BIN)/python scripts/bench_core.py

clean-cache:
	rm -rf $${LOCALITY_CACHE_DIR:-$$HOME/.cache/locality-explorer}
