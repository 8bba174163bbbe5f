"""What a model directory must hold for its stage, checked when the workflow starts.

A generating model (teacher, student) needs its config, its weights, a tokenizer and a chat template;
an encoder (the BERTScore model) its config, weights and tokenizer. Each missing piece is named with the
files that would provide it, so a bad directory stops the run at start instead of deep in a job.
"""

from __future__ import annotations

import json
from pathlib import Path

PURPOSES = ("generate", "encode")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# tokenizer files of transformers' fast, sentencepiece, byte-level BPE, WordPiece and tiktoken tokenizers
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))


def _has_weights(directory: Path) -> list[str]:
    """What is missing of the weights: nothing, every weight file, or the shards an index lists."""
    for index in WEIGHT_INDEXES:
        if (directory / index).exists():
            try:
                shards = sorted(set(json.loads((directory / index).read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, AttributeError):
                return [f"{index} (unreadable: no weight_map)"]
            return [f"{shard} (listed in {index})" for shard in shards if not (directory / shard).exists()]
    if any(directory.glob("*.safetensors")) or any(directory.glob("*.bin")):
        return []
    return ["weights (*.safetensors or *.bin)"]


def _has_tokenizer(directory: Path) -> bool:
    if any(directory.glob("*.tiktoken")):
        return True
    return any(all((directory / name).exists() for name in files) for files in TOKENIZER_FILES)


def _has_chat_template(directory: Path) -> bool:
    if (directory / "chat_template.jinja").exists() or (directory / "chat_template.json").exists():
        return True
    config = directory / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def missing_model_files(directory: str | Path, purpose: str) -> list[str]:
    """The files a model directory lacks for `purpose` (generate | encode); empty when complete."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    directory = Path(directory)
    if not directory.is_dir():
        return ["the directory itself"]
    missing = [] if (directory / "config.json").exists() else ["config.json"]
    missing += _has_weights(directory)
    if not _has_tokenizer(directory):
        missing.append("a tokenizer (tokenizer.json, tokenizer.model, vocab.json + merges.txt, vocab.txt or *.tiktoken)")
    if purpose == "generate" and not _has_chat_template(directory):
        missing.append("a chat template (chat_template.jinja, chat_template.json or chat_template in tokenizer_config.json)")
    return missing
