"""The one settings parser of every stage: the schema is the only source of defaults and allowed values.

A rule passes a stage the part of the configuration it uses, shaped as in config.yaml (for example
`{"teacher": {...}, "prompts": {"extract": ..., "role": ...}}`), as JSON in `--settings`. `parse_settings`
checks it against workflow/schemas/config.schema.yaml (the schema Snakemake validated the whole
configuration with) and fills in the schema's defaults, so stage code reads plain keys and restates no
default. Only the sections given are checked, and their required keys are not demanded: a stage gets the
keys it needs, not the whole configuration.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

from .io import ClinsumError


def _schema_path() -> Path:
    """workflow/schemas/config.schema.yaml in a checkout (and an editable install); the copy a wheel carries as
    clinsum/schemas/ (pyproject.toml's package-data) in a non-editable install."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "schemas" / "config.schema.yaml"
    installed = here / "schemas" / "config.schema.yaml"
    return installed if installed.exists() and not checkout.exists() else checkout


SCHEMA_PATH = _schema_path()


@lru_cache(maxsize=1)
def schema() -> dict:
    import yaml

    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _without_required(node):
    """The schema with every `required` dropped: partial settings are checked for what they hold."""
    if isinstance(node, dict):
        return {key: _without_required(value) for key, value in node.items() if key != "required"}
    if isinstance(node, list):
        return [_without_required(item) for item in node]
    return node


@lru_cache(maxsize=2)
def _validator(partial: bool):
    from jsonschema import Draft202012Validator, validators

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, node):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, node)

    filling = validators.extend(Draft202012Validator, {"properties": fill_defaults})
    return filling(_without_required(schema()) if partial else schema())


def schema_default(path: str):
    """The schema's default of a key given as a dotted path of properties ("corpus.synthetic.gold"), for a
    command line that mirrors a config section."""
    node = schema()
    for key in path.split("."):
        node = node["properties"][key]
    return node["default"]


def parse_settings(settings: str | dict, source: str = "--settings") -> dict:
    """`settings` (JSON text or a dict, shaped as config.yaml) validated, with the schema's defaults filled in
    for every section it gives; an invalid value stops with the key that is wrong and why."""
    if isinstance(settings, str):
        try:
            settings = json.loads(settings)
        except json.JSONDecodeError as error:
            raise ClinsumError(f"{source}: invalid JSON ({error.msg})") from None
    if not isinstance(settings, dict):
        raise ClinsumError(f"{source}: expected a JSON object shaped as config.yaml, got {type(settings).__name__}")
    filled = _validated(settings, partial=True, source=source)
    # top-level defaults of sections the stage did not ask for are not its settings
    return {section: value for section, value in filled.items() if section in settings}


def parse_config(config: dict, source: str) -> dict:
    """A whole configuration validated as Snakemake validates it (required keys included), defaults filled."""
    return _validated(config, partial=False, source=source)


def _validated(document: dict, partial: bool, source: str) -> dict:
    filled = copy.deepcopy(document)
    errors = sorted(_validator(partial).iter_errors(filled), key=lambda error: list(error.absolute_path))
    if errors:
        error = errors[0]
        key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ClinsumError(f"{source}: {key}: {error.message}")
    return filled


def merge(base: dict, update: dict) -> dict:
    """`update` merged into `base` key by key (nested dicts merged, everything else replaced), as Snakemake
    merges a --configfile over the Snakefile's configfile."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged
