# PulseBMS command surface. `make help` lists the targets.
#
# Every target that needs Python first builds .venv (once, again when pyproject.toml
# changes). The CPU build of torch is installed pinned BEFORE the project, so that no
# dependency can pull a multi-GB GPU build.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k shield"`.
PYTEST_ARGS ?=
# Two workers: CI has 2 cores.
PYTEST_WORKERS ?= 2

export PYTHONHASHSEED := 0
export WANDB_MODE ?= offline
export MPLBACKEND := Agg
export RAY_USAGE_STATS_ENABLED := 0

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format type bench bench-full clean

help:  ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-11s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=69" wheel
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $@

install: $(VENV)/.installed  ## Create .venv: pinned CPU torch, then pulsebms[all] (editable).

demo: install  ## End-to-end run on the embedded default: env, shielded training, evaluation, export, edge runtime on a simulated CAN bus; then the site loop over MQTT (pulsebms-fleet up).
	$(BIN)/pulsebms-demo
	$(BIN)/pulsebms-fleet up

test: install  ## The whole test suite, slow learning tests included (what CI runs).
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install  ## The suite without tests marked slow.
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: install  ## ruff lint + format check.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## Apply ruff's fixes and formatting.
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

PACKAGES := core envs safety agents experiments configs export edge_runtime hil benchmarks services
type: install  ## mypy over pulsebms.* (strict for safety, export, edge_runtime, hil).
	@rm -rf build/typecheck && mkdir -p build/typecheck/pulsebms
	@for d in $(PACKAGES); do ln -s ../../../$$d build/typecheck/pulsebms/$$d; done
	@ln -s ../../../_pulsebms/__init__.py ../../../_pulsebms/py.typed build/typecheck/pulsebms/
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p pulsebms

bench: install  ## Benchmarks, quick settings (prints figures; last line RESULT {json}).
	$(BIN)/pulsebms-bench all --quick

bench-full: install  ## Benchmarks at the issue's full settings (minutes).
	$(BIN)/pulsebms-bench all

clean:  ## Remove the venv and caches.
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis outputs multirun
