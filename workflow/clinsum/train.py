"""Stage 2: fine-tune the student with the dual loss, select the best checkpoint on generated text.

Variants: `standard` (summarize sequences only, L = L_sum), `distil` (both tasks, L = γ·L_sum +
(1−γ)·L_ext) and `distil_kl` (the extract term adds a KL to the teacher's top-k log-probabilities; its
extract sequences use the teacher's own generated token ids so that positions line up). The loss and its
reduction are defined in `losses.py`; batching in `batching.py`.

An optimizer step takes `documents_per_step` whole documents (the paper: 1 for distil, 2 for standard),
each document's summarize and extract sequences together. Its sequences run in micro-batches under
`tokens_per_batch` (padding counts) whose gradients accumulate into exactly the step's (speed and memory
only: the step and its loss are the same for any budget). fp32 master weights with bf16 autocast on GPUs
that have it (fp16 with a gradient scaler on those that do not), fp32 on CPU. Every `eval_every` steps and
at the end: greedy summaries of the valid split's summarize records, ROUGE against their references, and
the best checkpoint by the selection metric (ROUGE-L F1, or the mean of ROUGE-1/2/L F1 as the paper's
code; ties keep the earlier) is kept; then the resume state is saved.

Resume: `checkpoint_dir/state/` holds the model, optimizer, scheduler, gradient scaler, RNG states, data
position (epoch, batch), best score and the log so far; `checkpoint_dir/best/` the best model. A killed
job restarts from the last saved state. The state is bound to a fingerprint of the inputs, settings and
code: if any of them changed, it is discarded and training starts over. SIGTERM (SLURM's time limit) or
SIGINT saves the state at the end of the current step and stops. After a successful run the best model,
`train_log.csv` and `train_curve.png` are written to the output directory and the checkpoint directory
is removed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .batching import epoch_seed, training_plan
from .chat import build_messages, encode_example, encode_prompt
from .generation import native_bf16
from .io import ClinsumError, atomic_path, read_json, read_jsonl, write_json

log = logging.getLogger(__name__)

VARIANTS = ("standard", "distil", "distil_kl")
LOG_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "loss_sum",
    "loss_ext",
    "loss_kl",
    "lr",
    "tokens_per_s",
    "valid_rouge1",
    "valid_rouge2",
    "valid_rougeL",
    "valid_selection",
)
CODE_MODULES = ("train", "losses", "batching", "chat", "generation", "metrics")
# what selects the checkpoint: ROUGE-L F1 (ours), or the mean of ROUGE-1, -2 and -L F1 (the paper's code)
SELECTION_METRICS = ("rougeL", "rouge_mean")
PROBE_TEXT = "Paciente de 45 años, diagnóstico: neumonía; résumé clinique — 3.5 mg/kg, IL-6 ↑. Résultats normaux."


@dataclass(frozen=True)
class TrainSettings:
    """The `train:` section of config (minus variants and resources), with the schema's defaults."""

    gamma: float = 0.8
    lr: float = 1.0e-5
    epochs: float = 3
    eval_every: int = 250
    seed: int = 42
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    documents_per_step: int = 1
    tokens_per_batch: int = 16384
    gradient_checkpointing: bool = False
    trainable_layers: int | None = None
    dtype: str = "auto"
    eval_max_new_tokens: int = 256
    eval_batch_size: int = 16
    eval_repetition_penalty: float = 1.0
    max_grad_norm: float = 1.0
    kl_beta: float = 0.5
    kl_temperature: float = 1.0
    select_metric: str = "rougeL"
    select_stemmer: bool = False

    @classmethod
    def from_dict(cls, settings: dict, variant: str | None = None) -> "TrainSettings":
        """From the config's train section; `documents_per_step` may be the per-variant mapping, then
        `variant` picks its value."""
        settings = {k: v for k, v in settings.items() if k not in ("variants", "resources")}
        nested = {"kl": ("kl_", settings.pop("kl", None) or {}), "selection": ("select_", settings.pop("selection", None) or {})}
        per_step = settings.get("documents_per_step")
        if isinstance(per_step, dict):
            if variant not in per_step:
                raise ClinsumError(f"train.documents_per_step gives no value for the {variant} variant")
            settings["documents_per_step"] = per_step[variant]
        values = dict(settings)
        for prefix, section in nested.values():
            values.update({prefix + key.removeprefix("use_"): value for key, value in section.items()})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ClinsumError(f"train settings: unknown keys {unknown}")
        if values.get("select_metric", cls.select_metric) not in SELECTION_METRICS:
            raise ClinsumError(f"train.selection.metric must be one of {SELECTION_METRICS}")
        return cls(**values)


