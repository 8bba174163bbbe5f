"""The Stage 2 objective as pure functions: assistant-only labels, the dual loss, the top-k KL term.

Reduction (what one optimizer step minimizes), for a batch that mixes both tasks' sequences:

    S = labelled positions of the batch's summarize sequences, E = those of its extract sequences,
    K = the positions of E that carry a teacher top-k row (distil_kl only);
    L_sum  = (1/|S|) Σ_{t∈S} CE_t          L_ext = (1/|E|) Σ_{t∈E} CE_t
    KL_ext = (1/|K|) Σ_{t∈K} KL_t
    standard:  L = L_sum                                   (gamma = 1, no extract sequences)
    distil:    L = γ·L_sum + (1−γ)·L_ext
    distil_kl: L = γ·L_sum + (1−γ)·[(1−β)·L_ext + β·KL_ext]

Each task's term is the mean over its own label tokens in the batch (so a long answer weighs per token,
as in the model's own `labels=` loss on one sequence). A term whose set is empty in a batch counts 0 and
the other keeps its weight: no renormalization, so each term's gradient scale does not depend on what
else happens to share the batch.

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
    """Forward KL(teacher ‖ student) per position over the teacher's top-k ids plus one tail bucket.

    student_logits [N, V]; teacher_ids [N, k] (entries < 0 or ≥ V are absent: their teacher mass goes
    to the tail); teacher_logprobs [N, k], as stored (no temperature). The student's distribution is
    softmax(logits / temperature). With p_i the teacher's top-k probabilities, p_tail = 1 − Σ p_i, q_i
    the student's probabilities of the same ids and q_tail the student's mass on every other id:
        KL = Σ_i p_i (log p_i − log q_i) + p_tail (log p_tail − log q_tail).
    When the top-k ids cover the whole vocabulary the tail bucket is empty and this is the exact KL.
    No temperature² factor is applied. Returns [N] float32.
    """
    vocab = student_logits.shape[-1]
    logq = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    present = (teacher_ids >= 0) & (teacher_ids < vocab)
    ids = torch.where(present, teacher_ids, torch.zeros_like(teacher_ids)).long()
    logq_k = logq.gather(1, ids)
    teacher_lp = torch.where(present, teacher_logprobs.float(), torch.zeros_like(teacher_logprobs, dtype=torch.float32))
    p_k = torch.where(present, teacher_lp.exp(), torch.zeros_like(teacher_lp))
    kl_k = torch.where(present, p_k * (teacher_lp - logq_k), torch.zeros_like(p_k)).sum(-1)

    p_tail = (1.0 - p_k.sum(-1)).clamp_min(0.0)
    in_topk = torch.zeros_like(logq, dtype=torch.bool).scatter_(1, ids, present)
    # the student's tail mass summed over the tail itself, not 1 − Σ q_i: accurate when it is small
    q_tail = logq.exp().masked_fill(in_topk, 0.0).sum(-1)
    tail_exists = (p_tail > 0) & (in_topk.sum(-1) < vocab)
    tiny = torch.finfo(torch.float32).tiny
    kl_tail = torch.where(
        tail_exists,
        p_tail * (p_tail.clamp_min(tiny).log() - q_tail.clamp_min(tiny).log()),
        torch.zeros_like(p_tail),
    )
    return kl_k + kl_tail


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


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)


def dual_loss(
    nll: torch.Tensor,
    token_task: torch.Tensor,
    gamma: float,
    kl: torch.Tensor | None = None,
    kl_mask: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """The combined loss (see the module docstring) from per-position CE [N], the task id of each
    position [N] (0 summarize, 1 extract) and, for distil_kl, per-position KL [N] with its mask.
    Returns (loss, parts) with parts: loss_sum, loss_ext, loss_kl (floats, for logging) and
    the token counts n_sum, n_ext, n_kl."""
    is_sum = (token_task == TASK_ID["summarize"]).float()
    is_ext = (token_task == TASK_ID["extract"]).float()
    loss_sum = _masked_mean(nll, is_sum)
    loss_ext = _masked_mean(nll, is_ext)
    ext_term = loss_ext
    loss_kl = nll.new_zeros(())
    n_kl = 0
    if kl is not None and beta > 0:
        kl_weight = kl_mask.float()
        loss_kl = _masked_mean(kl, kl_weight)
        n_kl = int(kl_mask.sum())
        ext_term = (1.0 - beta) * loss_ext + beta * loss_kl
    loss = gamma * loss_sum + (1.0 - gamma) * ext_term
    parts = {
        "loss_sum": float(loss_sum.detach()),
        "loss_ext": float(loss_ext.detach()),
        "loss_kl": float(loss_kl.detach()),
        "n_sum": int(is_sum.sum()),
        "n_ext": int(is_ext.sum()),
        "n_kl": n_kl,
    }
    return loss, parts


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
) -> tuple[torch.Tensor, dict]:
    """The dual loss of one collated batch (see batching.collate) in one forward pass."""
    hidden, targets, mask = labelled_hidden(model, batch["input_ids"], batch["labels"])
    token_task = batch["task"][:, None].expand_as(mask)[mask]
    teacher_ids = teacher_logprobs = kl_mask = None
    if "teacher_ids" in batch and beta > 0:
        teacher_ids = batch["teacher_ids"][:, 1:][mask]
        teacher_logprobs = batch["teacher_logprobs"][:, 1:][mask]
        kl_mask = (teacher_ids >= 0).any(-1)
    nll, kl = token_terms(
        model.get_output_embeddings(), hidden, targets, teacher_ids, teacher_logprobs, kl_mask, temperature, chunk_size
    )
    return dual_loss(nll, token_task, gamma, kl if kl_mask is not None else None, kl_mask, beta)
