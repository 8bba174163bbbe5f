"""The resume state and the best checkpoint.

`checkpoint_dir/state/` holds the one state object of a run, saved and restored whole: the model, the
optimizer, scheduler and gradient scaler, the RNG states, and `Progress` (where the data stands, the best
score so far, the log so far). `checkpoint_dir/best/` holds the best model. Directories are replaced
atomically (written beside, then swapped in), so a kill never leaves a half-written state. A state is bound
to a fingerprint of the inputs, settings and training code: any change discards it and training starts over.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..codegraph import closure_files
from ..io import fingerprint as io_fingerprint
from ..io import read_json, write_json
from ..trainlog import read_log, write_log


@dataclass
class Progress:
    """Where a run stands: the next step to run (epoch, position), the best checkpoint, the log so far."""

    fingerprint: str
    total_steps: int
    step: int = 0
    epoch: int = 0
    position: int = 0
    best_score: float | None = None
    best_step: int | None = None
    rows: list[dict] = field(default_factory=list)


def fingerprint(train_path, valid_path, model_dir, settings, teacher_topk, answer_budget) -> str:
    """What a resume state belongs to: input file versions, settings (the variant among them) and the code
    training runs (the train package and every module it imports)."""
    return io_fingerprint(
        [asdict(settings), answer_budget],
        files=[train_path, valid_path, model_dir, *sorted(teacher_topk)],
        code_files=closure_files("train"),
    )


def rng_state(device) -> dict:
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def swap_in(tmp: Path, final: Path) -> None:
    """Replace directory `final` by `tmp`; a crash in between leaves `final.old`, which loading accepts."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def complete_dir(path: Path, marker: str) -> Path | None:
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / marker).exists():
            return candidate
    return None


def save_state(checkpoint_dir: Path, model, trainer: dict, progress: Progress) -> None:
    """The whole state: model, `trainer` (optimizer, scheduler, scaler and RNG state dicts), progress."""
    import torch

    tmp = checkpoint_dir / "state.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model")
    torch.save(trainer, tmp / "trainer.pt")
    write_log(tmp / "train_log.csv", progress.rows)
    write_json(tmp / "progress.json", {key: value for key, value in asdict(progress).items() if key != "rows"})
    swap_in(tmp, checkpoint_dir / "state")


def load_state(checkpoint_dir: Path, key: str) -> tuple[Path, Progress] | None:
    """(state directory, progress) of a saved state made with the same fingerprint, or None."""
    state_dir = complete_dir(checkpoint_dir / "state", "progress.json")
    if state_dir is None:
        return None
    saved = read_json(state_dir / "progress.json")
    if saved["fingerprint"] != key:
        return None
    return state_dir, Progress(**saved, rows=read_log(state_dir / "train_log.csv"))


def discard(checkpoint_dir: Path) -> None:
    for stale in ("state", "state.old", "state.tmp", "best", "best.old", "best.tmp"):
        shutil.rmtree(checkpoint_dir / stale, ignore_errors=True)


def save_best(checkpoint_dir: Path, model, tokenizer, record: dict) -> None:
    """The model as it is now, with its tokenizer and `best.json` (step, variant, scores), as the best one."""
    tmp = checkpoint_dir / "best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.use_cache = True  # the published model generates with its cache
    model.save_pretrained(tmp)
    model.config.use_cache = False
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "best.json", record)
    swap_in(tmp, checkpoint_dir / "best")
