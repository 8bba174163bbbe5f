"""The task's metrics: ROUGE-1/2/L/Lsum (rouge-score) and BERTScore (bert-score), per document.

The paper's evaluation of Table 4 (distil-tuning-llm, `analysis/evaluate_test_unofficial.py`) calls
Hugging Face `evaluate`'s "rouge", which wraps rouge-score's `RougeScorer` with its defaults:
`use_stemmer=False`, the default tokenizer, and ROUGE-Lsum on the text's own newlines (no sentence
splitter). MultiClinSum-2's scorer does the same. Which settings a run uses comes from its scoring
protocol (`clinsum.protocols`).

rouge-score's default tokenizer keeps only `[a-z0-9]` after lowercasing: every non-ASCII letter
(é, ã, ñ, ç ...) is a token boundary, so "diagnóstico" becomes "diagn" + "stico". The "multilingual"
tokenizer keeps Unicode letters and digits instead; results made with it are labelled as such.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from .io import ClinsumError, read_json

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_KEYS = tuple(f"{kind}_{part}" for kind in ROUGE_TYPES for part in ("p", "r", "f"))
BERTSCORE_KEYS = ("bertscore_p", "bertscore_r", "bertscore_f")
TOKENIZERS = ("default", "multilingual")


class MultilingualTokenizer:
    """Lowercased runs of Unicode word characters (letters, digits, underscore); no stemming.

    rouge-score's Porter stemmer is English-only, so it is not applied to other languages' words.
    """

    _WORD = re.compile(r"\w+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        return self._WORD.findall(text.lower())


def rouge_tokenizer(name: str):
    """The tokenizer object RougeScorer takes (None selects rouge-score's default tokenizer)."""
    if name == "default":
        return None
    if name == "multilingual":
        return MultilingualTokenizer()
    raise ValueError(f"unknown ROUGE tokenizer {name!r}; expected one of {', '.join(TOKENIZERS)}")


def _check_pairs(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def rouge_scores(
    predictions: list[str],
    references: list[str],
    tokenizer: str = "default",
    use_stemmer: bool = False,
) -> list[dict]:
    """ROUGE-1/2/L/Lsum precision, recall and F1 per document, as floats in [0, 1].

    ROUGE-Lsum treats each newline-separated line as a sentence (rouge-score's own convention). An
    empty prediction scores 0 on every ROUGE key.
    """
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(
        list(ROUGE_TYPES), use_stemmer=use_stemmer, tokenizer=rouge_tokenizer(tokenizer)
    )
    rows = []
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
        row = {}
        for kind in ROUGE_TYPES:
            score = scores[kind]
            row[f"{kind}_p"] = float(score.precision)
            row[f"{kind}_r"] = float(score.recall)
            row[f"{kind}_f"] = float(score.fmeasure)
        rows.append(row)
    return rows


def bertscore(
    predictions: list[str],
    references: list[str],
    model_path: str,
    num_layers: int,
    batch_size: int = 16,
    device: str = "cpu",
    max_tokens: int | None = None,
    clamp: bool = False,
) -> list[dict]:
    """BERTScore precision, recall and F1 per document (raw cosine scores: no baseline rescaling, no idf).

    `model_path` is a local model directory: bert-score passes `model_type` to transformers'
    `from_pretrained`, which loads a directory offline. bert-score looks the layer count up by model
    name, which fails for a path, so `num_layers` is explicit (the paper's distilbert-base-uncased: 5,
    bert-score's own choice for it; all-MiniLM-L6-v2: 6). bert-score truncates inputs to the tokenizer's
    `model_max_length`; `max_tokens` lowers that limit (mDeBERTa's tokenizer declares no limit, and
    MultiClinSum-2's scorer truncates to 512 tokens). `clamp` clips F1 to [0, 1] as that scorer does.
    An empty prediction scores 0. With neither option, this equals `bert_score.score` with the same
    arguments (its slow tokenizer, as MultiClinSum-2's scorer).
    """
    from bert_score import BERTScorer

    _check_pairs(predictions, references)
    if not predictions:
        return []
    scorer = BERTScorer(
        model_type=str(model_path),
        num_layers=int(num_layers),
        batch_size=int(batch_size),
        device=device,
        idf=False,
        rescale_with_baseline=False,
    )
    if max_tokens:
        # bert-score's sent_encode truncates at the tokenizer's model_max_length (a private attribute).
        tokenizer = scorer._tokenizer
        tokenizer.model_max_length = min(int(max_tokens), tokenizer.model_max_length)
    precision, recall, f1 = scorer.score(predictions, references, batch_size=int(batch_size))
    rows = []
    for prediction, p, r, f in zip(predictions, precision.tolist(), recall.tolist(), f1.tolist()):
        if not prediction.strip():
            # bert-score already zeroes P and R for an empty candidate; make F1 explicit too.
            p = r = f = 0.0
        if clamp:
            f = min(1.0, max(0.0, f))
        rows.append({"bertscore_p": float(p), "bertscore_r": float(r), "bertscore_f": float(f)})
    return rows


def mean_scores(rows: Iterable[dict]) -> dict:
    """The mean of every numeric key over the rows (non-numeric keys such as "id" are skipped)."""
    rows = list(rows)
    if not rows:
        return {}
    keys = [key for key, value in rows[0].items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return {key: sum(float(row[key]) for row in rows) / len(rows) for key in keys}


def resolve_num_layers(model_ref: str, model_dir: str | Path, num_layers: int | None) -> int:
    """The encoder layer BERTScore reads: from config if set, else bert-score's choice for a model it
    knows by name (distilbert-base-uncased: 5, as in the paper's evaluation), else the last layer."""
    if num_layers:
        return int(num_layers)
    from bert_score.utils import model2layers

    if model_ref in model2layers:
        return int(model2layers[model_ref])
    config_path = Path(model_dir) / "config.json"
    try:
        config = read_json(config_path)
    except (OSError, json.JSONDecodeError) as error:
        raise ClinsumError(f"{config_path}: cannot read the BERTScore model's config ({error})") from None
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ClinsumError(f"{config_path}: no layer count; set evaluate.bertscore.num_layers in the config")