def freeze_lower_layers(model, trainable_layers: int | None) -> None:
    """Train only the top `trainable_layers` decoder layers and the final norm (None: every parameter).

    The embeddings (tied to the LM head in small models) and the lower layers stay as they are, so the
    backward pass stops at the first trainable layer: about half the compute of full fine-tuning when few
    layers train. For CPU runs; the paper trains every parameter.
    """
    if trainable_layers is None:
        return
    layers = model.model.layers
    if not 1 <= trainable_layers <= len(layers):
        raise ClinsumError(f"train.trainable_layers must lie between 1 and {len(layers)} (the model's layers), got {trainable_layers}")
    model.requires_grad_(False)
    for layer in layers[len(layers) - trainable_layers :]:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)
    if model.config.tie_word_embeddings is False:
        model.lm_head.requires_grad_(True)


def is_improvement(score: float, best: float | None) -> bool:
    """A checkpoint replaces the best one only if it scores strictly higher (ties keep the earlier)."""
    return best is None or score > best


def select_best(scores: list[tuple[int, float]]) -> tuple[int, float]:
    """(step, score) of the checkpoint the training loop keeps, for scores in evaluation order."""
    best: tuple[int, float] | None = None
    for step, score in scores:
        if is_improvement(score, None if best is None else best[1]):
            best = (step, score)
    if best is None:
        raise ValueError("no scores")
    return best


def task_weights(variant: str, settings: TrainSettings) -> tuple[float, float]:
    """(gamma, beta) of the loss: standard trains the summary loss alone (gamma 1); β only for distil_kl."""
    if variant == "standard":
        return 1.0, 0.0
    if variant == "distil":
        return settings.gamma, 0.0
    return settings.gamma, settings.kl_beta


def document_units(langs, ids) -> list[list[int]]:
    """Row indices grouped by document: a document's summarize and extract sequences share every step."""
    units: dict[tuple[str, str], list[int]] = {}
    for index, key in enumerate(zip(langs, ids)):
        units.setdefault(key, []).append(index)
    return list(units.values())


# ---------------------------------------------------------------------------------------------------
# data


