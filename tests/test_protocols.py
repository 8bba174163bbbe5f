"""Scoring protocols: presets, overrides part by part, per-language encoders, and what the evaluation
records as overridden."""

from __future__ import annotations

import pytest
import yaml

from clinsum import protocols
from clinsum.io import ClinsumError
from conftest import REPO


def test_the_schema_offers_exactly_the_protocols():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["evaluate"]["properties"]["protocol"]["enum"] == list(protocols.PROTOCOLS)


def test_multiclinsum2026_is_the_organisers_scorer():
    settings = protocols.resolve({"protocol": "multiclinsum2026", "bertscore": {"batch_size": 8}}, "es")
    assert settings == {
        "protocol": "multiclinsum2026",
        "rouge_tokenizer": "default",
        "rouge_stemmer": False,
        "bertscore": {"model": "microsoft/mdeberta-v3-base", "num_layers": 12, "max_tokens": 512, "clamp": True,
                      "batch_size": 8},
    }
    assert protocols.overrides(settings, "es") == []


def test_multiclinsum2025_has_one_encoder_for_english_and_one_for_the_others():
    section = {"protocol": "multiclinsum2025"}
    english = protocols.resolve(section, "en")["bertscore"]
    assert (english["model"], english["num_layers"]) == ("FacebookAI/roberta-large", 17)
    for lang in ("es", "fr", "pt", "it"):
        other = protocols.resolve(section, lang)["bertscore"]
        assert (other["model"], other["num_layers"]) == ("google-bert/bert-base-multilingual-cased", 9)


def test_an_override_replaces_one_part_and_is_recorded():
    section = {"protocol": "multiclinsum2026", "bertscore": {"model": "all-minilm-l6-v2", "batch_size": 4}}
    settings = protocols.resolve(section, "fr")
    # the protocol's layer belongs to its encoder: a replaced encoder's layer is found later
    assert settings["bertscore"]["num_layers"] is None
    assert settings["bertscore"]["max_tokens"] == 512 and settings["bertscore"]["clamp"] is True
    settings["bertscore"]["num_layers"] = 6
    assert protocols.overrides(settings, "fr") == [
        {"part": "bertscore.model", "value": "all-minilm-l6-v2", "protocol": "microsoft/mdeberta-v3-base"},
        {"part": "bertscore.num_layers", "value": 6, "protocol": 12},
    ]
    own_layer = protocols.resolve({**section, "bertscore": {"model": "x", "num_layers": 3}}, "fr")
    assert own_layer["bertscore"]["num_layers"] == 3
    tokenizer = protocols.resolve({"protocol": "paper", "rouge_tokenizer": "multilingual"}, "pt")
    assert protocols.overrides({**tokenizer, "bertscore": {**tokenizer["bertscore"]}}, "pt") == [
        {"part": "rouge_tokenizer", "value": "multilingual", "protocol": "default"}
    ]


def test_a_per_language_override_merges_over_the_protocols_mapping():
    section = {"protocol": "multiclinsum2025", "bertscore": {"model": {"en": "my/english-encoder"}}}
    english = protocols.resolve(section, "en")["bertscore"]
    assert english["model"] == "my/english-encoder" and english["num_layers"] is None
    spanish = protocols.resolve(section, "es")["bertscore"]
    # batch_size: the schema's default, filled in like every default
    assert spanish == {"model": "google-bert/bert-base-multilingual-cased", "num_layers": 9, "max_tokens": None,
                       "clamp": False, "batch_size": 16}


def test_null_gives_back_the_protocols_part():
    """config.yaml (merged under every file) overrides the encoder; a file can give the protocol's back."""
    section = {"protocol": "multiclinsum2026", "bertscore": {"model": None, "num_layers": None, "batch_size": 4}}
    settings = protocols.resolve(section, "en")
    assert settings["bertscore"]["model"] == "microsoft/mdeberta-v3-base" and settings["bertscore"]["num_layers"] == 12
    assert protocols.resolve(settings, "en") == settings  # resolving twice changes nothing


def test_errors_name_the_key():
    # a section without a protocol has the schema's default (the paper's), not an error
    assert protocols.resolve({}, "en")["protocol"] == "paper"
    with pytest.raises(ClinsumError, match="'bleu' is not one of"):
        protocols.resolve({"protocol": "bleu"}, "en")
    with pytest.raises(ClinsumError, match="evaluate.bertscore.model: no value for language 'de' and no `other`"):
        protocols.resolve({"protocol": "paper", "bertscore": {"model": {"en": "a/b"}}}, "de")
