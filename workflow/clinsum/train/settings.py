"""The training settings: the config's `train` section for one variant, as read-only attributes."""

from __future__ import annotations

from dataclasses import dataclass

from ..io import ClinsumError
from ..settings import parse_settings
from ..variants import variant


@dataclass(frozen=True)
class TrainSettings:
    """What one variant trains with; built from the validated `train` section (the schema's defaults)."""

    variant: str
    gamma: float
    lr: float
    epochs: float
    eval_every: int
    seed: int
    warmup_ratio: float
    weight_decay: float
    documents_per_step: int
    tokens_per_batch: int
    gradient_checkpointing: bool
    trainable_layers: int | None
    dtype: str
    eval_max_new_tokens: int
    eval_batch_size: int
    eval_repetition_penalty: float
    max_grad_norm: float
    loss_on_prompt: bool
    eval_last_step: bool
    kl_beta: float
    kl_temperature: float
    select_metric: str
    select_stemmer: bool

    @classmethod
    def from_section(cls, section: dict, name: str, source: str = "--settings") -> "TrainSettings":
        """From the config's train section (defaults filled in by the schema); `documents_per_step` is the
        per-variant mapping, of which the variant takes its own value."""
        variant(name)  # a known variant, or an error naming the known ones
        train = parse_settings({"train": section}, source)["train"]
        if name not in train["documents_per_step"]:
            raise ClinsumError(f"{source}: train.documents_per_step has no value for the variant {name}")
        return cls(
            variant=name,
            **{key: train[key] for key in cls._plain_keys()},
            documents_per_step=train["documents_per_step"][name],
            kl_beta=train["kl"]["beta"],
            kl_temperature=train["kl"]["temperature"],
            select_metric=train["selection"]["metric"],
            select_stemmer=train["selection"]["use_stemmer"],
        )

    @classmethod
    def _plain_keys(cls) -> list[str]:
        nested = {"variant", "documents_per_step", "kl_beta", "kl_temperature", "select_metric", "select_stemmer"}
        return [name for name in cls.__dataclass_fields__ if name not in nested]

    def loss_weights(self) -> tuple[float, float]:
        """(γ, β) of the dual loss, as the variant's table entry reads them (clinsum.variants)."""
        return variant(self.variant).loss_weights(self.gamma, self.kl_beta)
