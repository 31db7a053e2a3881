# linewatch — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
DATA ?= $(SHARED)/datasets
WEIGHTS ?= $(SHARED)/weights/mobilenet_v2_imagenet_dequant.pth

.PHONY: setup triton compose serve demo demo-distributed bottle test lint unit bench browser clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# constraints.txt pins every package (torch 2.15.0 CUDA build, which runs on CPUs too)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

## tritonserver 2.51 (CPU and CUDA, Python backend) unpacked from the PyPI package nvidia-pytriton
## into .triton (about 145 MB; that package pins numpy<2, so it is never installed into the venv).
TRITON_HOME ?= .triton
$(TRITON_HOME)/bin/tritonserver: | $(BIN)/.installed
	$(BIN)/linewatch triton install --home $(TRITON_HOME)

triton: $(TRITON_HOME)/bin/tritonserver

## The main job: a whole synthetic line on this machine, dashboard at http://127.0.0.1:8000 (Ctrl-C stops).
demo: setup
	$(BIN)/linewatch demo --weights $(WEIGHTS) --activation relu $(DEMO_ARGS)

## The dashboard and API again over the demo's records (runs/demo); KEY=... chooses the API key.
serve: setup
	@key="$${KEY:-$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(12))')}"; \
		echo "dashboard: http://127.0.0.1:8000/dashboard/  API key: $$key"; \
		LINEWATCH_API_KEYS="$$key" $(BIN)/linewatch serve --records sqlite:///runs/demo/records.db --blobs file:runs/demo/blobs \
			--labels sqlite:///runs/demo/labels.db

## The distributed line on this machine: a local broker, Triton, producers, two Faust workers, the dashboard.
demo-distributed: setup triton
	$(BIN)/linewatch demo --distributed --workers 2 --parts $(or $(PARTS),200) --weights $(WEIGHTS) --activation relu $(DEMO_ARGS)

## Train PatchCore on the real bottle images and evaluate it.
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

## Debian's Chromium for the dashboard's browser test: installed (said first) when missing and when
## root may; SKIP_BROWSER=1 leaves it out, and that one test is skipped.
browser:
	@command -v chromium >/dev/null || [ -n "$(SKIP_BROWSER)" ] || { [ "$$(id -u)" = 0 ] && \
		echo "make: installing Debian's chromium (about 120 MB) for the dashboard's browser test; SKIP_BROWSER=1 skips it" && \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
		echo "chromium not installed: the dashboard browser test will be skipped"

## Debian's docker-compose 1.29 (no engine comes with it) for tests/test_deploy.py's `config -q`
## check of docker-compose.yml: installed when missing and when root may (SKIP_COMPOSE=1 leaves it out).
compose:
	@command -v docker-compose >/dev/null || [ -n "$(SKIP_COMPOSE)" ] || { [ "$$(id -u)" = 0 ] && \
		echo "make: installing Debian's docker-compose (no Docker engine) to validate docker-compose.yml" && \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose; } || \
		echo "docker-compose not installed: the compose validation test will be skipped"

## The test command CI runs: lint, types, then every test (unit and integration).
test: lint browser compose triton
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/engine_vs_anomalib.py

clean:
	rm -rf models predictions .pytest_cache .mypy_cache .ruff_cache
