"""Evaluate: ROUGE and BERTScore of one model's predictions for one language.

Reads `results/predictions/{model}/{lang}.jsonl` and writes `results/eval/{model}/{lang}.json`:
per-document scores (id + every metric), their means, and how they were made (ROUGE tokenizer,
BERTScore model and layer). Documents without a reference (MultiClinSum's test layout) cannot be
scored: they are counted as unscored and listed. An empty prediction is scored (0 on every metric),
not skipped, and counted.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from . import metrics
from .io import ClinsumError, read_json, read_jsonl, write_json

log = logging.getLogger(__name__)


def load_predictions(path: str | Path, lang: str | None = None) -> list[dict]:
    """Prediction records, checked: unique string ids, string predictions, string-or-null references."""
    records, seen = [], set()
    for number, record in enumerate(read_jsonl(path), start=1):
        where = f"{path}: record {number}"
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not record["id"]:
            raise ClinsumError(f"{where}: missing or non-string \"id\"")
        where = f"{path}: document {record['id']}"
        if record["id"] in seen:
            raise ClinsumError(f"{where}: duplicate id")
        seen.add(record["id"])
        if not isinstance(record.get("prediction"), str):
            raise ClinsumError(f"{where}: \"prediction\" must be a string, got {type(record.get('prediction')).__name__}")
        if "reference" not in record or not (record["reference"] is None or isinstance(record["reference"], str)):
            raise ClinsumError(f"{where}: \"reference\" must be a string or null")
        if lang is not None and record.get("lang", lang) != lang:
            raise ClinsumError(f"{where}: lang {record.get('lang')!r} in a file for {lang!r}")
        records.append(record)
    return records


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


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_records(
    records: list[dict],
    rouge_tokenizer: str,
    bertscore_dir: str | Path,
    num_layers: int,
    batch_size: int = 16,
    device: str = "cpu",
) -> dict:
    """Score the records that have a reference; returns documents, means and counts."""
    scored = [record for record in records if record["reference"] is not None]
    unscored = [record["id"] for record in records if record["reference"] is None]
    predictions = [record["prediction"] for record in scored]
    references = [record["reference"] for record in scored]
    rouge_rows = metrics.rouge_scores(predictions, references, tokenizer=rouge_tokenizer)
    bert_rows = metrics.bertscore(predictions, references, str(bertscore_dir), num_layers, batch_size, device)
    documents = []
    for record, rouge_row, bert_row in zip(scored, rouge_rows, bert_rows):
        row = {"id": record["id"], **rouge_row, **bert_row}
        bad = [key for key, value in row.items() if isinstance(value, float) and not math.isfinite(value)]
        if bad:
            raise ClinsumError(f"document {record['id']}: non-finite {', '.join(bad)}")
        documents.append(row)
    return {
        "n": len(documents),
        "n_unscored": len(unscored),
        "n_empty_predictions": sum(1 for text in predictions if not text.strip()),
        "n_input_truncated": sum(1 for record in records if record.get("input_truncated")),
        "n_fp32_fallback": sum(1 for record in records if record.get("fp32_fallback")),
        "means": metrics.mean_scores(documents),
        "documents": documents,
        "unscored_ids": unscored,
    }


def evaluate_file(
    predictions_path: str | Path,
    out_path: str | Path,
    settings: dict,
    bertscore_dir: str | Path,
    model: str,
    lang: str,
    device: str = "auto",
) -> dict:
    """`settings` is the config's evaluate section (rouge_tokenizer, bertscore {model, num_layers, batch_size})."""
    tokenizer = settings.get("rouge_tokenizer", "default")
    if tokenizer not in metrics.TOKENIZERS:
        raise ClinsumError(f"evaluate.rouge_tokenizer: {tokenizer!r} is not one of {', '.join(metrics.TOKENIZERS)}")
    bert_settings = settings.get("bertscore", {})
    bertscore_dir = Path(bertscore_dir)
    if not (bertscore_dir / "config.json").is_file():
        raise ClinsumError(f"{bertscore_dir}: not a model directory (no config.json) for BERTScore")
    model_ref = bert_settings.get("model", str(bertscore_dir))
    num_layers = resolve_num_layers(model_ref, bertscore_dir, bert_settings.get("num_layers"))
    device = pick_device(device)

    records = load_predictions(predictions_path, lang)
    result = evaluate_records(
        records, tokenizer, bertscore_dir, num_layers, bert_settings.get("batch_size", 16), device
    )
    output = {
        "model": model,
        "lang": lang,
        "predictions": str(predictions_path),
        "rouge": {
            "tokenizer": tokenizer,
            "use_stemmer": metrics.USE_STEMMER,
            "lsum_sentences": "newline-separated lines",
        },
        "bertscore": {
            "model": model_ref,
            "path": str(bertscore_dir),
            "num_layers": num_layers,
            "idf": False,
            "rescale_with_baseline": False,
        },
        **result,
    }
    write_json(out_path, output)
    means = result["means"]
    log.info(
        "%s/%s: %d scored, %d unscored, %d empty; ROUGE-Lsum F1 %.4f, BERTScore F1 %.4f",
        model, lang, result["n"], result["n_unscored"], result["n_empty_predictions"],
        means.get("rougeLsum_f", float("nan")), means.get("bertscore_f", float("nan")),
    )
    return output


def _run(args) -> None:
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as error:
        raise ClinsumError(f"--settings: invalid JSON ({error.msg})") from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    evaluate_file(args.predictions, args.out, settings, args.bertscore_model, args.model, args.lang, args.device)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="ROUGE-1/2/L/Lsum and BERTScore of one model's predictions for one language"
    )
    parser.add_argument("--predictions", required=True, help="results/predictions/{model}/{lang}.jsonl")
    parser.add_argument("--model", required=True, help="model name recorded in the output (base or a variant)")
    parser.add_argument("--lang", required=True, help="language of the predictions (each record's lang must match)")
    parser.add_argument(
        "--settings",
        default="{}",
        help='the config\'s evaluate section as JSON: {"rouge_tokenizer": "default"|"multilingual", '
        '"bertscore": {"model": NAME, "num_layers": INT, "batch_size": INT}}',
    )
    parser.add_argument("--bertscore-model", required=True, help="local directory of the BERTScore encoder")
    parser.add_argument("--device", default="auto", help="torch device for BERTScore: auto (cuda if present), cpu, cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", required=True, help="results/eval/{model}/{lang}.json")
    parser.set_defaults(func=_run)
