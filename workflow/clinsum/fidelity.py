"""Which of the paper's two descriptions a configuration follows: its text, or its public code.

The paper (Rusnachenko et al., CLEF 2025) and its code (nicolay-r/distil-tuning-llm) differ; `DIFFERENCES`
lists, per aspect, the configuration values that reproduce the code (`config/paper-code.yaml` sets them all).
docs/paper-differences.md explains each row (what the text says, what the code did, why the default is what it
is; tests/test_fidelity.py keeps the two in step), and the report's header names the mode a run was in.
"""

from __future__ import annotations

from dataclasses import dataclass

from .io import ClinsumError


@dataclass(frozen=True)
class Difference:
    aspect: str
    code: dict  # dotted config key -> the value that reproduces the paper's code


DIFFERENCES = (
    Difference("cropping unit", {"crop.unit": "characters", "crop.report_characters": 2560, "crop.answer_characters": 512}),
    Difference("split", {"split.method": "paper_code"}),
    Difference("prompt role and format", {"prompts.role": "paper_code"}),
    Difference("loss masking", {"train.loss_on_prompt": True}),
    Difference("evaluation on the last step", {"train.eval_last_step": False}),
    Difference("inference length", {"infer.max_new_tokens": 512}),
    Difference(
        "inference decoding",
        {"infer.temperature": 0.1, "infer.top_p": 0.8, "infer.top_k": 20, "infer.repetition_penalty": 1.1},
    ),
)
KEYS = tuple(key for difference in DIFFERENCES for key in difference.code)


def _value(config: dict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ClinsumError(f"the settings lack {key} (clinsum.fidelity reads it)")
        node = node[part]
    return node


def config_subset(config: dict) -> dict:
    """The configuration's values of every key above, shaped as config.yaml (what the report needs)."""
    subset: dict = {}
    for key in KEYS:
        *sections, name = key.split(".")
        node = subset
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = _value(config, key)
    return subset


def code_aspects(config: dict) -> list[str]:
    """The aspects in which `config` (validated, defaults filled) does as the paper's code did."""
    return [d.aspect for d in DIFFERENCES if all(_value(config, key) == value for key, value in d.code.items())]


def mode(config: dict) -> str:
    """A sentence for the report's header: the paper's text, the paper's code, or which aspects follow the code."""
    aspects = code_aspects(config)
    if not aspects:
        return "Fidelity mode: the paper's text (no aspect set as the paper's code; docs/paper-differences.md)."
    if len(aspects) == len(DIFFERENCES):
        return "Fidelity mode: the paper's code (every aspect of config/paper-code.yaml; docs/paper-differences.md)."
    return (
        f"Fidelity mode: mixed; as the paper's code: {', '.join(aspects)}; the other aspects as the paper's text "
        "(docs/paper-differences.md)."
    )
