"""Stage 2: fine-tune the student with the dual loss, select the best checkpoint on generated text.

Variants: `standard` (summarize sequences only, L = L_sum), `distil` (both tasks, L = γ·L_sum +
(1−γ)·L_ext) and `distil_kl` (the extract term adds a KL to the teacher's top-k log-probabilities; its
extract sequences use the teacher's own generated token ids so that positions line up).

An optimizer step takes `documents_per_step` whole documents (the paper: 1 for distil, 2 for standard),
each document's summarize and extract sequences together. Its sequences run in micro-batches under
`tokens_per_batch` (padding counts) whose gradients accumulate into exactly the step's (speed and memory
only: the step and its loss are the same for any budget). fp32 master weights with bf16 autocast on GPUs
that have it (fp16 with a gradient scaler on those that do not), fp32 on CPU. Every `eval_every` steps and
at the end: greedy summaries of the valid split's summarize records, ROUGE against their references, and
the best checkpoint by the selection metric (ROUGE-L F1, or the mean of ROUGE-1/2/L F1 as the paper's
code; ties keep the earlier) is kept; then the resume state is saved.

The package, one concern a module: `settings` (the train section for one variant), `data` (records,
tokenization, batches' examples, validation prompts), `checkpoint` (the resume state and the best model),
`evaluation` (validation ROUGE and selection), `loop` (the loop itself). The objective is `clinsum.losses`,
the batching `clinsum.batching`, the log `clinsum.trainlog`.
"""

from __future__ import annotations

import json
import logging

from ..variants import VARIANTS
from .settings import TrainSettings

log = logging.getLogger(__name__)


def _run(args) -> None:
    from .loop import train

    settings = TrainSettings.from_section(json.loads(args.settings)["train"], args.variant)
    summary = train(
        args.train, args.valid, args.model, settings, args.out, args.checkpoint_dir,
        teacher_topk=args.teacher_topk, teacher_model=args.teacher_model, answer_budget=args.answer_tokens,
        device=args.device, threads=args.threads,
    )
    log.info("done: %s", json.dumps(summary))


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune the student (standard | distil | distil_kl), keep the best checkpoint by valid ROUGE"
    )
    parser.add_argument("--train", required=True, help="results/data/train.jsonl (crop records)")
    parser.add_argument("--valid", required=True, help="results/data/valid.jsonl (its summarize records select the checkpoint)")
    parser.add_argument("--model", required=True, help="the student model directory to start from")
    parser.add_argument("--variant", required=True, choices=[name for name, entry in VARIANTS.items() if entry.stage == "train"],
                        help="which loss to train with")
    parser.add_argument("--settings", required=True, help='JSON: {"train": <the config\'s train section>} (see config/README.md)')
    parser.add_argument("--out", required=True, help="output directory: best model + tokenizer, train_log.csv, train_curve.png")
    parser.add_argument("--checkpoint-dir", required=True, help="resume state (results/checkpoints/{variant}); removed on success")
    parser.add_argument("--teacher-topk", nargs="*", default=[], help="distil_kl: results/teacher/{lang}.topk.safetensors files")
    parser.add_argument("--teacher-model", help="distil_kl: the teacher model directory (its tokenizer is checked against the student's)")
    parser.add_argument(
        "--answer-tokens", type=int, help="distil_kl: the answer budget (crop.answer_tokens) the teacher's ids are cropped to"
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and tokenization workers")
    parser.set_defaults(func=_run)
