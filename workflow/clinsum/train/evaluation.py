"""Checkpoint selection on generated text: greedy summaries of the valid split, ROUGE against references."""

from __future__ import annotations

from .settings import TrainSettings

SELECTION_METRICS = ("rougeL", "rouge_mean")


def validation_scores(model, tokenizer, prompts, references, settings: TrainSettings, autocast, device) -> dict:
    """ROUGE-1/2/L F1 (means over documents) of greedy summaries of the valid prompts."""
    import torch

    from ..generation import TransformersGenerator
    from ..metrics import mean_scores, rouge_scores

    was_training = model.training
    model.eval()
    # generation reseeds torch; keep the training RNG stream as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
        generator = TransformersGenerator.from_model(model, tokenizer, batch_size=settings.eval_batch_size)
        completions = generator.generate(
            prompts, max_new_tokens=settings.eval_max_new_tokens, repetition_penalty=settings.eval_repetition_penalty
        )
    model.train(was_training)
    means = mean_scores(rouge_scores([c.text for c in completions], references, use_stemmer=settings.select_stemmer))
    return {"rouge1": means["rouge1_f"], "rouge2": means["rouge2_f"], "rougeL": means["rougeL_f"]}


def selection_score(scores: dict, metric: str) -> float:
    """The number that selects the checkpoint: ROUGE-L F1, or the mean of ROUGE-1/2/L F1 (the paper's code)."""
    if metric == "rouge_mean":
        return (scores["rouge1"] + scores["rouge2"] + scores["rougeL"]) / 3
    return scores["rougeL"]


def is_improvement(score: float, best: float | None) -> bool:
    """A checkpoint replaces the best one only if it scores strictly higher (ties keep the earlier)."""
    return best is None or score > best
