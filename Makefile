# gptlab: two commands do everything on a fresh machine —
#   make demo   create .venv, then run the whole pipeline offline on CPU (dvc exp run -S profile=demo)
#   make test   the test suite, offline (what .ci/run runs)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
# torch goes in first and on its own: a bare `torch` requirement pulls a multi-GB CUDA build on CPU boxes.
# On a GPU box, `make env TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH_SPEC ?= torch==2.13.0
# GPT-2's BPE for offline machines: the openai-whisper sdist on PyPI ships it (sha256 checked on seeding).
BPE_SDIST := openai-whisper==20250625
BPE_ARCHIVE := .cache/pkgs/openai_whisper-20250625.tar.gz

export PATH := $(BIN):$(PATH)
export TIKTOKEN_CACHE_DIR ?= $(CURDIR)/.cache/tiktoken
export MLFLOW_DISABLE_TELEMETRY ?= true
export DVC_NO_ANALYTICS ?= 1
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_LEVEL ?= WARNING
export GIT_PYTHON_REFRESH ?= quiet

.PHONY: help env tokenizer demo lint layout test test-fast ui bench constraints clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

env: $(VENV)/.installed  ## create .venv (torch first, then gptlab and its tools)

$(BPE_ARCHIVE): | $(VENV)/.installed
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: $(BPE_SDIST) -d $(dir $@)

$(TIKTOKEN_CACHE_DIR)/.seeded: $(BPE_ARCHIVE)
	$(BIN)/gptlab seed-tokenizer $(BPE_ARCHIVE)
	touch $@

tokenizer: $(TIKTOKEN_CACHE_DIR)/.seeded  ## put GPT-2's BPE into .cache/tiktoken (offline tokenization)

demo: env tokenizer  ## run the whole pipeline offline on CPU (demo profile), then say where to look
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "make demo needs a git checkout: DVC records experiments in git"; exit 1; }
	HF_HUB_OFFLINE=1 $(BIN)/dvc exp run -S profile=demo
	@echo
	@cat reports/report.md | sed -n '/^|/p'
	@echo
	@echo "Samples:      samples/samples.md"
	@echo "Report:       reports/report.md (table), reports/loss.png (loss curves)"
	@echo "Metrics:      dvc metrics show    |  dvc plots show"
	@echo "MLflow UI:    make ui   (http://127.0.0.1:5000: runs, metrics, artifacts, registry)"
	@echo "Promote:      $(VENV)/bin/gptlab promote --alias champion"
	@echo "Back to seed: dvc exp run -S profile=seed   (or: git checkout params.yaml)"

lint: env  ## ruff: pyflakes, import order, pyupgrade, bugbear (pyproject.toml [tool.ruff])
	$(BIN)/ruff check .

layout: env  ## regenerate README.md's layout section from the folders
	$(BIN)/python tests/layout.py --write

test: env tokenizer lint  ## lint, then the whole test suite, offline (slow tests included, as in CI)
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken"; exit 1; fi; exit $$rc

test-fast: env tokenizer  ## the suite without tests marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

ui: env  ## MLflow UI on 127.0.0.1:5000 over the project's store
	$(BIN)/gptlab ui

bench: env tokenizer  ## speed and memory benchmarks (tables; not part of make test)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

constraints: env  ## re-pin constraints.txt to what .venv holds
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:  ## remove pipeline outputs and the MLflow store (not .venv or caches)
	rm -rf data/raw data/tokens data/.*.partial models/final models/checkpoints metrics samples mlflow.db mlartifacts
	rm -f baselines/*.json reports/*.md reports/*.png reports/*.csv
