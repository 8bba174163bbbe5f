"""Evaluate: scores and clinical faithfulness of one model's predictions for one language.

Reads `results/predictions/{model}/{lang}.jsonl` and the reports (`results/corpus/{lang}.jsonl`) and
writes `results/eval/{model}/{lang}.json`: per-document ROUGE and BERTScore under the configured scoring
protocol (`clinsum.protocols`: which parts come from it and which the config overrides), the
faithfulness checks of each summary against its report (`clinsum.faithfulness`: unsupported numbers,
novel bigrams, compression, degenerate outputs), their means, the best and the worst scored summary,
and how the scores were made. Documents without a reference (MultiClinSum's test layout) cannot be
scored: they are counted as unscored and listed. An empty prediction is scored (0 on every metric),
not skipped, and counted.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

from . import faithfulness, metrics, protocols
from .degeneration import KINDS, reason_kind
from .io import ClinsumError, write_json
from .predictions import load_predictions, load_sources
from .settings import parse_settings

log = logging.getLogger(__name__)

__all__ = ["evaluate_file", "evaluate_records", "load_predictions"]


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def score_documents(scored: list[dict], settings: dict, bertscore_dir: str | Path, device: str) -> list[dict]:
    """ROUGE and BERTScore rows of the records that have a reference, under resolved `settings`."""
    predictions = [record["prediction"] for record in scored]
    references = [record["reference"] for record in scored]
    bert = settings["bertscore"]
    rouge_rows = metrics.rouge_scores(
        predictions, references, tokenizer=settings["rouge_tokenizer"], use_stemmer=settings["rouge_stemmer"]
    )
    bert_rows = metrics.bertscore(
        predictions, references, str(bertscore_dir), bert["num_layers"], bert["batch_size"], device,
        max_tokens=bert["max_tokens"], clamp=bert["clamp"],
    )
    rows = []
    for record, rouge_row, bert_row in zip(scored, rouge_rows, bert_rows):
        row = {"id": record["id"], **rouge_row, **bert_row}
        bad = [key for key, value in row.items() if isinstance(value, float) and not math.isfinite(value)]
        if bad:
            raise ClinsumError(f"document {record['id']}: non-finite {', '.join(bad)}")
        rows.append(row)
    return rows


def example(record: dict, document: dict, metric: str) -> dict:
    """A summary shown in the report beside its reference, with what the checks found in it."""
    return {
        "id": record["id"],
        "score": document[metric],
        "prediction": record["prediction"],
        "reference": record["reference"],
        "degenerate_reason": document["degenerate_reason"],
        "unsupported_numbers": document["unsupported_numbers"],
    }


def best_and_worst(scored: list[dict], documents: list[dict], metric: str) -> dict | None:
    """The best and the worst scored summary by `metric`; of tied ones, the first is best and the last worst,
    so that two or more documents always give two examples."""
    if not documents:
        return None
    best = max(range(len(documents)), key=lambda i: documents[i][metric])
    worst = min(range(len(documents)), key=lambda i: (documents[i][metric], -i))
    return {
        "metric": metric,
        "best": example(scored[best], documents[best], metric),
        "worst": example(scored[worst], documents[worst], metric),
    }


def evaluate_records(
    records: list[dict], sources: dict[str, str], settings: dict, bertscore_dir: str | Path, device: str = "cpu"
) -> dict:
    """Score the records that have a reference and check each against its report; documents, means, counts.

    `settings` are resolved (`resolve_settings`); `sources` maps id -> report text.
    """
    scored = [record for record in records if record["reference"] is not None]
    unscored = [record["id"] for record in records if record["reference"] is None]
    score_rows = score_documents(scored, settings, bertscore_dir, device)
    faith_rows = [
        faithfulness.document_faithfulness(
            record["prediction"], sources[record["id"]], record.get("finish_reason"), lang=record.get("lang")
        )
        for record in scored
    ]
    documents = [{**score_row, **faith_row} for score_row, faith_row in zip(score_rows, faith_rows)]
    kinds = Counter(reason_kind(doc["degenerate_reason"]) for doc in documents if doc["degenerate"])
    headline = protocols.protocol(settings["protocol"])["headline"]
    return {
        "n": len(documents),
        "n_unscored": len(unscored),
        "n_empty_predictions": sum(1 for record in scored if not record["prediction"].strip()),
        "n_input_truncated": sum(1 for record in records if record.get("input_truncated")),
        "n_fp32_fallback": sum(1 for record in records if record.get("fp32_fallback")),
        "n_degenerate": sum(kinds.values()),
        "degenerate_kinds": {kind: kinds.get(kind, 0) for kind in KINDS},
        # without a finish reason, an output cut at the token limit cannot be told from one that ended
        "n_finish_reason_unknown": sum(1 for record in scored if record.get("finish_reason") is None),
        "means": {**metrics.mean_scores(score_rows), **faithfulness.faithfulness_means(faith_rows)},
        "documents": documents,
        "unscored_ids": unscored,
        "examples": best_and_worst(scored, documents, headline),
    }


def resolve_settings(section: dict, lang: str, bertscore_dir: str | Path) -> dict:
    """The config's evaluate section resolved for `lang` under its protocol, the encoder's layer known."""
    settings = protocols.resolve(section, lang)
    if settings["rouge_tokenizer"] not in metrics.TOKENIZERS:
        raise ClinsumError(
            f"evaluate.rouge_tokenizer: {settings['rouge_tokenizer']!r} is not one of {', '.join(metrics.TOKENIZERS)}"
        )
    bert = settings["bertscore"]
    if "batch_size" not in bert:
        raise ClinsumError("evaluate.bertscore.batch_size is missing (the config schema sets it)")
    bert["num_layers"] = metrics.resolve_num_layers(bert["model"], bertscore_dir, bert["num_layers"])
    return settings


def evaluate_file(
    predictions_path: str | Path,
    corpus_path: str | Path,
    out_path: str | Path,
    section: dict,
    bertscore_dir: str | Path,
    model: str,
    lang: str,
    device: str = "auto",
) -> dict:
    """`section` is the config's evaluate section: protocol, the parts it overrides, bertscore.batch_size."""
    bertscore_dir = Path(bertscore_dir)
    if not (bertscore_dir / "config.json").is_file():
        raise ClinsumError(f"{bertscore_dir}: not a model directory (no config.json) for BERTScore")
    settings = resolve_settings(section, lang, bertscore_dir)
    records = load_predictions(predictions_path, lang)
    sources = load_sources(corpus_path, [record["id"] for record in records if record["reference"] is not None])
    result = evaluate_records(records, sources, settings, bertscore_dir, pick_device(device))
    preset = protocols.protocol(settings["protocol"])
    bert = settings["bertscore"]
    output = {
        "model": model,
        "lang": lang,
        "predictions": str(predictions_path),
        "protocol": {
            "name": settings["protocol"],
            "description": preset["description"],
            "official": preset["official"],
            "headline": preset["headline"],
            "overrides": protocols.overrides(settings, lang),
        },
        "rouge": {
            "tokenizer": settings["rouge_tokenizer"],
            "use_stemmer": settings["rouge_stemmer"],
            "lsum_sentences": "newline-separated lines",
        },
        "bertscore": {
            "model": bert["model"],
            "path": str(bertscore_dir),
            "num_layers": bert["num_layers"],
            "max_tokens": bert["max_tokens"],
            "clamp_f1": bert["clamp"],
            "idf": False,
            "rescale_with_baseline": False,
        },
        **result,
    }
    write_json(out_path, output)
    means = result["means"]
    log.info(
        "%s/%s (protocol %s): %d scored, %d unscored, %d empty, %d degenerate %s; ROUGE-Lsum F1 %.4f, "
        "BERTScore F1 %.4f, unsupported numbers %.1f%%",
        model, lang, settings["protocol"], result["n"], result["n_unscored"], result["n_empty_predictions"],
        result["n_degenerate"], result["degenerate_kinds"], means.get("rougeLsum_f", float("nan")),
        means.get("bertscore_f", float("nan")), 100 * means.get("unsupported_number_rate", float("nan")),
    )
    return output


