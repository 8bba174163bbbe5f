"""What a model directory must hold for its stage, checked when the workflow starts.

A generating model (teacher, student) needs its config, its weights, a tokenizer and a chat template;
an encoder (the BERTScore model) its config, weights and tokenizer. Each missing piece is named with the
files that would provide it, so a bad directory stops the run at start instead of deep in a job.

`load_tokenizer` is how every stage loads a model directory's tokenizer.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from .io import ClinsumError

PURPOSES = ("generate", "encode")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# tokenizer files of transformers' fast, sentencepiece, byte-level BPE, WordPiece and tiktoken tokenizers
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))
# AutoTokenizer options that change which class it picks: with any of them, it picks
AUTO_ONLY = {"use_fast", "tokenizer_type", "trust_remote_code", "gguf_file", "config"}


def _has_weights(directory: Path) -> list[str]:
    """What is missing of the weights: nothing, every weight file, the shards an index lists, or whole copies
    of weight files that are cut short."""
    for index in WEIGHT_INDEXES:
        if (directory / index).exists():
            try:
                shards = sorted(set(json.loads((directory / index).read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, AttributeError):
                return [f"{index} (unreadable: no weight_map)"]
            missing = [f"{shard} (listed in {index})" for shard in shards if not (directory / shard).exists()]
            return missing or broken_weight_files(directory)
    if any(directory.glob("*.safetensors")) or any(directory.glob("*.bin")):
        return broken_weight_files(directory)
    return ["weights (*.safetensors or *.bin)"]


def _weight_file_problem(path: Path) -> str | None:
    """Why a weight file cannot be whole (cut short, not a safetensors or torch file), or None. Reads only its
    header: a safetensors file's JSON header gives where its last tensor ends; a torch .bin is a zip, whose
    directory sits at its very end."""
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{size} bytes, not a safetensors file"
            header_size = struct.unpack("<Q", head)[0]
            try:
                header = json.loads(handle.read(header_size)) if header_size <= size else None
            except ValueError:
                header = None
        if not isinstance(header, dict):
            return "an unreadable safetensors header"
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        expected = 8 + header_size + max(ends, default=0)
        return None if size >= expected else f"cut short: {size:,} of its {expected:,} bytes"
    if not zipfile.is_zipfile(path):
        return f"{size:,} bytes, not a whole torch checkpoint (its zip directory is missing: cut short?)"
    return None


def broken_weight_files(directory: str | Path) -> list[str]:
    """The weight files of a directory that cannot be whole, each with why (a download or copy that stopped)."""
    directory = Path(directory)
    found = []
    for path in sorted([*directory.glob("*.safetensors"), *directory.glob("*.bin")]):
        problem = _weight_file_problem(path)
        if problem:
            found.append(f"a whole {path.name} ({problem})")
    return found


def check_weights(directory: str | Path) -> None:
    """Stop, naming the file, before a stage loads weights that are cut short (a traceback deep in a job else)."""
    broken = broken_weight_files(directory)
    if broken:
        raise ClinsumError(f"{directory}: the model directory lacks {'; '.join(broken)}: copy or download it again")


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


# what transformers 5 calls a tokenizer class that names no model family
GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast", "PythonBackend", "PreTrainedTokenizer"}


def _named_tokenizer_class(config: dict, model_type=None):
    """The class AutoTokenizer would pick from tokenizer_config.json's tokenizer_class (its fast variant first),
    imported alone; None where that needs AutoTokenizer's own resolution (no name, remote code, unknown, or a
    generic class for a model family whose own class AutoTokenizer puts in its place: transformers 5 does so
    for qwen2 and the other families it lists in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS)."""
    import transformers

    name = config.get("tokenizer_class")
    if not isinstance(name, str) or not name or "auto_map" in config:
        return None
    if name in GENERIC_TOKENIZER_CLASSES and isinstance(model_type, str):
        from transformers.models.auto import tokenization_auto

        if model_type in getattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", ()):
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
    """AutoTokenizer.from_pretrained(source, **kwargs), the same tokenizer; for a local directory, the class its
    tokenizer_config.json names is imported alone (AutoTokenizer imports every model family first: a second
    per job)."""
    import transformers

    directory = Path(source)
    if not directory.is_dir() or AUTO_ONLY.intersection(kwargs):
        return transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    model_type = _json_object(directory / "config.json").get("model_type")
    tokenizer_class = _named_tokenizer_class(_json_object(directory / "tokenizer_config.json"), model_type)
    return (tokenizer_class or transformers.AutoTokenizer).from_pretrained(source, **kwargs)


def freeze_lower_layers(model, trainable_layers: int | None, key: str = "train.trainable_layers") -> None:
    """Train only the top `trainable_layers` decoder layers and the final norm (None: every parameter).

    The embeddings (tied to the LM head in small models) and the lower layers stay as they are, so the
    backward pass stops at the first trainable layer: about half the compute of full fine-tuning when few
    layers train. For CPU runs (`key`: the setting, named in the error); the paper trains every parameter.
    """
    if trainable_layers is None:
        return
    layers = model.model.layers
    if not 1 <= trainable_layers <= len(layers):
        raise ClinsumError(f"{key} must lie between 1 and {len(layers)} (the model's layers), got {trainable_layers}")
    model.requires_grad_(False)
    for layer in layers[len(layers) - trainable_layers :]:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)
    if model.config.tie_word_embeddings is False:
        model.lm_head.requires_grad_(True)
