"""The training step plan, computed once for the trainer and for `clinsum plan`: how many optimizer steps each
epoch runs, which steps evaluate (and may keep a checkpoint), and the learning rate's warm-up. Pure arithmetic on
counts, no torch: `clinsum plan` reads it before a GPU day without loading a model library.

An epoch takes every training document once, `documents_per_step` at a time (its last step may be short:
`batching.document_steps` makes exactly these steps); a fractional `epochs` runs that share of the last epoch
(at least one step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def steps_per_epoch(documents: int, documents_per_step: int) -> int:
    """Optimizer steps in one pass over `documents` (the last step may be short): what document_steps makes."""
    return math.ceil(documents / documents_per_step)


def training_plan(steps_in_epochs: list[int], epochs: float) -> list[int]:
    """Steps to run in each epoch: whole epochs, then the fraction of the last one (at least 1)."""
    plan = []
    for epoch, n in enumerate(steps_in_epochs):
        remaining = epochs - epoch
        if remaining <= 0:
            break
        plan.append(n if remaining >= 1 else max(1, math.ceil(remaining * n)))
    return plan


def is_evaluation_step(step: int, total_steps: int, eval_every: int, eval_last_step: bool, evaluated: bool) -> bool:
    """Whether the loop evaluates after `step`: every eval_every steps, and at the last step when eval_last_step
    or when nothing was evaluated before (a run must end with a checkpoint to keep)."""
    if step % eval_every == 0:
        return True
    return step == total_steps and (eval_last_step or not evaluated)


@dataclass(frozen=True)
class StepPlan:
    documents: int
    documents_per_step: int
    epoch_steps: tuple[int, ...]  # optimizer steps run in each epoch
    evaluation_steps: tuple[int, ...]  # the steps after which the model is scored on valid
    warmup_steps: int

    @property
    def total_steps(self) -> int:
        return sum(self.epoch_steps)

    def as_row(self) -> dict:
        """The numbers `clinsum plan` prints (and logs) for a variant."""
        return {
            "documents": self.documents, "documents_per_step": self.documents_per_step,
            "steps_per_epoch": steps_per_epoch(self.documents, self.documents_per_step),
            "optimizer_steps": self.total_steps, "evaluations": len(self.evaluation_steps),
            "warmup_steps": self.warmup_steps,
        }


def step_plan(documents: int, documents_per_step: int, epochs: float, eval_every: int, warmup_ratio: float,
              eval_last_step: bool = True) -> StepPlan:
    """The plan of one variant over `documents` training documents."""
    if documents < 1:
        raise ValueError("no training documents to plan for")
    per_epoch = steps_per_epoch(documents, documents_per_step)
    epoch_steps = tuple(training_plan([per_epoch] * math.ceil(epochs), epochs))
    total = sum(epoch_steps)
    evaluations: list[int] = []
    for step in range(1, total + 1):
        if is_evaluation_step(step, total, eval_every, eval_last_step, bool(evaluations)):
            evaluations.append(step)
    return StepPlan(documents, documents_per_step, epoch_steps, tuple(evaluations), math.ceil(warmup_ratio * total))
