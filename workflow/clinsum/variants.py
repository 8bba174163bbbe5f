"""The training variants, one entry each: what a variant trains on, what it needs from the teacher, which settings
its loss reads, which stage makes it, and how the report compares it. The rules, the settings, the plan, the
trainer, the report and the docs read this table; adding a variant is one entry here and its loss (clinsum.losses).

    standard:  L = L_sum                                   (summaries only)
    distil:    L = γ·L_sum + (1−γ)·L_ext                   (and the teacher's key information)
    distil_kl: L = γ·L_sum + (1−γ)·[(1−β)·L_ext + β·KL_ext] (and the teacher's top-k log-probabilities)
    grpo:      GRPO on the task's own rewards (clinsum.rewards), from the trained variant `reward.start`
"""

from __future__ import annotations

from dataclasses import dataclass

from .io import ClinsumError


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    tasks: tuple[str, ...]  # the sequences each training document brings, in order
    teacher_output: bool  # learns from the teacher's key information: Stage 1 runs for it
    teacher_topk: bool  # learns from the teacher's top-k log-probabilities (teacher.top_logprobs > 0)
    loss_keys: tuple[str, ...]  # the train keys its loss reads besides the common ones (gamma, kl)
    compare_with: str | None  # the variant the report's paired bootstrap compares it with, besides base
    stage: str = "train"  # the rule that makes it: train (from the student) or reward (from reward.start)

    def loss_weights(self, gamma: float, beta: float) -> tuple[float, float]:
        """(γ, β) of clinsum.losses.dual_loss: the summary term alone (γ = 1) unless the loss reads gamma, and a KL
        term (β) only when it reads kl."""
        return (gamma if "gamma" in self.loss_keys else 1.0, beta if "kl" in self.loss_keys else 0.0)


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant("standard", "the summary loss alone (conventional fine-tuning)", ("summarize",), False, False, (), None),
        Variant("distil", "γ·L_sum + (1−γ)·L_ext: the summary and the teacher's key information",
                ("summarize", "extract"), True, False, ("gamma",), "standard"),
        Variant("distil_kl", "distil with a KL term on the teacher's top-k log-probabilities in the extraction loss",
                ("summarize", "extract"), True, True, ("gamma", "kl"), "standard"),
        # compared with the variant it starts from (reward.start), which the configuration names
        Variant("grpo", "GRPO on the task's rewards (ROUGE-Lsum, BERTScore, faithful numbers, no degeneration, "
                "length), from the trained variant reward.start", ("summarize",), False, False, (), None, "reward"),
    )
}


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ClinsumError(f"train.variants: unknown variant {name!r} (known: {', '.join(VARIANTS)})")
    return VARIANTS[name]


def trained(names: list[str], stage: str = "train") -> list[str]:
    """The variants among `names` that `stage` makes (train: from the student; reward: from another variant)."""
    return [name for name in names if variant(name).stage == stage]


def needs_teacher(names: list[str]) -> bool:
    """Whether Stage 1 (the teacher) runs: a configured variant learns from its output."""
    return any(variant(name).teacher_output for name in names)


def needs_teacher_topk(names: list[str]) -> bool:
    return any(variant(name).teacher_topk for name in names)
