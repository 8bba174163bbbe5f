"""Optimizer steps of whole documents, micro-batches under a token budget, and their collation (right
padding, no attention mask).

An optimizer step takes `documents_per_step` documents (the paper: 1 for distil, 2 for standard), each
with all its sequences (a document's summarize and extract sequences share every step, so that every step
computes γ·L_sum + (1−γ)·L_ext over the same reports, the paper's step): `document_steps`. Documents are
shuffled, cut into pools, sorted by length inside a pool and grouped, and the steps are shuffled again:
steps of similar lengths, and an order that changes with every epoch.

The token budget is for memory and speed only: a step's sequences are packed into micro-batches whose cost
(rows × the longest row, padding counts) stays under `tokens_per_batch` (`micro_batches`), and the
micro-batches' gradients are accumulated into the step's exactly (losses.label_totals). A sequence over
the budget forms a micro-batch of its own.

`length_grouped_batches` (batches of whole units under the budget) serves the training benchmark.
"""

from __future__ import annotations

import random
from typing import Sequence

from .losses import IGNORE_INDEX


def padded_tokens(lengths: Sequence[int]) -> int:
    """Tokens a right-padded batch of these lengths occupies."""
    return len(lengths) * max(lengths) if lengths else 0


def length_grouped_batches(
    lengths: Sequence[int],
    tokens_per_batch: int,
    seed: int,
    units: Sequence[Sequence[int]] | None = None,
    pool_batches: int = 64,
) -> list[list[int]]:
    """Indices of `lengths` grouped into batches with rows × longest ≤ tokens_per_batch.

    `units` partitions the indices into groups kept in one batch (default: each index alone). Every index
    appears exactly once. Deterministic for a seed (pass a different seed per epoch).
    """
    if tokens_per_batch < 1:
        raise ValueError(f"tokens_per_batch must be positive, got {tokens_per_batch}")
    units = [list(unit) for unit in units] if units is not None else [[i] for i in range(len(lengths))]
    rng = random.Random(seed)
    rng.shuffle(units)
    pool_tokens = pool_batches * tokens_per_batch
    batches: list[list[int]] = []
    pool: list[list[int]] = []
    pool_size = 0
    for unit in units:
        pool.append(unit)
        pool_size += sum(lengths[i] for i in unit)
        if pool_size >= pool_tokens:
            batches += _pack(pool, lengths, tokens_per_batch)
            pool, pool_size = [], 0
    batches += _pack(pool, lengths, tokens_per_batch)
    rng.shuffle(batches)
    return batches


def _pack(pool: list[list[int]], lengths: Sequence[int], budget: int) -> list[list[int]]:
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    # longest unit first: a batch's first unit holds its longest row
    for unit in sorted(pool, key=lambda u: max(lengths[i] for i in u), reverse=True):
        if current and (len(current) + len(unit)) * width > budget:
            batches.append(current)
            current = []
        if not current:
            width = max(lengths[i] for i in unit)
        current += unit
    if current:
        batches.append(current)
    return batches


def document_steps(
    unit_lengths: Sequence[int], documents_per_step: int, seed: int, pool_steps: int = 64
) -> list[list[int]]:
    """Unit (document) indices grouped into optimizer steps of `documents_per_step` units each.

    Every index appears exactly once; only the last step of the epoch may hold fewer units (as a data
    loader that keeps its last batch). Units of similar length share a step: they are sorted by length
    inside pools of `pool_steps` steps' worth of units, and the steps are shuffled. Deterministic for a
    seed (pass a different seed per epoch).
    """
    if documents_per_step < 1:
        raise ValueError(f"documents_per_step must be positive, got {documents_per_step}")
    order = list(range(len(unit_lengths)))
    rng = random.Random(seed)
    rng.shuffle(order)
    pool_size = pool_steps * documents_per_step  # a multiple of the step: only the final pool leaves a short step
    steps: list[list[int]] = []
    for start in range(0, len(order), pool_size):
        pool = sorted(order[start : start + pool_size], key=lambda unit: unit_lengths[unit], reverse=True)
        steps += [pool[i : i + documents_per_step] for i in range(0, len(pool), documents_per_step)]
    full = [step for step in steps if len(step) == documents_per_step]
    rng.shuffle(full)
    return full + [step for step in steps if len(step) < documents_per_step]


def micro_batches(rows: Sequence[int], lengths: Sequence[int], tokens_per_batch: int) -> list[list[int]]:
    """The rows of one step packed, longest first, into micro-batches of rows × longest ≤ tokens_per_batch."""
    if tokens_per_batch < 1:
        raise ValueError(f"tokens_per_batch must be positive, got {tokens_per_batch}")
    return _pack([[row] for row in rows], lengths, tokens_per_batch)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def collate(examples: list[dict], pad_id: int, loss_on_prompt: bool = False) -> dict:
    """Tensors of one batch from tokenized examples.

    Each example: `input_ids` (prompt + answer), `prompt_len`, `task` (0 summarize, 1 extract) and,
    for distil_kl extract sequences, `teacher_ids` / `teacher_logprobs` ([rows, k]; row j belongs to
    answer position j). Returns input_ids [B, T] right-padded with pad_id, labels [B, T] (-100 on prompt
    and padding; on padding only with `loss_on_prompt`, as the paper's code, whose collator rebuilt the
    labels from the input ids), task [B], useful_tokens (non-padding count) and, when any example has
    teacher rows, teacher_ids [B, T, k] (-1 where none) and teacher_logprobs [B, T, k] in the labels' positions.
    """
    import torch

    width = max(len(example["input_ids"]) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    task = torch.empty(len(examples), dtype=torch.long)
    useful = 0
    teacher_k = max((example["teacher_ids"].shape[1] for example in examples if "teacher_ids" in example), default=0)
    if teacher_k:
        teacher_ids = torch.full((len(examples), width, teacher_k), -1, dtype=torch.long)
        teacher_logprobs = torch.zeros((len(examples), width, teacher_k), dtype=torch.float32)
    for row, example in enumerate(examples):
        ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
        start = int(example["prompt_len"])
        input_ids[row, : len(ids)] = ids
        first = 0 if loss_on_prompt else start
        labels[row, first : len(ids)] = ids[first:]
        task[row] = int(example["task"])
        useful += len(ids)
        if "teacher_ids" in example:
            rows, k = example["teacher_ids"].shape
            if start + rows > len(ids):
                raise ValueError(f"{rows} teacher rows do not fit an answer of {len(ids) - start} tokens")
            teacher_ids[row, start : start + rows, :k] = torch.as_tensor(example["teacher_ids"], dtype=torch.long)
            teacher_logprobs[row, start : start + rows, :k] = torch.as_tensor(example["teacher_logprobs"])
    batch = {"input_ids": input_ids, "labels": labels, "task": task, "useful_tokens": useful}
    if teacher_k:
        batch["teacher_ids"] = teacher_ids
        batch["teacher_logprobs"] = teacher_logprobs
    return batch
