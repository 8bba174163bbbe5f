"""Scoring protocols: named sets of ROUGE and BERTScore settings, each part overridable in config.

`evaluate.protocol` names one; a part the config's `evaluate` section gives replaces the protocol's, and
the evaluation records which parts differ from the protocol (`overrides`), so the report names both.

- `paper`: the paper's Table 4 code (distil-tuning-llm, `analysis/evaluate_test_unofficial.py`, through
  Hugging Face `evaluate`): rouge-score with its defaults, BERTScore with distilbert-base-uncased, layer 5
  (bert-score's choice for it), no rescaling.
- `multiclinsum2026`: the organisers' public scorer (nlp4bia-bsc/classic-mcs2-eval): rouge-score
  ROUGE-1/2/Lsum F1 with no stemmer and the default tokenizer, per document, averaged; BERTScore F1 with
  microsoft/mdeberta-v3-base, 12 layers, no baseline rescaling, inputs truncated to 512 tokens, F1 clamped
  to [0, 1].
- `multiclinsum2025`: ROUGE-Lsum F1 (the official metric) and BERTScore with bert-score's per-language
  default encoders (roberta-large for English, bert-base-multilingual-cased otherwise). The encoders are
  not stated by the organisers: inferred from the official results (English about 85.6, the other
  languages about 73).

A per-language part is a mapping {lang: value, "other": value} (`other` for every language not named).
A part given as null (None) is the protocol's: a configuration file merged over one that overrides a
part can give the protocol's value back.
"""

from __future__ import annotations

import copy

from .io import ClinsumError
from .settings import parse_settings

# The Table 4 columns every protocol computes; `official` names those the protocol's own scorer reports.
ALL_COLUMNS = (
    "bertscore_p", "bertscore_r", "bertscore_f", "rouge1_f", "rouge2_f", "rougeL_f", "rougeLsum_f",
)

PROTOCOLS = {
    "paper": {
        "description": "the paper's Table 4 code (Hugging Face evaluate: rouge-score, bert-score)",
        "rouge_tokenizer": "default",
        "rouge_stemmer": False,
        "bertscore": {
            "model": "distilbert/distilbert-base-uncased",
            "num_layers": 5,
            "max_tokens": None,
            "clamp": False,
        },
        "official": list(ALL_COLUMNS),
        "headline": "rougeLsum_f",
    },
    "multiclinsum2026": {
        "description": "the MultiClinSum-2 organisers' scorer (nlp4bia-bsc/classic-mcs2-eval)",
        "rouge_tokenizer": "default",
        "rouge_stemmer": False,
        "bertscore": {"model": "microsoft/mdeberta-v3-base", "num_layers": 12, "max_tokens": 512, "clamp": True},
        "official": ["rouge1_f", "rouge2_f", "rougeLsum_f", "bertscore_f"],
        "headline": "rougeLsum_f",
    },
    "multiclinsum2025": {
        "description": "MultiClinSum 2025's official metrics, ROUGE-Lsum and BERTScore (its encoders inferred)",
        "rouge_tokenizer": "default",
        "rouge_stemmer": False,
        "bertscore": {
            "model": {"en": "FacebookAI/roberta-large", "other": "google-bert/bert-base-multilingual-cased"},
            "num_layers": {"en": 17, "other": 9},
            "max_tokens": None,
            "clamp": False,
        },
        "official": ["rougeLsum_f", "bertscore_f"],
        "headline": "rougeLsum_f",
    },
}

# The parts a protocol sets (dotted config keys), which the config may override one by one.
PARTS = (
    "rouge_tokenizer",
    "rouge_stemmer",
    "bertscore.model",
    "bertscore.num_layers",
    "bertscore.max_tokens",
    "bertscore.clamp",
)


def protocol(name: str) -> dict:
    if name not in PROTOCOLS:
        raise ClinsumError(f"evaluate.protocol: {name!r} is not one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def _get(section: dict, dotted: str):
    """(value, given) of a dotted key; a null value is not given."""
    node = section
    for key in dotted.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            return None, False
        node = node[key]
    return node, True


def for_language(value, lang: str, key: str):
    """A part's value for one language: as it is, or from a {lang: value, other: value} mapping."""
    if not isinstance(value, dict):
        return value
    if lang in value:
        return value[lang]
    if "other" in value:
        return value["other"]
    raise ClinsumError(f"evaluate.{key}: no value for language {lang!r} and no `other` ({sorted(value)})")


def protocol_parts(name: str, lang: str) -> dict:
    """{dotted part: value} of a protocol for one language."""
    preset = protocol(name)
    return {part: for_language(_get(preset, part)[0], lang, part) for part in PARTS}


def resolve(section: dict, lang: str) -> dict:
    """The settings one language is scored with: the protocol's parts, replaced by those the config's
    `evaluate` section gives, resolved for `lang`; other keys of the section (batch_size) pass through.

    A per-language mapping in the config is merged over the protocol's mapping. A config that replaces a
    language's encoder but not its layer leaves `num_layers` None (found from the new encoder later): the
    protocol's layer belongs to the protocol's encoder.
    """
    section = parse_settings({"evaluate": section}, "evaluate")["evaluate"]
    name = section["protocol"]
    preset = protocol(name)
    parts = protocol_parts(name, lang)
    for part in PARTS:
        value, present = _get(section, part)
        if not present:
            continue
        preset_value = _get(preset, part)[0]
        if isinstance(value, dict) and isinstance(preset_value, dict):
            value = {**preset_value, **value}
        parts[part] = for_language(value, lang, part)
    own_layers = _get(section, "bertscore.num_layers")[1]
    if not own_layers and parts["bertscore.model"] != protocol_parts(name, lang)["bertscore.model"]:
        parts["bertscore.num_layers"] = None
    # the bootstrap and resources are the report's and the scheduler's, not how a language is scored
    resolved = {key: copy.deepcopy(value) for key, value in section.items() if key not in ("bertscore", "bootstrap", "resources")}
    resolved["bertscore"] = dict(section["bertscore"])
    for part, value in parts.items():
        if "." in part:
            resolved["bertscore"][part.split(".", 1)[1]] = value
        else:
            resolved[part] = value
    return resolved


def overrides(settings: dict, lang: str) -> list[dict]:
    """The parts of resolved `settings` that differ from their protocol's, as {part, value, protocol}."""
    preset = protocol_parts(settings["protocol"], lang)
    found = []
    for part in PARTS:
        value = _get(settings, part)[0]
        if value != preset[part]:
            found.append({"part": part, "value": value, "protocol": preset[part]})
    return found


def bertscore_model(section: dict, lang: str) -> str:
    """The BERTScore encoder reference for one language (for the workflow's rule inputs)."""
    return resolve(section, lang)["bertscore"]["model"]