def _file_signature(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _dir_signature(path: Path) -> str:
    return "|".join(_file_signature(p) for p in sorted(Path(path).rglob("*")) if p.is_file())


def validate_records(path: Path, variant: str) -> dict:
    """Check the crop records this variant trains on; return how many there are and how many of its extract
    records come from a teacher prompt cropped to teacher.max_prompt_tokens. Errors name the record."""
    wanted = {"standard": {"summarize"}, "distil": {"summarize", "extract"}, "distil_kl": {"summarize", "extract"}}
    count = extract = teacher_cropped = 0
    for number, record in enumerate(read_jsonl(path), start=1):
        missing = [key for key in ("id", "lang", "task", "messages") if key not in record]
        if missing:
            raise ClinsumError(f"{path}: record {number} lacks {missing}")
        where = f"{path}: record {number} (id {record['id']}, {record['task']})"
        if record["task"] not in ("summarize", "extract"):
            raise ClinsumError(f"{where}: task must be summarize or extract")
        messages = record["messages"]
        if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
            raise ClinsumError(f"{where}: messages must end with the assistant turn")
        if record["task"] not in wanted[variant]:
            continue
        if variant == "distil_kl" and record["task"] == "extract" and not record.get("teacher_token_ids"):
            raise ClinsumError(
                f"{where}: no teacher_token_ids; distil_kl needs the teacher's generated ids "
                "(run the teacher with top_logprobs > 0 and crop again)"
            )
        count += 1
        if record["task"] == "extract":
            extract += 1
            teacher_cropped += int(bool(record.get("teacher_prompt_cropped")))
    return {"records": count, "extract": extract, "teacher_prompt_cropped": teacher_cropped}


def _raw_records(path: str, signature: str, variant: str):
    """The fields training needs; `signature` only keys the datasets cache to the file's version."""
    tasks = ("summarize",) if variant == "standard" else ("summarize", "extract")
    for record in read_jsonl(path):
        if record["task"] in tasks:
            yield {
                "id": str(record["id"]),
                "lang": record["lang"],
                "task": record["task"],
                "messages": json.dumps(record["messages"], ensure_ascii=False),
                "teacher_token_ids": list(record.get("teacher_token_ids") or []),
            }


@lru_cache(maxsize=4)
def _tokenizer(tokenizer_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _tokenize(batch: dict, tokenizer_dir: str, tokenizer_signature: str, variant: str, answer_budget, source: str):
    """datasets.map function (batched). tokenizer_signature only keys the cache to the tokenizer files."""
    from .losses import TASK_ID, teacher_answer_ids

    tokenizer = _tokenizer(tokenizer_dir)
    end_of_turn = encode_example(tokenizer, build_messages("x", "x", ""))[1]
    special = set(tokenizer.all_special_ids)
    out = {"input_ids": [], "prompt_len": [], "length": [], "task_id": [], "kl_rows": []}
    for doc_id, messages, task, teacher_ids in zip(batch["id"], batch["messages"], batch["task"], batch["teacher_token_ids"]):
        try:
            prompt_ids, answer_ids = encode_example(tokenizer, json.loads(messages))
        except ValueError as error:
            raise ClinsumError(f"{source}: document {doc_id} ({task}): {error}") from None
        kl_rows = 0
        if variant == "distil_kl" and task == "extract":
            answer_ids, kl_rows = teacher_answer_ids(teacher_ids, end_of_turn, special, answer_budget)
        out["input_ids"].append(prompt_ids + answer_ids)
        out["prompt_len"].append(len(prompt_ids))
        out["length"].append(len(prompt_ids) + len(answer_ids))
        out["task_id"].append(TASK_ID[task])
        out["kl_rows"].append(kl_rows)
    return out


def tokenized_dataset(path, tokenizer_dir, variant, cache_dir, answer_budget=None, num_proc=None):
    """Train records as a memory-mapped Arrow dataset (cached in cache_dir, keyed by file versions)."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(path)
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "lang": datasets.Value("string"),
            "task": datasets.Value("string"),
            "messages": datasets.Value("string"),
            "teacher_token_ids": datasets.Sequence(datasets.Value("int32")),
        }
    )
    raw = datasets.Dataset.from_generator(
        _raw_records,
        gen_kwargs={"path": str(path), "signature": _file_signature(path), "variant": variant},
        features=features,
        cache_dir=str(cache_dir),
    )
    if len(raw) == 0:
        raise ClinsumError(f"{path}: no records to train the {variant} variant on")
    tokenized = raw.map(
        _tokenize,
        batched=True,
        batch_size=256,
        fn_kwargs={
            "tokenizer_dir": str(tokenizer_dir),
            "tokenizer_signature": _dir_signature(Path(tokenizer_dir) / "tokenizer.json")
            if (Path(tokenizer_dir) / "tokenizer.json").exists()
            else _dir_signature(Path(tokenizer_dir)),
            "variant": variant,
            "answer_budget": answer_budget,
            "source": str(path),
        },
        remove_columns=["messages", "teacher_token_ids"],
        num_proc=num_proc if num_proc and len(raw) >= 2000 else None,
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                "lang": datasets.Value("string"),
                "task": datasets.Value("string"),
                "input_ids": datasets.Sequence(datasets.Value("int32")),
                "prompt_len": datasets.Value("int32"),
                "length": datasets.Value("int32"),
                "task_id": datasets.Value("int8"),
                "kl_rows": datasets.Value("int32"),
            }
        ),
    )
    return tokenized


def valid_prompts(path, tokenizer) -> tuple[list[list[int]], list[str]]:
    """Prompt ids (messages without the assistant turn) and reference summaries of the summarize records."""
    prompts, references = [], []
    for record in read_jsonl(path):
        if record.get("task") == "summarize":
            prompts.append(encode_prompt(tokenizer, record["messages"]))
            references.append(record["messages"][-1]["content"])
    if not prompts:
        raise ClinsumError(f"{path}: no summarize records to select the checkpoint on")
    return prompts, references


class TeacherTopk:
    """The teacher's top-k sidecars, {lang: results/teacher/{lang}.topk.safetensors}, read lazily."""

    def __init__(self, paths: list[str]):
        from safetensors import safe_open

        self.paths = {}
        for path in paths:
            name = Path(path).name
            if not name.endswith(".topk.safetensors"):
                raise ClinsumError(f"{path}: expected a file named {{lang}}.topk.safetensors")
            self.paths[name[: -len(".topk.safetensors")]] = path
        self.handles = {lang: safe_open(path, framework="numpy") for lang, path in self.paths.items()}

    def check(self, dataset) -> int:
        """Every distil_kl extract sequence has its rows; return k."""
        ks = set()
        for doc_id, lang, task_id, kl_rows in zip(dataset["id"], dataset["lang"], dataset["task_id"], dataset["kl_rows"]):
            if kl_rows == 0:
                continue
            if lang not in self.handles:
                raise ClinsumError(f"no teacher top-k file for language {lang!r} (have {sorted(self.paths)})")
            handle, path = self.handles[lang], self.paths[lang]
            keys = self._keys(lang)
            if f"{doc_id}/ids" not in keys or f"{doc_id}/logprobs" not in keys:
                raise ClinsumError(f"{path}: no top-k rows for document {doc_id}")
            shape = handle.get_slice(f"{doc_id}/ids").get_shape()
            if shape != handle.get_slice(f"{doc_id}/logprobs").get_shape() or shape[0] < kl_rows:
                raise ClinsumError(f"{path}: document {doc_id} has top-k rows of shape {shape}, needs {kl_rows} rows")
            ks.add(shape[1])
        if len(ks) > 1:
            raise ClinsumError(f"teacher top-k files mix k values {sorted(ks)}")
        return ks.pop() if ks else 0

    @lru_cache(maxsize=None)
    def _keys(self, lang):
        return set(self.handles[lang].keys())

    def rows(self, lang: str, doc_id: str, n: int):
        handle = self.handles[lang]
        return handle.get_slice(f"{doc_id}/ids")[:n], handle.get_slice(f"{doc_id}/logprobs")[:n]


def check_tokenizer_compatible(student_dir, teacher_dir) -> None:
    """Student and teacher must give the same ids to a probe text, to the chat template's special tokens
    and, on their shared id range, to every token (Qwen2.5 heads differ in size, their tokenizers not)."""
    student, teacher = _tokenizer(str(student_dir)), _tokenizer(str(teacher_dir))
    problems = []
    probe_s = student(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    probe_t = teacher(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if probe_s != probe_t:
        problems.append(f"probe text ids differ ({probe_s[:8]}… vs {probe_t[:8]}…)")
    specials = sorted(set(student.all_special_tokens) | set(teacher.all_special_tokens) | {"<|im_start|>", "<|im_end|>"})
    for token in specials:
        ids = student.convert_tokens_to_ids(token), teacher.convert_tokens_to_ids(token)
        if ids[0] != ids[1]:
            problems.append(f"special token {token!r} has ids {ids[0]} vs {ids[1]}")
    shared = min(len(student), len(teacher))
    vocab_s = student.convert_ids_to_tokens(list(range(shared)))
    vocab_t = teacher.convert_ids_to_tokens(list(range(shared)))
    differ = [i for i, (a, b) in enumerate(zip(vocab_s, vocab_t)) if a != b]
    if differ:
        problems.append(f"{len(differ)} of the shared {shared} ids differ (first: id {differ[0]})")
    if problems:
        raise ClinsumError(
            f"student {student_dir} and teacher {teacher_dir} do not share a tokenizer, so the teacher's "
            f"top-k ids cannot be compared with the student's: " + "; ".join(problems[:5])
        )


# ---------------------------------------------------------------------------------------------------
# the loop


def _amp_dtype(setting: str, device):
    """bf16 autocast on GPUs that support it, fp16 on older ones, fp32 on CPU."""
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


def _autocast(device, amp_dtype):
    import contextlib

    import torch

    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def _rng_state(device) -> dict:
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace directory `final` by `tmp`; a crash in between leaves `final.old`, which loading accepts."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _complete_dir(path: Path, marker: str) -> Path | None:
    for candidate in (path, path.with_name(path.name + ".old")):
        if (candidate / marker).exists():
            return candidate
    return None


def write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key in LOG_COLUMNS})


def read_log(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [
            {key: (None if value == "" else (int(value) if key in ("step", "epoch") else float(value))) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def plot_curve(rows: list[dict], path: Path, title: str) -> None:
    """Training loss per step (with a moving average) and valid ROUGE at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, rouge_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "loss"), ("loss_sum", "L_sum"), ("loss_ext", "L_ext"), ("loss_kl", "KL_ext")):
        points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
        if not points:
            continue
        xs, values = [x for x, _ in points], [v for _, v in points]
        window = max(1, len(values) // 50)
        totals = [0.0]
        for value in values:
            totals.append(totals[-1] + value)
        smooth = [(totals[i + 1] - totals[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(values))]
        suffix = f" (moving mean of {window})" if window > 1 else ""
        (line,) = loss_axis.plot(xs, smooth, label=label + suffix)
        if window > 1:
            loss_axis.plot(xs, values, alpha=0.2, color=line.get_color())
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss")
    loss_axis.legend()
    evaluated = [row for row in rows if row.get("valid_selection") is not None]
    for key in ("valid_rouge1", "valid_rouge2", "valid_rougeL"):
        rouge_axis.plot([row["step"] for row in evaluated], [row[key] for row in evaluated], marker="o", label=key[6:])
    if evaluated:
        best = max(evaluated, key=lambda row: (row["valid_selection"], -row["step"]))
        rouge_axis.axvline(best["step"], color="grey", linestyle=":", label=f"best (step {best['step']})")
    rouge_axis.set_xlabel("step")
    rouge_axis.set_ylabel("valid ROUGE F1 (generated)")
    rouge_axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_path(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)


def evaluate_rouge(model, tokenizer, prompts, references, settings: TrainSettings, amp_dtype, device) -> dict:
    """Greedy summaries of the valid prompts, scored with ROUGE F1 (means over documents)."""
    import torch

    from .generation import TransformersGenerator
    from .metrics import mean_scores, rouge_scores

    was_training = model.training
    model.eval()
    # generation reseeds torch; keep the training RNG stream as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with _autocast(device, amp_dtype):
            generator = TransformersGenerator.from_model(model, tokenizer, batch_size=settings.eval_batch_size)
            completions = generator.generate(
                prompts, max_new_tokens=settings.eval_max_new_tokens, repetition_penalty=settings.eval_repetition_penalty
            )
    model.train(was_training)
    means = mean_scores(rouge_scores([c.text for c in completions], references, use_stemmer=settings.select_stemmer))
    return {"rouge1": means["rouge1_f"], "rouge2": means["rouge2_f"], "rougeL": means["rougeL_f"]}


def fingerprint(train_path, valid_path, model_dir, variant, settings: TrainSettings, teacher_topk, answer_budget) -> str:
    """What the resume state belongs to: input file versions, settings, variant and training code."""
    digest = hashlib.sha256()
    parts = [variant, json.dumps(settings.__dict__, sort_keys=True), str(answer_budget)]
    parts += [_file_signature(Path(train_path)), _file_signature(Path(valid_path)), _dir_signature(Path(model_dir))]
    parts += [_file_signature(Path(path)) for path in sorted(teacher_topk)]
    here = Path(__file__).parent
    parts += [(here / f"{module}.py").read_text(encoding="utf-8") for module in CODE_MODULES if (here / f"{module}.py").exists()]
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop saves its state at the end of the step and stops."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test runner thread)
                pass

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    train_path,
    valid_path,
    model_dir,
    variant: str,
    settings: TrainSettings,
    out_dir,
    checkpoint_dir,
    teacher_topk: list[str] | None = None,
    teacher_model=None,
    answer_budget: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    stop_after_steps: int | None = None,
    score_fn=None,
    handle_signals: bool = False,
) -> dict:
    """Train one variant; return a summary (best step and scores, steps run).

    `stop_after_steps` ends the run right after that step without saving anything, as a kill would
    (a test hook). `score_fn(model, step) -> {"rouge1","rouge2","rougeL"}` replaces the generated-text
    evaluation (a test hook).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    from .batching import collate, document_steps, micro_batches
    from .plan import optimizer_plan

    if variant not in VARIANTS:
        raise ClinsumError(f"variant must be one of {VARIANTS}, got {variant!r}")
    teacher_topk = list(teacher_topk or [])
    if variant == "distil_kl":
        if not teacher_topk:
            raise ClinsumError("distil_kl needs the teacher's top-k files (--teacher-topk)")
        if teacher_model is None:
            raise ClinsumError("distil_kl needs the teacher model directory (--teacher-model) to check the tokenizer")
        check_tokenizer_compatible(model_dir, teacher_model)
    if threads:
        torch.set_num_threads(threads)
    train_path, valid_path, out_dir, checkpoint_dir = map(Path, (train_path, valid_path, out_dir, checkpoint_dir))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_dtype = _amp_dtype(settings.dtype, device)
    gamma, beta = task_weights(variant, settings)

    records = validate_records(train_path, variant)
    if records["extract"]:
        log.info(
            "teacher prompts over teacher.max_prompt_tokens (their reports cropped): %d of %d",
            records["teacher_prompt_cropped"], records["extract"],
        )
    key = fingerprint(train_path, valid_path, model_dir, variant, settings, teacher_topk, answer_budget)
    state_dir = _complete_dir(checkpoint_dir / "state", "progress.json")
    progress = read_json(state_dir / "progress.json") if state_dir else None
    if progress is not None and progress["fingerprint"] != key:
        log.warning("%s belongs to other inputs, settings or code: starting over", checkpoint_dir)
        progress = state_dir = None
    if progress is None:
        for stale in ("state", "state.old", "state.tmp", "best", "best.old", "best.tmp"):
            shutil.rmtree(checkpoint_dir / stale, ignore_errors=True)

    tokenizer = _tokenizer(str(model_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dataset = tokenized_dataset(train_path, model_dir, variant, checkpoint_dir / "datasets", answer_budget, threads)
    topk = TeacherTopk(teacher_topk) if variant == "distil_kl" else None
    if topk is not None:
        k = topk.check(dataset)
        log.info("teacher top-k: k=%d for %d extract sequences", k, sum(1 for r in dataset["kl_rows"] if r))
    prompts, references = valid_prompts(valid_path, tokenizer)
    lengths = list(dataset["length"])
    counts = {"summarize": sum(1 for t in dataset["task_id"] if t == 0), "extract": sum(1 for t in dataset["task_id"] if t == 1)}
    log.info("%s: %d train sequences %s, %d valid summaries", variant, len(lengths), counts, len(prompts))
    longest = max(lengths)
    if longest > settings.tokens_per_batch:
        log.warning("the longest sequence (%d tokens) exceeds tokens_per_batch (%d): it gets a batch of its own", longest, settings.tokens_per_batch)

    units = document_units(dataset["lang"], dataset["id"])
    unit_lengths = [max(lengths[i] for i in unit) for unit in units]
    unit_tokens = [sum(lengths[i] for i in unit) for unit in units]
    epochs_steps = [
        document_steps(unit_lengths, settings.documents_per_step, epoch_seed(settings.seed, epoch))
        for epoch in range(math.ceil(settings.epochs))
    ]
    plan = training_plan([len(steps) for steps in epochs_steps], settings.epochs)
    total_steps = sum(plan)
    planned = optimizer_plan(len(units), settings.documents_per_step, settings.epochs, settings.eval_every, settings.warmup_ratio)
    log.info(
        "plan: %d documents, %d a step, %d optimizer steps over %s epochs, %d evaluations (every %d steps and the last), "
        "%d warm-up steps, %.0f tokens a step on average, %d micro-batch budget",
        len(units), settings.documents_per_step, total_steps, settings.epochs, planned["evaluations"],
        settings.eval_every, planned["warmup_steps"], settings.documents_per_step * sum(unit_tokens) / len(units),
        settings.tokens_per_batch,
    )

    _seed_everything(settings.seed)
    source = state_dir / "model" if state_dir else Path(model_dir)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa").to(device)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    freeze_lower_layers(model, settings.trainable_layers)
    model.train()
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    # as transformers' Trainer: no weight decay on biases and norm weights
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        fused=device.type == "cuda",
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(settings.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    step, epoch, position, best_score, best_step, rows = 0, 0, 0, None, None, []
    resumed_from = 0
    if progress is not None:
        trainer_state = torch.load(state_dir / "trainer.pt", map_location=device, weights_only=False)
        optimizer.load_state_dict(trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        scaler.load_state_dict(trainer_state["scaler"])
        _set_rng_state(trainer_state["rng"], device)
        step, epoch, position = progress["step"], progress["epoch"], progress["position"]
        best_score, best_step = progress["best_score"], progress["best_step"]
        rows = read_log(state_dir / "train_log.csv")
        resumed_from = step
        log.info("resuming from step %d of %d (epoch %d, batch %d), best ROUGE-L %s", step, total_steps, epoch, position, best_score)

    def save_state(next_epoch, next_position) -> None:
        tmp = checkpoint_dir / "state.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp / "model")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(device),
            },
            tmp / "trainer.pt",
        )
        write_log(tmp / "train_log.csv", rows)
        write_json(
            tmp / "progress.json",
            {
                "fingerprint": key,
                "step": step,
                "epoch": next_epoch,
                "position": next_position,
                "best_score": best_score,
                "best_step": best_step,
                "total_steps": total_steps,
            },
        )
        _swap_in(tmp, checkpoint_dir / "state")

    def save_best(scores) -> None:
        tmp = checkpoint_dir / "best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.config.use_cache = True
        model.save_pretrained(tmp)
        model.config.use_cache = False
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "best.json", {"step": step, "variant": variant, **{f"valid_{k}_f": v for k, v in scores.items()}})
        _swap_in(tmp, checkpoint_dir / "best")

    stop = _StopFlag()
    if handle_signals:
        stop.install()
    progress_bar = tqdm(total=total_steps, initial=step, desc=f"train {variant}", unit="step", mininterval=1 if os.isatty(2) else 30)
    try:
        while epoch < len(plan):
            steps = epochs_steps[epoch][: plan[epoch]]
            while position < len(steps):
                started = time.perf_counter()
                rows_of_step = [i for unit in steps[position] for i in units[unit]]
                batches = [
                    collate(_examples(dataset, indices, topk), pad_id)
                    for indices in micro_batches(rows_of_step, lengths, settings.tokens_per_batch)
                ]
                lr = scheduler.get_last_lr()[0]
                loss_value, parts, useful = accumulate_gradients(
                    model, batches, scaler, device, amp_dtype, gamma, beta, settings.kl_temperature
                )
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if not math.isfinite(loss_value):
                    raise ClinsumError(f"training loss is {loss_value} at step {step + 1}; lower train.lr or use float32")
                seconds = time.perf_counter() - started
                step += 1
                position += 1
                if position == len(steps):
                    next_epoch, next_position = epoch + 1, 0
                else:
                    next_epoch, next_position = epoch, position
                row = {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss_value,
                    # blank where the step had no token of that term
                    "loss_sum": parts["loss_sum"] if parts["n_sum"] else None,
                    "loss_ext": parts["loss_ext"] if parts["n_ext"] else None,
                    "loss_kl": parts["loss_kl"] if parts["n_kl"] else None,
                    "lr": lr,
                    "tokens_per_s": useful / seconds,
                }
                rows.append(row)
                progress_bar.update(1)
                progress_bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{useful / seconds:,.0f}")
                if step % settings.eval_every == 0 or step == total_steps:
                    scores = score_fn(model, step) if score_fn else evaluate_rouge(
                        model, tokenizer, prompts, references, settings, amp_dtype, device
                    )
                    scores = {**scores, "selection": selection_score(scores, settings.select_metric)}
                    row.update({f"valid_{name}": value for name, value in scores.items()})
                    log.info(
                        "step %d: valid ROUGE-1 %.4f, ROUGE-2 %.4f, ROUGE-L %.4f, %s %.4f", step,
                        scores["rouge1"], scores["rouge2"], scores["rougeL"], settings.select_metric, scores["selection"],
                    )
                    if is_improvement(scores["selection"], best_score):
                        best_score, best_step = scores["selection"], step
                        save_best(scores)
                    save_state(next_epoch, next_position)
                if stop_after_steps is not None and step >= stop_after_steps:
                    log.warning("stopping after step %d (test hook), as a kill would: nothing saved", step)
                    return {"stopped_at": step, "total_steps": total_steps, "resumed_from": resumed_from}
                if stop.signal is not None:
                    save_state(next_epoch, next_position)
                    raise ClinsumError(
                        f"stopped by signal {stop.signal} after step {step}; state saved in {checkpoint_dir}, rerun to resume"
                    )
            epoch, position = epoch + 1, 0
    finally:
        progress_bar.close()
        stop.restore()

    best_dir = _complete_dir(checkpoint_dir / "best", "best.json")
    if best_dir is None:
        raise ClinsumError(f"{checkpoint_dir}: no best checkpoint after training (was it deleted?)")
    _publish(best_dir, out_dir, rows, variant)
    summary = {
        "variant": variant,
        "best_step": best_step,
        "best_score": best_score,
        "selection_metric": settings.select_metric,
        "total_steps": total_steps,
        "resumed_from": resumed_from,
    }
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return summary


def accumulate_gradients(model, batches: list[dict], scaler, device, amp_dtype, gamma, beta, temperature):
    """Forward and backward every micro-batch of one optimizer step, each loss divided by the step's own
    label counts (losses.label_totals), so the accumulated gradient is the whole step's. Returns the step's
    loss, its parts (loss_sum, loss_ext, loss_kl and the counts n_sum, n_ext, n_kl) and its useful tokens."""
    from .losses import batch_loss, label_totals

    totals = label_totals(batches, beta)
    loss_value, useful = 0.0, 0
    parts = {"loss_sum": 0.0, "loss_ext": 0.0, "loss_kl": 0.0, **totals}
    for batch in batches:
        useful += batch.pop("useful_tokens")
        batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
        with _autocast(device, amp_dtype):
            loss, micro = batch_loss(model, batch, gamma, beta, temperature, totals=totals)
        scaler.scale(loss).backward()
        loss_value += float(loss.detach())
        for key in ("loss_sum", "loss_ext", "loss_kl"):
            parts[key] += micro[key]
    return loss_value, parts, useful


def selection_score(scores: dict, metric: str) -> float:
    """The number that selects the checkpoint: ROUGE-L F1, or the mean of ROUGE-1/2/L F1 (the paper's code)."""
    if metric == "rouge_mean":
        return (scores["rouge1"] + scores["rouge2"] + scores["rougeL"]) / 3
    return scores["rougeL"]


def _examples(dataset, indices: list[int], topk: TeacherTopk | None) -> list[dict]:
    columns = dataset[indices]
    examples = []
    for i in range(len(indices)):
        example = {
            "input_ids": columns["input_ids"][i],
            "prompt_len": columns["prompt_len"][i],
            "task": columns["task_id"][i],
        }
        if topk is not None and columns["kl_rows"][i]:
            ids, logprobs = topk.rows(columns["lang"][i], columns["id"][i], columns["kl_rows"][i])
            example["teacher_ids"], example["teacher_logprobs"] = ids, logprobs
        examples.append(example)
    return examples


def _publish(best_dir: Path, out_dir: Path, rows: list[dict], variant: str) -> None:
    """The best model, its tokenizer, the training log and its plot as the output directory."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(best_dir, tmp)
    write_log(tmp / "train_log.csv", rows)
    plot_curve(rows, tmp / "train_curve.png", f"{variant}: training loss and valid ROUGE")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def _run(args) -> None:
    summary = train(
        args.train,
        args.valid,
        args.model,
        args.variant,
        TrainSettings.from_dict(json.loads(args.settings), args.variant),
        args.out,
        args.checkpoint_dir,
        teacher_topk=args.teacher_topk,
        teacher_model=args.teacher_model,
        answer_budget=args.answer_tokens,
        device=args.device,
        threads=args.threads,
        stop_after_steps=args.stop_after_steps,
        handle_signals=True,
    )
    log.info("done: %s", json.dumps(summary))


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune the student (standard | distil | distil_kl), keep the best checkpoint by valid ROUGE-L"
    )
    parser.add_argument("--train", required=True, help="results/data/train.jsonl (crop records)")
    parser.add_argument("--valid", required=True, help="results/data/valid.jsonl (its summarize records select the checkpoint)")
    parser.add_argument("--model", required=True, help="the student model directory to start from")
    parser.add_argument("--variant", required=True, choices=VARIANTS, help="which loss to train with")
    parser.add_argument("--settings", required=True, help="the train section of config as JSON (see config/README.md)")
    parser.add_argument("--out", required=True, help="output directory: best model + tokenizer, train_log.csv, train_curve.png")
    parser.add_argument("--checkpoint-dir", required=True, help="resume state (results/checkpoints/{variant}); removed on success")
    parser.add_argument("--teacher-topk", nargs="*", default=[], help="distil_kl: results/teacher/{lang}.topk.safetensors files")
    parser.add_argument("--teacher-model", help="distil_kl: the teacher model directory (its tokenizer is checked against the student's)")
    parser.add_argument(
        "--answer-tokens", type=int, help="distil_kl: the answer budget (crop.answer_tokens) the teacher's ids are cropped to"
    )
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and tokenization workers")
    parser.add_argument(
        "--stop-after-steps", type=int, help="testing: end after this step without saving, as if the job were killed"
    )
    parser.set_defaults(func=_run)
