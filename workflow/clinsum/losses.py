"""The Stage 2 objective as pure functions: assistant-only labels, the dual loss, the top-k KL term.

Reduction (what one optimizer step minimizes), for a batch that mixes both tasks' sequences:

    S = labelled positions of the batch's summarize sequences, E = those of its extract sequences,
    K = the positions of E that carry a teacher top-k row (distil_kl only);
    L_sum  = (1/|S|) Σ_{t∈S} CE_t          L_ext = (1/|E|) Σ_{t∈E} CE_t
    KL_ext = (1/|K|) Σ_{t∈K} KL_t
    standard:  L = L_sum                                   (gamma = 1, no extract sequences)
    distil:    L = γ·L_sum + (1−γ)·L_ext
    distil_kl: L = γ·L_sum + (1−γ)·[(1−β)·L_ext + β·KL_ext]

Each task's term is the mean over its own label tokens in the step (so a long answer weighs per token,
as in the model's own `labels=` loss on one sequence). A term whose set is empty in a step counts 0 and
the other keeps its weight: no renormalization, so each term's gradient scale does not depend on what
else happens to share the step.

A step's documents may be split into micro-batches (the token budget, for memory and speed): each
micro-batch then divides its sums by the whole step's counts |S|, |E|, |K| (`label_totals`), so the
micro-batches' losses and gradients add up to the step's exactly.

Labels follow the transformers convention: `labels[t]` is the token at position t, -100 where no loss
applies (prompt and padding); the hidden state at t−1 predicts it. Logits are computed only at labelled
positions, in chunks that are recomputed in the backward pass, so no [batch, length, vocabulary]
tensor ever exists (the 151,936-token vocabulary makes it the largest tensor of a step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
TASKS = ("summarize", "extract")
TASK_ID = {task: index for index, task in enumerate(TASKS)}
# Positions per lm_head chunk. A chunk's fp32 logits are chunk × vocabulary × 4 bytes (512 × 151,936 ≈ 0.3 GB);
# CE and its backward hold about four such tensors at once, the KL term about four more, hence smaller
# chunks when it is on. A 512-row GEMM against the head still runs at full speed.
DEFAULT_CHUNK = 512
KL_CHUNK = 256


def example_labels(prompt_ids: list[int], answer_ids: list[int]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one sequence: the loss covers the answer (incl. end-of-turn) only."""
    return list(prompt_ids) + list(answer_ids), [IGNORE_INDEX] * len(prompt_ids) + list(answer_ids)


def teacher_answer_ids(
    teacher_ids: list[int], end_of_turn: list[int], special_ids: set[int], budget: int | None
) -> tuple[list[int], int]:
    """Answer ids for a distil_kl extract sequence built from the teacher's own generated ids.

    Returns (answer_ids, kl_rows): answer_ids = the teacher's content tokens, cropped so that they and the
    template's end-of-turn tokens fit in `budget`, followed by the end-of-turn tokens; answer position j
    < kl_rows lines up with the teacher's top-k row j. A final stop token the teacher generated is not
    content; when it is the template's end-of-turn token and the answer was not cropped, its row is
    kept (the teacher's wish to stop there is worth matching); any other stop token's row is dropped.
    """
    ids = list(teacher_ids)
    stopped_on_end_of_turn = False
    if ids and ids[-1] in special_ids:
        stopped_on_end_of_turn = ids[-1] == end_of_turn[0]
        ids = ids[:-1]
    if budget is not None:
        room = budget - len(end_of_turn)
        if room < 0:
            raise ValueError(f"answer budget {budget} is smaller than the end-of-turn tokens ({len(end_of_turn)})")
        if len(ids) > room:
            ids = ids[:room]
            stopped_on_end_of_turn = False
    return ids + list(end_of_turn), len(ids) + (1 if stopped_on_end_of_turn else 0)


