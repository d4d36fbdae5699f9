# Two commands on a fresh Debian machine (Python >= 3.11):
#   make demo   install, then run the retrain flow on the demo shop (small profile, minutes)
#   make test   install, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Keep Prefect, DVC and MLflow state inside the project.
export PREFECT_HOME ?= $(CURDIR)/.onevision/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export DVC_SITE_CACHE_DIR ?= $(CURDIR)/.onevision/dvc-site-cache
export DVC_NO_ANALYTICS := 1

.PHONY: install demo demo-small demo-full test test-fast bench bench-quick lint ui-mlflow ui-prefect clean

CHROMEDRIVER := /usr/bin/chromedriver
PG_CLUSTER   := /usr/bin/pg_ctlcluster

install: $(VENV)/.installed $(FMNIST) $(CHROMEDRIVER) $(PG_CLUSTER)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,pretrained,stack]'
	touch $@

# Demo product photos: Fashion-MNIST from Debian (needs root or sudo once).
$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist

# Headless Chromium and its WebDriver: the tests open the visual reports in a real browser.
$(CHROMEDRIVER):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver

# PostgreSQL server binaries: the stack tests start a throwaway cluster on loopback (tests/support/stack.py).
$(PG_CLUSTER):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql

# The first run: the small profile (2,000 items), about 5.5 minutes on 2 idle cores (5 min 22 s on 2026-12-07).
demo: install
	$(BIN)/onevision retrain --profile small --replace-trained

demo-small: demo

# The full demo: the default profile (20,000 items), about 24 minutes on 2 idle cores.
demo-full: install
	$(BIN)/onevision retrain --profile default --replace-trained

# CI (.ci/run) runs `make demo` and then this in the same clone: the tests never read the run state a retrain
# records in params.yaml and dvc.yaml (tests/support/defaults.py).
test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m 'not slow'

# Every comparison side by side on one page (benchmarks/run.py): the full run retrains both profiles in throwaway
# projects and times 10k-1M catalogs (about 50 minutes on 2 cores); the quick run reads this checkout's trained
# project (after make demo) and writes benchmarks/results/run_quick.md (CI).
bench: install
	$(BIN)/python -m benchmarks run

bench-quick: install
	$(BIN)/python -m benchmarks run --quick --root .

lint: install
	$(BIN)/ruff check onevision tests benchmarks

ui-mlflow:
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

ui-prefect:
	$(BIN)/prefect server start --host 127.0.0.1

clean:
	rm -rf data metrics reports plots models mlflow.db mlartifacts .onevision
