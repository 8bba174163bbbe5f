"""The training loop: `train` reads top to bottom; `start` sets a run up (or resumes it), `optimizer_step`
runs one step, `evaluate_and_save` selects checkpoints, `finish` publishes the best one."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .. import model_files
from ..batching import collate, document_steps, epoch_seed, micro_batches
from ..generation import native_bf16
from ..io import ClinsumError, exclusive_lock
from ..losses import batch_loss, label_totals
from ..steps import StepPlan, step_plan
from ..topk import TeacherTopk
from ..trainlog import plot_curves, write_log
from ..variants import variant
from . import checkpoint, data, evaluation
from .settings import TrainSettings

log = logging.getLogger(__name__)


def train(train_path, valid_path, model_dir, settings: TrainSettings, out_dir, checkpoint_dir,
          teacher_topk=(), teacher_model=None, answer_budget=None, device=None, threads=None) -> dict:
    """Train one variant (settings.variant) and publish its best checkpoint in `out_dir`; return a summary.

    A killed run resumes from its last saved state in `checkpoint_dir`; SIGTERM or SIGINT saves the state at
    the end of the current step and stops. One process trains into a checkpoint folder at a time: a second (the
    orphan of a killed Snakemake beside its rerun) stops at once, naming the folder and the process."""
    lock = Path(checkpoint_dir).with_name(Path(checkpoint_dir).name + ".lock")
    with exclusive_lock(lock, f"the training state {checkpoint_dir}"):
        return _train(train_path, valid_path, model_dir, settings, out_dir, checkpoint_dir, teacher_topk, teacher_model,
                      answer_budget, device, threads)


def _train(train_path, valid_path, model_dir, settings, out_dir, checkpoint_dir, teacher_topk, teacher_model,
           answer_budget, device, threads) -> dict:
    run = start(train_path, valid_path, model_dir, settings, Path(out_dir), Path(checkpoint_dir),
                list(teacher_topk), teacher_model, answer_budget, device, threads)
    with StopOnSignal() as stop, progress_bar(run) as bar:
        for epoch, units in run.pending_steps():
            row = optimizer_step(run, epoch, units)
            advance(bar, row)
            if run.progress.step in run.step_plan.evaluation_steps:
                evaluate_and_save(run, row)
            if stop.signal is not None:
                run.save_state()
                raise ClinsumError(f"stopped by signal {stop.signal} after step {run.progress.step}; "
                                   f"state saved in {run.checkpoint_dir}, rerun to resume")
    return finish(run)


@dataclass
class Run:
    """Everything a run holds: settings, data, model and optimizer state, and its progress."""

    settings: TrainSettings
    device: object
    amp_dtype: object
    out_dir: Path
    checkpoint_dir: Path
    dataset: object
    lengths: list
    units: list
    epochs_steps: list
    step_plan: StepPlan
    topk: object
    pad_id: int
    tokenizer: object
    prompts: list
    references: list
    model: object
    optimizer: object
    scheduler: object
    scaler: object
    progress: checkpoint.Progress
    resumed_from: int

    def pending_steps(self):
        """(epoch, the step's document units) of every step still to run; progress points at the next one."""
        plan = self.step_plan.epoch_steps
        while self.progress.epoch < len(plan):
            epoch, position = self.progress.epoch, self.progress.position
            steps = self.epochs_steps[epoch][: plan[epoch]]
            self.progress.position = position + 1
            if self.progress.position >= len(steps):
                self.progress.epoch, self.progress.position = epoch + 1, 0
            if position < len(steps):
                yield epoch, steps[position]

    def autocast(self):
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def save_state(self) -> None:
        trainer = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(self.device),
        }
        checkpoint.save_state(self.checkpoint_dir, self.model, trainer, self.progress)


def optimizer_step(run: Run, epoch: int, units: list[int]) -> dict:
    """One optimizer step over the step's documents, in micro-batches under the token budget whose
    gradients accumulate into the whole step's (losses.label_totals); returns its log row."""
    import torch

    started = time.perf_counter()
    settings, (gamma, beta) = run.settings, run.settings.loss_weights()
    rows_of_step = [i for unit in units for i in run.units[unit]]
    batches = [collate(data.examples(run.dataset, indices, run.topk), run.pad_id, settings.loss_on_prompt)
               for indices in micro_batches(rows_of_step, run.lengths, settings.tokens_per_batch)]
    totals = label_totals(batches, beta)
    lr = run.scheduler.get_last_lr()[0]
    loss_value, useful, parts = 0.0, 0, dict.fromkeys(("loss_sum", "loss_ext", "loss_kl"), 0.0)
    for batch in batches:
        useful += batch.pop("useful_tokens")
        batch = {name: tensor.to(run.device, non_blocking=True) for name, tensor in batch.items()}
        with run.autocast():
            loss, micro = batch_loss(run.model, batch, gamma, beta, settings.kl_temperature, totals=totals)
        run.scaler.scale(loss).backward()
        loss_value += float(loss.detach())
        parts = {key: parts[key] + micro[key] for key in parts}
    run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), settings.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(loss_value):
        raise ClinsumError(f"training loss is {loss_value} at step {run.progress.step + 1}; lower train.lr or use float32")
    run.progress.step += 1
    row = {
        "step": run.progress.step, "epoch": epoch, "loss": loss_value, "lr": lr,
        "tokens_per_s": useful / (time.perf_counter() - started),
        # blank where the step had no token of that term
        "loss_sum": parts["loss_sum"] if totals["n_sum"] else None,
        "loss_ext": parts["loss_ext"] if totals["n_ext"] else None,
        "loss_kl": parts["loss_kl"] if totals["n_kl"] else None,
    }
    run.progress.rows.append(row)
    return row