def _run(args) -> None:
    settings = parse_settings(args.settings)["evaluate"]
    if Path(args.bertscore_model).is_dir():
        from .model_files import check_weights

        check_weights(args.bertscore_model)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    evaluate_file(
        args.predictions, args.corpus, args.out, settings, args.bertscore_model, args.model, args.lang, args.device
    )


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="ROUGE-1/2/L/Lsum and BERTScore under a scoring protocol, and clinical faithfulness checks, "
        "of one model's predictions for one language",
    )
    parser.add_argument("--predictions", required=True, help="results/predictions/{model}/{lang}.jsonl")
    parser.add_argument(
        "--corpus", required=True, help="results/corpus/{lang}.jsonl (the reports the summaries are checked against)"
    )
    parser.add_argument("--model", required=True, help="model name recorded in the output (base or a variant)")
    parser.add_argument("--lang", required=True, help="language of the predictions (each record's lang must match)")
    parser.add_argument(
        "--settings",
        required=True,
        help='JSON: {"evaluate": <the config\'s evaluate section>} (the schema\'s defaults fill the rest)',
    )
    parser.add_argument(
        "--bertscore-model", required=True, help="local directory of this language's BERTScore encoder"
    )
    parser.add_argument("--device", default="auto", help="torch device for BERTScore: auto (cuda if present), cpu, cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", required=True, help="results/eval/{model}/{lang}.json")
    parser.set_defaults(func=_run)
