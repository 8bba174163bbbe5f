"""What a model directory must hold for its stage, checked when the workflow starts.

A generating model (teacher, student) needs its config, its weights, a tokenizer and a chat template;
an encoder (the BERTScore model) its config, weights and tokenizer. Each missing piece is named with the
files that would provide it, so a bad directory stops the run at start instead of deep in a job.

`load_tokenizer` is how every stage loads a model directory's tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

PURPOSES = ("generate", "encode")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# tokenizer files of transformers' fast, sentencepiece, byte-level BPE, WordPiece and tiktoken tokenizers
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))
# the model types whose saved tokenizers transformers 4.57 may really need to patch (its own list)
MISTRAL_TYPES = ("mistral", "mistral3", "voxtral", "ministral", "pixtral")
# AutoTokenizer options that change which class it picks: with any of them, it picks
AUTO_ONLY = {"use_fast", "tokenizer_type", "trust_remote_code", "gguf_file", "config"}


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


def _json_object(path: Path) -> dict:
    """A JSON file's object; {} for a file that is missing, unreadable or not an object."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _has_chat_template(directory: Path) -> bool:
    if (directory / "chat_template.jinja").exists() or (directory / "chat_template.json").exists():
        return True
    return bool(_json_object(directory / "tokenizer_config.json").get("chat_template"))


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


def _named_tokenizer_class(config: dict):
    """The class AutoTokenizer would pick from tokenizer_config.json's tokenizer_class (its fast variant first),
    imported alone; None where that needs AutoTokenizer's own resolution (no name, remote code, unknown)."""
    import transformers

    name = config.get("tokenizer_class")
    if not isinstance(name, str) or not name or "auto_map" in config:
        return None
    for candidate in (name if name.endswith("Fast") else f"{name}Fast", name):
        try:
            found = getattr(transformers, candidate)
        except (AttributeError, ImportError):
            continue
        if isinstance(found, type) and issubclass(found, transformers.PreTrainedTokenizerBase):
            return found
    return None


def load_tokenizer(source: str | Path, **kwargs):
    """AutoTokenizer.from_pretrained(source, **kwargs), the same tokenizer, with two differences for a local
    directory: the class its tokenizer_config.json names is imported alone (AutoTokenizer imports every model
    family first: a second per job), and transformers 4.57's warning that a tokenizer has "an incorrect regex
    pattern", which it prints for every local model saved by transformers 4.57.3 to 4.x whatever its family, is
    left to the Mistral families it is about."""
    import transformers

    directory = Path(source)
    if not directory.is_dir() or AUTO_ONLY.intersection(kwargs):
        return transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    model_type = _json_object(directory / "config.json").get("model_type")
    silence = isinstance(model_type, str) and model_type not in MISTRAL_TYPES and "fix_mistral_regex" not in kwargs
    silence = silence and hasattr(transformers.PreTrainedTokenizerBase, "_patch_mistral_regex")
    if silence:
        kwargs["fix_mistral_regex"] = False
    tokenizer_class = _named_tokenizer_class(_json_object(directory / "tokenizer_config.json"))
    tokenizer = (tokenizer_class or transformers.AutoTokenizer).from_pretrained(source, **kwargs)
    if silence:
        tokenizer.init_kwargs.pop("fix_mistral_regex", None)  # not a setting of the tokenizer: not saved with it
    return tokenizer