def topk_kl_with_tail(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Forward KL(teacher ‖ student) per position over the teacher's top-k ids plus one tail bucket, both
    sides tempered, times T² (Hinton et al.'s logit distillation, on the k+1 outcomes the teacher kept).

    student_logits [N, V]; teacher_ids [N, k] (entries < 0 or ≥ V are absent: their teacher mass goes to the
    tail, which is how ids of a larger teacher head, e.g. Qwen2.5-72B's 152,064 rows against the 0.5B's
    151,936, are handled); teacher_logprobs [N, k], as stored (temperature 1). With p_i the teacher's top-k
    probabilities and p_tail = 1 − Σ p_i, the tempered teacher over the k+1 outcomes is
        p'_j = p_j^(1/T) / Σ_j' p_j'^(1/T)        (j ∈ top-k ids ∪ {tail})
    and the student's is q'_i = softmax(logits / T)_i, q'_tail = its mass on every other id. Then
        KL = T² · Σ_j p'_j (log p'_j − log q'_j).
    Its minimiser over the student's logits is q' = p' (tested), so at T = 1 the student learns the teacher's
    own top-k probabilities, and the T² keeps the gradient's scale independent of T. The tail is tempered as
    one outcome (the teacher's distribution inside it is unknown): exact when the top-k ids cover the whole
    vocabulary or T = 1. Returns [N] float32.
    """
    vocab = student_logits.shape[-1]
    logq = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    present = (teacher_ids >= 0) & (teacher_ids < vocab)
    # absent ids read id 0's log-probability only as a placeholder: their teacher weight is 0 below
    ids = torch.where(present, teacher_ids, torch.zeros_like(teacher_ids)).long()
    logq_k = logq.gather(1, ids)
    # present ids are marked in a column of their own; absent ones in a spare column past the vocabulary, so
    # an absent id never unmarks a real id (scattering `present` to a shared placeholder index did: id 0 then
    # counted both in the top-k and in the tail, and which write won was not even fixed on CUDA)
    marks = torch.where(present, teacher_ids, torch.full_like(teacher_ids, vocab)).long()
    in_topk = torch.zeros(logq.shape[0], vocab + 1, dtype=torch.bool, device=logq.device)
    in_topk = in_topk.scatter_(1, marks, True)[:, :vocab]
    # the student's tail mass summed over the tail itself, not 1 − Σ q_i: accurate when it is small
    q_tail = logq.exp().masked_fill(in_topk, 0.0).sum(-1)
    tail_exists = in_topk.sum(-1) < vocab

    teacher_lp = torch.where(present, teacher_logprobs.float(), torch.full_like(teacher_logprobs, -torch.inf, dtype=torch.float32))
    p_tail = (1.0 - teacher_lp.exp().sum(-1)).clamp_min(0.0)
    tiny = torch.finfo(torch.float32).tiny
    # the k+1 teacher outcomes in log space, tempered and renormalized together
    tail_lp = torch.where(tail_exists & (p_tail > 0), p_tail.clamp_min(tiny).log(), torch.full_like(p_tail, -torch.inf))
    outcomes = torch.cat([teacher_lp, tail_lp[:, None]], dim=-1) / temperature
    tempered = torch.log_softmax(outcomes, dim=-1)
    student = torch.cat([logq_k, q_tail.clamp_min(tiny).log()[:, None]], dim=-1)
    weights = tempered.exp()
    # outcomes the teacher gives no mass (absent ids, an empty tail) contribute 0, not 0 · (−inf)
    terms = torch.where(weights > 0, weights * (tempered - student), torch.zeros_like(weights))
    return terms.sum(-1) * temperature**2


def _chunk_terms(lm_head, hidden, targets, teacher_ids, teacher_logprobs, kl_rows, temperature):
    """CE per position, and KL at the positions listed in kl_rows (indices into this chunk)."""
    logits = lm_head(hidden)
    nll = F.cross_entropy(logits.float(), targets, reduction="none")
    kl = torch.zeros_like(nll)
    if teacher_ids is not None and kl_rows.numel():
        kl = kl.index_put(
            (kl_rows,),
            topk_kl_with_tail(logits[kl_rows], teacher_ids[kl_rows], teacher_logprobs[kl_rows], temperature),
        )
    return nll, kl


def token_terms(
    lm_head,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    teacher_ids: torch.Tensor | None = None,
    teacher_logprobs: torch.Tensor | None = None,
    kl_mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position CE [N] and KL [N] (0 where kl_mask is False) from hidden states [N, H] at labelled
    positions. The lm_head runs chunk by chunk; with gradients on, each chunk is recomputed in the
    backward pass (activation checkpointing), so only one chunk's logits exist at a time."""
    if teacher_ids is not None:
        chunk_size = min(chunk_size, KL_CHUNK)
    nlls, kls = [], []
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, hidden.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        ids = lps = None
        rows = torch.empty(0, dtype=torch.long, device=hidden.device)
        if teacher_ids is not None:
            ids, lps = teacher_ids[part], teacher_logprobs[part]
            rows = kl_mask[part].nonzero().squeeze(1)
        args = (lm_head, hidden[part], targets[part], ids, lps, rows, temperature)
        if recompute:
            nll, kl = checkpoint(_chunk_terms, *args, use_reentrant=False)
        else:
            nll, kl = _chunk_terms(*args)
        nlls.append(nll)
        kls.append(kl)
    if not nlls:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(nlls), torch.cat(kls)


TOTAL_KEYS = ("n_sum", "n_ext", "n_kl")


def _masked_sum_over(values: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    return (values * mask).sum() / max(count, 1)


def dual_loss(
    nll: torch.Tensor,
    token_task: torch.Tensor,
    gamma: float,
    kl: torch.Tensor | None = None,
    kl_mask: torch.Tensor | None = None,
    beta: float = 0.0,
    totals: dict | None = None,
) -> tuple[torch.Tensor, dict]:
    """The combined loss (see the module docstring) from per-position CE [N], the task id of each
    position [N] (0 summarize, 1 extract) and, for distil_kl, per-position KL [N] with its mask.

    `totals` ({n_sum, n_ext, n_kl}, from `label_totals`) are the whole step's counts when these positions
    are one micro-batch of it; without them the positions are the whole step. Returns (loss, parts) with
    parts: loss_sum, loss_ext, loss_kl (this micro-batch's share of the step's terms: they add up over the
    micro-batches) and this micro-batch's counts n_sum, n_ext, n_kl."""
    is_sum = (token_task == TASK_ID["summarize"]).float()
    is_ext = (token_task == TASK_ID["extract"]).float()
    use_kl = kl is not None and beta > 0
    counts = {
        "n_sum": int(is_sum.sum()),
        "n_ext": int(is_ext.sum()),
        "n_kl": int(kl_mask.sum()) if use_kl else 0,
    }
    totals = totals or counts
    loss_sum = _masked_sum_over(nll, is_sum, totals["n_sum"])
    loss_ext = _masked_sum_over(nll, is_ext, totals["n_ext"])
    ext_term = loss_ext
    loss_kl = nll.new_zeros(())
    if use_kl:
        loss_kl = _masked_sum_over(kl, kl_mask.float(), totals["n_kl"])
        ext_term = (1.0 - beta) * loss_ext + beta * loss_kl
    loss = gamma * loss_sum + (1.0 - gamma) * ext_term
    parts = {
        "loss_sum": float(loss_sum.detach()),
        "loss_ext": float(loss_ext.detach()),
        "loss_kl": float(loss_kl.detach()),
        **counts,
    }
    return loss, parts


def _kl_positions(batch: dict, mask: torch.Tensor, beta: float):
    """Teacher ids, log-probs and the KL mask at the labelled positions (None when no KL term applies)."""
    if "teacher_ids" not in batch or beta <= 0:
        return None, None, None
    teacher_ids = batch["teacher_ids"][:, 1:][mask]
    return teacher_ids, batch["teacher_logprobs"][:, 1:][mask], (teacher_ids >= 0).any(-1)


def label_totals(batches: list[dict], beta: float = 0.0) -> dict:
    """{n_sum, n_ext, n_kl}: the labelled positions of each term over all micro-batches of one step,
    counted as `batch_loss` counts them (the denominators of the step's loss)."""
    totals = dict.fromkeys(TOTAL_KEYS, 0)
    for batch in batches:
        mask = batch["labels"][:, 1:] != IGNORE_INDEX
        task = batch["task"][:, None].expand_as(mask)[mask]
        totals["n_sum"] += int((task == TASK_ID["summarize"]).sum())
        totals["n_ext"] += int((task == TASK_ID["extract"]).sum())
        kl_mask = _kl_positions(batch, mask, beta)[2]
        totals["n_kl"] += int(kl_mask.sum()) if kl_mask is not None else 0
    return totals


def labelled_hidden(model, input_ids: torch.Tensor, labels: torch.Tensor):
    """Run the decoder (no lm_head) and keep the hidden states that predict a label.

    No attention mask: sequences are right-padded, and under the causal mask a real token never attends
    to the padding after it, so sdpa keeps its fast kernel. Returns (hidden [N, H], targets [N],
    mask [B, T−1]) where mask marks the predicting positions in row-major order.
    """
    decoder = model.base_model
    hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    return hidden[:, :-1][mask], shifted[mask], mask


def batch_loss(
    model,
    batch: dict,
    gamma: float,
    beta: float = 0.0,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    totals: dict | None = None,
) -> tuple[torch.Tensor, dict]:
    """The dual loss of one collated batch (see batching.collate) in one forward pass; `totals` when the
    batch is one micro-batch of a step (see `dual_loss`)."""
    hidden, targets, mask = labelled_hidden(model, batch["input_ids"], batch["labels"])
    token_task = batch["task"][:, None].expand_as(mask)[mask]
    teacher_ids, teacher_logprobs, kl_mask = _kl_positions(batch, mask, beta)
    nll, kl = token_terms(
        model.get_output_embeddings(), hidden, targets, teacher_ids, teacher_logprobs, kl_mask, temperature, chunk_size
    )
    return dual_loss(nll, token_task, gamma, kl if kl_mask is not None else None, kl_mask, beta, totals)
