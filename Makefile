# linewatch — the two commands a newcomer needs are `make bottle` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
DATA ?= $(SHARED)/datasets
WEIGHTS ?= $(SHARED)/weights/mobilenet_v2_imagenet_dequant.pth

.PHONY: setup bottle test lint unit bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# constraints.txt pins every package (torch 2.15.0 CUDA build, which runs on CPUs too)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

## The main job (for now): train PatchCore on the bottle images and evaluate it.
bottle: setup
	$(BIN)/linewatch train --data $(DATA)/mvtec_bottle --category bottle --out models/bottle \
		--weights $(WEIGHTS) --activation relu
	$(BIN)/linewatch evaluate --model models/bottle --data $(DATA)/mvtec_bottle --category bottle

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check services schemas tests benchmarks
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest -m "not integration"

## The test command CI runs: lint, types, then every test (unit and integration).
test: lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/engine_vs_anomalib.py

clean:
	rm -rf models predictions .pytest_cache .mypy_cache .ruff_cache
