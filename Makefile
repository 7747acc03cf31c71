# The README's two commands: `make app` (start the dashboard) and `make test` (run the tests).
# Both set everything up on a fresh Debian machine: Debian packages (when root), a virtual environment
# with the pinned packages and the CPU build of torch, and this project installed in it.
#   make app TORCH=cuda        the CUDA build of torch instead (PyPI's default on Linux, several GB)
#   make setup DRY_RUN=1       show what the set-up would install, and from where; install nothing
#   make setup TORCH_INDEX=URL a mirror of PyTorch's CPU wheel index
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed-$(TORCH)
PORT ?= 8501
IMAGE ?= locality-explorer
# e.g. make image BUILD_ARGS='--build-arg PRECOMPUTE="python -m locality_core precompute fashion-mnist --all"'
BUILD_ARGS ?=
CONTAINER ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null || echo docker)

.PHONY: app test test-fast lint bench setup system clean-cache image

setup: system $(STAMP)

system:
	@bash scripts/setup_system.sh

ifdef DRY_RUN
.PHONY: $(STAMP)
$(STAMP):
	$(PYTHON) scripts/setup_venv.py --venv $(VENV) --torch $(TORCH) --cpu-index $(TORCH_INDEX) --dry-run
else
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) scripts/setup_venv.py --venv $(VENV) --torch $(TORCH) --cpu-index $(TORCH_INDEX)
	@rm -f $(VENV)/.installed-* && touch $(STAMP)
endif

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

# The container image (Dockerfile; `docker` or `podman`). scripts/check_image.sh builds and checks it.
image:
	$(CONTAINER) build $(if $(findstring podman,$(CONTAINER)),--format docker) $(BUILD_ARGS) -t $(IMAGE) .

clean-cache:
	rm -rf $${LOCALITY_CACHE_DIR:-$$HOME/.cache/locality-explorer}