def evaluate_and_save(run: Run, row: dict) -> None:
    """Score the model on valid, keep it if it is the best so far, then save the resume state."""
    settings, step = run.settings, run.progress.step
    scores = evaluation.validation_scores(
        run.model, run.tokenizer, run.prompts, run.references, settings, run.autocast, run.device
    )
    scores["selection"] = evaluation.selection_score(scores, settings.select_metric)
    row.update({f"valid_{name}": value for name, value in scores.items()})
    log.info("step %d: valid ROUGE-1 %.4f, ROUGE-2 %.4f, ROUGE-L %.4f, %s %.4f", step, scores["rouge1"],
             scores["rouge2"], scores["rougeL"], settings.select_metric, scores["selection"])
    if evaluation.is_improvement(scores["selection"], run.progress.best_score):
        run.progress.best_score, run.progress.best_step = scores["selection"], step
        record = {"step": step, "variant": settings.variant, "selection_metric": settings.select_metric,
                  **{f"valid_{name}": value for name, value in scores.items()}}
        checkpoint.save_best(run.checkpoint_dir, run.model, run.tokenizer, record)
    run.save_state()


def finish(run: Run) -> dict:
    """Publish the best model, its tokenizer, the log and its plot as the output directory."""
    best_dir = checkpoint.complete_dir(run.checkpoint_dir / "best", "best.json")
    if best_dir is None:
        raise ClinsumError(f"{run.checkpoint_dir}: no best checkpoint after training (was it deleted?)")
    tmp = run.out_dir.with_name(run.out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(best_dir, tmp)
    write_log(tmp / "train_log.csv", run.progress.rows)
    plot_curves({run.settings.variant: run.progress.rows}, tmp / "train_curve.png",
                f"{run.settings.variant}: training loss and valid ROUGE")
    if run.out_dir.exists():
        shutil.rmtree(run.out_dir)
    tmp.rename(run.out_dir)
    shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    return {
        "variant": run.settings.variant, "best_step": run.progress.best_step, "best_score": run.progress.best_score,
        "selection_metric": run.settings.select_metric, "total_steps": run.progress.total_steps,
        "resumed_from": run.resumed_from,
    }


# ---------------------------------------------------------------------------------------------------
# setting a run up


def start(train_path, valid_path, model_dir, settings, out_dir, checkpoint_dir, teacher_topk, teacher_model,
          answer_budget, device, threads) -> Run:
    """Check the inputs, tokenize the data, plan the steps, and build (or restore) the model and optimizer."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_path, valid_path = Path(train_path), Path(valid_path)
    records = data.validate_records(train_path, settings.variant)
    topk = check_distil_kl_inputs(settings.variant, model_dir, teacher_topk, teacher_model)
    if records["extract"]:
        log.info("teacher prompts over teacher.max_prompt_tokens (their reports cropped): %d of %d",
                 records["teacher_prompt_cropped"], records["extract"])
    key = checkpoint.fingerprint(train_path, valid_path, model_dir, settings, teacher_topk, answer_budget)
    saved = checkpoint.load_state(checkpoint_dir, key)
    if saved is None:
        if (checkpoint_dir / "state").exists() or (checkpoint_dir / "state.old").exists():
            log.warning("%s belongs to other inputs, settings or code: starting over", checkpoint_dir)
        checkpoint.discard(checkpoint_dir)

    tokenizer = data.load_tokenizer(str(model_dir))
    dataset = data.tokenized_dataset(train_path, model_dir, settings.variant, checkpoint_dir / "datasets", answer_budget, threads)
    if topk is not None:
        log.info("teacher top-k: k=%d for %d extract sequences", topk.check(dataset), sum(1 for r in dataset["kl_rows"] if r))
    prompts, references = data.valid_prompts(valid_path, tokenizer)
    lengths = list(dataset["length"])
    units, epochs_steps, plan = plan_steps(dataset, lengths, settings)
    if saved and saved[1].total_steps != plan.total_steps:
        raise ClinsumError(f"{checkpoint_dir}: a state of {saved[1].total_steps} steps, but the plan has {plan.total_steps}; delete it")
    log.info("%s: %d train sequences, %d documents, %d valid summaries", settings.variant, len(dataset), len(units), len(prompts))

    model, optimizer, scheduler, scaler = build_model(model_dir, saved, settings, device, plan)
    progress = saved[1] if saved else checkpoint.Progress(fingerprint=key, total_steps=plan.total_steps)
    if saved:
        log.info("resuming from step %d of %d (epoch %d, step %d of it), best %s %s", progress.step, progress.total_steps,
                 progress.epoch, progress.position, settings.select_metric, progress.best_score)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Run(settings, device, amp_dtype(settings.dtype, device), out_dir, checkpoint_dir, dataset, lengths, units,
               epochs_steps, plan, topk, pad_id, tokenizer, prompts, references, model, optimizer, scheduler,
               scaler, progress, progress.step)


def check_distil_kl_inputs(name, model_dir, teacher_topk, teacher_model) -> TeacherTopk | None:
    """The teacher's top-k rows, for a variant that learns from them (after checking the tokenizers agree)."""
    if not variant(name).teacher_topk:
        return None
    if not teacher_topk:
        raise ClinsumError(f"{name} needs the teacher's top-k files (--teacher-topk)")
    if teacher_model is None:
        raise ClinsumError(f"{name} needs the teacher model directory (--teacher-model) to check the tokenizer")
    data.check_tokenizer_compatible(model_dir, teacher_model)
    return TeacherTopk(teacher_topk)


def plan_steps(dataset, lengths: list[int], settings: TrainSettings) -> tuple[list, list, StepPlan]:
    """The documents (units of rows), each epoch's optimizer steps of them, and the step plan (clinsum.steps: the
    one `clinsum plan` prints), which the epochs' steps must match."""
    units = data.document_units(dataset["lang"], dataset["id"])
    longest = max(lengths)
    if longest > settings.tokens_per_batch:
        log.warning("the longest sequence (%d tokens) exceeds tokens_per_batch (%d): it gets a micro-batch of its own",
                    longest, settings.tokens_per_batch)
    plan = step_plan(len(units), settings.documents_per_step, settings.epochs, settings.eval_every, settings.warmup_ratio,
                     settings.eval_last_step)
    unit_lengths = [max(lengths[i] for i in unit) for unit in units]
    epochs_steps = [document_steps(unit_lengths, settings.documents_per_step, epoch_seed(settings.seed, epoch))
                    for epoch in range(len(plan.epoch_steps))]
    if any(len(steps) < planned for steps, planned in zip(epochs_steps, plan.epoch_steps)):
        raise ClinsumError(f"the epochs hold {[len(s) for s in epochs_steps]} steps, the plan {list(plan.epoch_steps)}")
    tokens = sum(lengths) / len(units) * settings.documents_per_step
    log.info("plan: %d documents, %d a step, %d optimizer steps over %s epochs, %d evaluations (every %d steps%s), "
             "%d warm-up steps, %.0f tokens a step on average, micro-batches of at most %d tokens; loss on %s",
             len(units), settings.documents_per_step, plan.total_steps, settings.epochs, len(plan.evaluation_steps),
             settings.eval_every, " and the last" if settings.eval_last_step else "", plan.warmup_steps, tokens,
             settings.tokens_per_batch, "prompt and answer tokens" if settings.loss_on_prompt else "answer tokens")
    return units, epochs_steps, plan


def build_model(model_dir, saved, settings: TrainSettings, device, plan: StepPlan):
    """The model (from the saved state when resuming), AdamW with a cosine schedule, the gradient scaler."""
    import torch
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    seed_everything(settings.seed)
    source = saved[0] / "model" if saved else Path(model_dir)
    model_files.check_weights(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa").to(device)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model_files.freeze_lower_layers(model, settings.trainable_layers)
    model.train()
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    # as transformers' Trainer: no weight decay on biases and norm weights
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, fused=device.type == "cuda",
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, plan.warmup_steps, plan.total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(settings.dtype, device) == torch.float16)
    if saved:
        trainer = torch.load(saved[0] / "trainer.pt", map_location=device, weights_only=False)
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        scaler.load_state_dict(trainer["scaler"])
        checkpoint.set_rng_state(trainer["rng"], device)
    return model, optimizer, scheduler, scaler


def amp_dtype(setting: str, device):
    """bf16 autocast on GPUs that support it, fp16 on older ones, fp32 on CPU (and when asked for)."""
    import torch

    if device.type != "cuda":
        if setting not in ("auto", "float32"):
            log.info("dtype %s requested; training on CPU in float32", setting)
        return None
    if setting == "float32":
        return None
    if setting == "float16":
        return torch.float16
    if setting == "bfloat16" or native_bf16():
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StopOnSignal:
    """Notes SIGTERM (SLURM's time limit) or SIGINT; the loop saves its state at the end of the step and stops."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self) -> "StopOnSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._note)
            except ValueError:  # not the main thread: signals stay with whoever handles them
                pass
        return self

    def _note(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def advance(bar, row: dict) -> None:
    """One step on the progress bar. The bar redraws at its own interval (every 30 s into a log file), not on
    every step: set_postfix would otherwise redraw it each time."""
    bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}", refresh=False)
    bar.update(1)


def progress_bar(run: Run):
    from tqdm.auto import tqdm

    return tqdm(total=run.progress.total_steps, initial=run.progress.step, desc=f"train {run.settings.variant}",
                unit="step", mininterval=1 if os.isatty(2) else 30)
