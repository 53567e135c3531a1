# gptlab: two commands do everything on a fresh machine —
#   make demo   create .venv, then run the whole pipeline offline on CPU (dvc exp run -S profile=demo)
#   make test   the test suite, offline (what .ci/run runs)
# Without make: python3.11 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 &&
#   pip install -e '.[dev]' -c constraints.txt   (README, "Install")
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PYTHON_MIN := 3.11
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

.PHONY: help env tokenizer demo demo-next lint layout test test-fast ui bench constraints clean clean-tracking \
	check-python FORCE

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# The interpreter is checked before anything is created or downloaded (pyproject: requires-python >= 3.11).
check-python:
	@$(PYTHON) -c 'import sys; need = tuple(map(int, "$(PYTHON_MIN)".split("."))); sys.exit(sys.version_info[:2] < need)' \
	  2>/dev/null || { found=$$($(PYTHON) --version 2>/dev/null || echo "not found"); \
	  echo "gptlab needs Python >= $(PYTHON_MIN), PYTHON=$(PYTHON) is $$found: nothing was created or downloaded."; \
	  echo "Fix: install Python $(PYTHON_MIN) (e.g. apt install python$(PYTHON_MIN)-venv), or: make $(MAKECMDGOALS) PYTHON=/path/to/python3.11"; \
	  exit 1; }

# The torch build .venv was made with. A different TORCH_SPEC (e.g. the CUDA wheel index) rebuilds .venv from
# scratch: pip would keep the installed torch, which already satisfies `torch==2.13.0`. A .venv made before this
# file existed is taken to hold the TORCH_SPEC asked for now.
$(VENV)/.torch-spec: FORCE | check-python
	@if [ -f $@ ] && [ "$$(cat $@)" != '$(TORCH_SPEC)' ]; then \
	  echo "TORCH_SPEC changed ($$(cat $@) -> $(TORCH_SPEC)): rebuilding $(VENV)"; rm -rf $(VENV); fi
	@if [ ! -f $@ ]; then mkdir -p $(VENV) && printf '%s\n' '$(TORCH_SPEC)' > $@; \
	  if [ -f $(VENV)/.installed ]; then touch -r $(VENV)/.installed $@; fi; fi

FORCE:

$(VENV)/.installed: pyproject.toml constraints.txt $(VENV)/.torch-spec | check-python
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
	@$(MAKE) --no-print-directory demo-next

# What `make demo` prints at the end; each command runs as printed in a fresh shell once .venv is activated
# (tests/pipeline/test_makefile.py checks that every one exists). The demo registers in its own model,
# gptlab-demo (profiles/demo.yaml), so nothing here touches the team's gptlab@champion.
demo-next:  ## the results table and the next commands (what `make demo` ends with)
	@echo
	@if [ -f reports/report.md ]; then sed -n '/^|/p' reports/report.md; echo; fi
	@echo "In your shell: source $(VENV)/bin/activate   (puts gptlab, dvc and mlflow on PATH; then run these)"
	@echo "Samples:       samples/samples.md"
	@echo "Report:        reports/report.md (table), reports/loss.png (loss curves)"
	@echo "Experiments:   dvc exp show --only-changed   |  dvc metrics show  |  dvc plots show"
	@echo "Registry:      gptlab models   (the demo's own registered model, gptlab-demo)"
	@echo "MLflow UI:     make ui   (http://127.0.0.1:5000, experiment gptlab-demo)"
	@echo "Next:          README.md, \"Compare two experiments and promote the better\""
	@echo "Back to seed:  git checkout params.yaml   (restores the committed params.yaml, profile: seed, that"
	@echo "               dvc exp run edited; it runs nothing: the seed experiment downloads ~24 GB, on a GPU box)"

lint: env  ## ruff: pyflakes, import order, pyupgrade, bugbear (pyproject.toml [tool.ruff])
	$(BIN)/ruff check .

layout: env  ## regenerate the layout section of docs/architecture.md from the folders
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

clean:  ## remove pipeline outputs and checkpoints (keeps the MLflow store, .venv and caches)
	rm -rf data/raw data/tokens data/.*.partial models/final models/checkpoints metrics samples
	rm -f baselines/*.json reports/*.md reports/*.png reports/*.csv

# The tracking store is the run history and the registry (champion included): never part of `make clean`.
TRACKING_STORE := mlflow.db mlartifacts mlruns .gptlab/outbox
clean-tracking:  ## DELETE the MLflow store: every run, the registry, undelivered records (FORCE=1 or confirm)
	@echo "This deletes the project's MLflow store: $(TRACKING_STORE)"
	@echo "(every run and metric, every registered version and alias, records still waiting for \`gptlab sync\`)."
	@if [ "$(FORCE)" != 1 ]; then \
	  read -r -p "Type 'delete' to go on: " answer </dev/tty 2>/dev/null || answer=; \
	  [ "$$answer" = delete ] || { echo "Nothing deleted (make clean-tracking FORCE=1 deletes without asking)"; exit 1; }; fi
	rm -rf $(TRACKING_STORE)
