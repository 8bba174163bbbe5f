"""The reward terms of the reward-tuned stage (clinsum.reward): pure functions of one summary, its report and its
reference, each documented with its range, and their weighted sum. The stage gives them to TRL's GRPOTrainer; the
benchmark (benchmarks/reward_stage.py) scores predictions with the same functions.

- `rouge_lsum`: ROUGE-Lsum F1 against the reference, as MultiClinSum-2's scorer computes it (rouge-score,
  default tokenizer, no stemmer, the summary's own newlines); 0–1.
- `bertscore`: BERTScore F1 against the reference with the evaluation's encoder (optional: it is slow); 0–1.
- `faithfulness`: the share of the summary's numbers that its report supports, each read as a value with its
  sign and unit in the language's conventions (clinsum.faithfulness); 1 for a summary that states no number; 0–1.
- `degeneration`: −1 for a degenerate summary (a repetition loop, an empty output, broken characters, an output
  cut at the token limit: clinsum.degeneration), 0 otherwise: a penalty, never a bonus.
- `length`: how close the summary's length is to the reference's, min(a, b) / max(a, b) in characters: 1 at the
  reference's length, ½ at twice or half of it, 0 for an empty summary; 0–1.
"""

from __future__ import annotations

from typing import Callable

from .degeneration import summary_degenerate_reason
from .faithfulness import unsupported_numbers
from .metrics import rouge_scores

TERMS = ("rouge", "bertscore", "faithfulness", "degeneration", "length")


def rouge_lsum(summary: str, reference: str) -> float:
    return rouge_lsum_batch([summary], [reference])[0]


def rouge_lsum_batch(summaries: list[str], references: list[str]) -> list[float]:
    """rouge_lsum of each pair, with one scorer for the batch."""
    return [row["rougeLsum_f"] for row in rouge_scores(summaries, references, tokenizer="default", use_stemmer=False)]


def faithfulness(summary: str, report: str, lang: str | None) -> float:
    numbers, missing = unsupported_numbers(summary, report, lang=lang)
    return 1.0 if numbers == 0 else (numbers - len(missing)) / numbers


def degeneration(summary: str, finish_reason: str | None = None) -> float:
    return -1.0 if summary_degenerate_reason(summary, finish_reason) is not None else 0.0


def length(summary: str, reference: str) -> float:
    a, b = len(summary.strip()), len(reference.strip())
    if a == 0 or b == 0:
        return 0.0
    return min(a, b) / max(a, b)


def term_values(summary: str, report: str, reference: str, lang: str | None, finish_reason: str | None = None,
                bertscore_f: float | None = None) -> dict[str, float]:
    """Every term of one summary (`bertscore` only when its score is given: computed in batches elsewhere)."""
    values = {
        "rouge": rouge_lsum(summary, reference),
        "faithfulness": faithfulness(summary, report, lang),
        "degeneration": degeneration(summary, finish_reason),
        "length": length(summary, reference),
    }
    if bertscore_f is not None:
        values["bertscore"] = bertscore_f
    return values


def weighted(values: dict[str, float], weights: dict[str, float]) -> float:
    """The reward: Σ weight × term over the terms with a weight (a term with weight 0 is not computed)."""
    return sum(weights[term] * values[term] for term in TERMS if weights.get(term))


def trl_reward_functions(weights: dict[str, float], bertscore: Callable[[list[str], list[str], list[str]], list[float]] | None,
                         max_new_tokens: int | None = None):
    """(functions, weights) for TRL's GRPOTrainer: one function per weighted term, each reading the completions and
    the dataset's `report`, `reference` and `lang` columns, so TRL logs every term apart and sums them weighted. A
    completion of `max_new_tokens` tokens was cut at the limit: the degeneration term counts it."""
    functions, kept = [], []
    for term in TERMS:
        if not weights.get(term):
            continue
        functions.append(_trl_term(term, bertscore, max_new_tokens))
        kept.append(float(weights[term]))
    return functions, kept


def _text(completion) -> str:
    """A TRL completion: a string, or a conversational completion (a list holding the assistant message)."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if message.get("role") == "assistant")


def _trl_term(term: str, bertscore, max_new_tokens: int | None):
    def reward(completions, report, reference, lang, completion_ids=None, **_) -> list[float]:
        texts = [_text(completion) for completion in completions]
        if term == "bertscore":
            return [float(value) for value in bertscore(texts, list(reference), list(lang))]
        if term == "rouge":
            return rouge_lsum_batch(texts, list(reference))
        if term == "faithfulness":
            return [faithfulness(text, rep, lg) for text, rep, lg in zip(texts, report, lang)]
        if term == "degeneration":
            cut = [max_new_tokens is not None and len(ids) >= max_new_tokens for ids in completion_ids or [[]] * len(texts)]
            return [degeneration(text, "length" if at_limit else None) for text, at_limit in zip(texts, cut)]
        return [length(text, ref) for text, ref in zip(texts, reference)]

    reward.__name__ = f"reward_{term}"  # TRL logs each function under its name
    return reward
