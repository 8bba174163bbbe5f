"""Reward tuning: GRPO on the task's own rewards, after the paper's supervised distillation (the `grpo` variant).

It starts from a trained student (`reward.start`, e.g. distil) and tunes it with TRL's GRPOTrainer on the
training split's reports: for each report, `group_size` summaries are sampled with the inference prompt (the
language's summarization prompt, the same chat formatting as inference), each scored by clinsum.rewards (ROUGE-Lsum
against the reference, BERTScore when weighted, the share of its numbers the report supports, a penalty for a
degenerate summary, closeness to the reference's length), and the policy moves toward the better ones of each
group, kept near the starting model by a KL penalty (`reward.kl`).

A killed run resumes from its last checkpoint (`reward.save_every` steps) in the checkpoint folder; a run with other
inputs or settings starts over. One process tunes into a checkpoint folder at a time. The tuned model, its
tokenizer and `train_log.csv` (per step: loss, each reward term's mean, the KL) are published in the output folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from . import model_files, rewards
from .chat import build_messages, crop_prompt, prompt_ids
from .io import ClinsumError, exclusive_lock, fingerprint, pairs_option, read_json, write_json
from .records import load_documents, read_split
from .settings import parse_settings
from .trainlog import write_log

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "clinsum-inputs.json"


def training_prompts(corpus: dict[str, str], split: dict[str, str], tokenizer, prompts: dict, max_prompt_tokens: int) -> list[dict]:
    """One row per training report with a reference: the conversational prompt inference would give it (its report
    cropped at a token boundary to max_prompt_tokens), the report as the model saw it, the reference and language."""
    rows = []
    for lang in corpus:
        ids = read_split(split[lang], lang)["train"]
        instruction = prompts["summarize"][lang]
        for doc_id, document in load_documents(corpus[lang], ids).items():
            if document.summary is None:
                continue
            report = document.text
            if len(prompt_ids(tokenizer, instruction, report, prompts["role"])) > max_prompt_tokens:
                report = crop_prompt(tokenizer, instruction, report, max_prompt_tokens, prompts["role"])
            messages = build_messages(instruction, report, role=prompts["role"])
            rows.append({"id": doc_id, "prompt": messages, "report": report, "reference": document.summary, "lang": lang})
    if not rows:
        raise ClinsumError("no training report with a reference to tune on (the train splits are empty)")
    return rows


def passes_per_step(settings: dict) -> int:
    """The forward and backward passes of a step: its prompts_per_step × group_size summaries, summaries_per_batch
    at a time (the configuration's check names the keys before any job; this one guards a direct call)."""
    summaries = settings["prompts_per_step"] * settings["group_size"]
    if summaries % settings["summaries_per_batch"]:
        raise ClinsumError(f"reward.summaries_per_batch ({settings['summaries_per_batch']}) does not divide a step's "
                           f"{summaries} summaries")
    return summaries // settings["summaries_per_batch"]


def grpo_config(settings: dict, checkpoint_dir: Path, device: str):
    """TRL's GRPOConfig from the reward section: a step generates prompts_per_step reports × group_size summaries
    at once (TRL's generation batch: its default of one per optimizer step) and passes over them
    summaries_per_batch at a time, accumulating the gradient."""
    from trl import GRPOConfig

    weights = settings["weights"]
    cuda = device == "cuda"
    return GRPOConfig(
        output_dir=str(checkpoint_dir), max_steps=settings["steps"], learning_rate=settings["lr"], beta=settings["kl"],
        num_generations=settings["group_size"],
        per_device_train_batch_size=settings["summaries_per_batch"],
        gradient_accumulation_steps=passes_per_step(settings),
        max_completion_length=settings["max_new_tokens"],
        temperature=settings["temperature"], top_p=settings["top_p"],
        reward_weights=[float(weights[term]) for term in rewards.TERMS if weights.get(term)],
        save_strategy="steps", save_steps=settings["save_every"], save_total_limit=1, logging_steps=1,
        report_to="none", seed=settings["seed"], data_seed=settings["seed"], use_cpu=not cuda,
        bf16=cuda and settings["dtype"] in ("auto", "bfloat16"), fp16=cuda and settings["dtype"] == "float16",
        gradient_checkpointing=settings["gradient_checkpointing"], use_vllm=settings["use_vllm"],
        vllm_mode="colocate", vllm_gpu_memory_utilization=settings["vllm_gpu_memory_utilization"],
        vllm_max_model_length=settings["max_prompt_tokens"] + settings["max_new_tokens"],
        disable_tqdm=True, remove_unused_columns=False,
    )


def log_rows(history: list[dict]) -> list[dict]:
    """train_log.csv rows from TRL's log history: the loss, the learning rate, the summed reward, each term's mean
    (rewards/reward_{term}/mean) and the KL, per step."""
    rows = []
    for entry in history:
        if "loss" not in entry or "step" not in entry:
            continue
        row = {"step": int(entry["step"]), "loss": entry["loss"], "lr": entry.get("learning_rate"),
               "reward": entry.get("reward"), "kl": entry.get("kl")}
        row.update({f"reward_{term}": entry.get(f"rewards/reward_{term}/mean") for term in rewards.TERMS})
        rows.append(row)
    return rows


def _resume_point(checkpoint_dir: Path, key: str) -> str | None:
    """The last checkpoint of a run with these inputs and settings; a folder of another run is emptied."""
    from transformers.trainer_utils import get_last_checkpoint

    marker = checkpoint_dir / FINGERPRINT_FILE
    if checkpoint_dir.is_dir() and (not marker.is_file() or read_json(marker).get("key") != key):
        log.warning("%s belongs to other inputs or settings: starting over", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"key": key})
    return get_last_checkpoint(str(checkpoint_dir))


def tune(start_dir, corpus: dict[str, str], split: dict[str, str], settings: dict, prompts: dict, out_dir,
         checkpoint_dir, bertscore_models: dict[str, str] | None = None, device: str | None = None, callbacks=(),
         bertscore: dict | None = None) -> dict:
    """GRPO from `start_dir`; publish the tuned model in `out_dir`; return a summary. `bertscore_models` and
    `bertscore`: each language's encoder directory and the evaluation's BERTScore settings (when weighted);
    `callbacks`: extra TRL callbacks (tests stop a run with one)."""
    checkpoint_dir = Path(checkpoint_dir)
    with exclusive_lock(checkpoint_dir.with_name(checkpoint_dir.name + ".lock"), f"the reward tuning state {checkpoint_dir}"):
        return _tune(Path(start_dir), corpus, split, settings, prompts, Path(out_dir), checkpoint_dir, bertscore_models,
                     device, list(callbacks), bertscore)


def _tune(start_dir, corpus, split, settings, prompts, out_dir, checkpoint_dir, bertscore_models, device, callbacks,
          bertscore) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    started = time.perf_counter()
    model_files.check_weights(start_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = model_files.load_tokenizer(start_dir)
    # a decoder reads ids and the attention mask: a tokenizer that also returns token_type_ids (a GGUF-made
    # one) would have TRL pass them to generate, which refuses them
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    rows = training_prompts(corpus, split, tokenizer, prompts, settings["max_prompt_tokens"])
    key = fingerprint([settings, prompts, bertscore], files=[start_dir, *corpus.values(), *split.values()])
    resume = _resume_point(checkpoint_dir, key)
    scorer = _bertscore_scorer(settings, bertscore, bertscore_models, device)
    functions, _ = rewards.trl_reward_functions(settings["weights"], scorer, settings["max_new_tokens"])
    model = AutoModelForCausalLM.from_pretrained(start_dir, dtype=torch.float32)
    model_files.freeze_lower_layers(model, settings["trainable_layers"], "reward.trainable_layers")
    trainer = GRPOTrainer(model=model, reward_funcs=functions, args=grpo_config(settings, checkpoint_dir, device),
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=callbacks)
    log.info("GRPO from %s: %d training reports, %d steps of %d reports x %d summaries%s", start_dir, len(rows),
             settings["steps"], settings["prompts_per_step"], settings["group_size"],
             f", resuming from {resume}" if resume else "")
    trainer.train(resume_from_checkpoint=resume)
    return _publish(trainer, tokenizer, out_dir, checkpoint_dir, started, len(rows), resume)


def _publish(trainer, tokenizer, out_dir: Path, checkpoint_dir: Path, started: float, reports: int, resume) -> dict:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    rows = log_rows(trainer.state.log_history)
    write_log(tmp / "train_log.csv", rows)
    summary = {"steps": trainer.state.global_step, "reports": reports, "resumed_from": resume,
               "seconds": round(time.perf_counter() - started, 1),
               "last_rewards": {key: value for key, value in (rows[-1] if rows else {}).items() if key.startswith("reward")}}
    write_json(tmp / "reward.json", summary)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    log.info("done: %s", json.dumps(summary))
    return summary


def _bertscore_scorer(settings: dict, bertscore: dict | None, encoders: dict[str, str] | None, device: str):
    """BERTScore F1 of summaries against references as the evaluation scores each language (its encoder, layer,
    batch size, truncation), when its term is weighted."""
    if not settings["weights"].get("bertscore"):
        return None
    if not encoders or not bertscore:
        raise ClinsumError("reward.weights.bertscore > 0 needs the evaluation's encoder of each language "
                           "(--bertscore-model LANG=DIR) and its settings (--bertscore-settings)")
    from .metrics import bertscore as score_pairs
    from .metrics import resolve_num_layers

    def score(summaries: list[str], references: list[str], langs: list[str]) -> list[float]:
        values = [0.0] * len(summaries)
        for lang in dict.fromkeys(langs):
            if lang not in encoders or lang not in bertscore:
                raise ClinsumError(f"reward.weights.bertscore: no encoder for language {lang}")
            bert = bertscore[lang]
            rows = [i for i, value in enumerate(langs) if value == lang]
            scores = score_pairs([summaries[i] for i in rows], [references[i] for i in rows], encoders[lang],
                                 resolve_num_layers(bert["model"], encoders[lang], bert["num_layers"]),
                                 bert["batch_size"], device, max_tokens=bert["max_tokens"], clamp=bert["clamp"])
            for i, row in zip(rows, scores):
                values[i] = row["bertscore_f"]
        return values

    return score


def _run(args) -> None:
    config = parse_settings(args.settings)
    corpus, split = pairs_option(args.corpus, "--corpus"), pairs_option(args.split, "--split")
    encoders = pairs_option(args.bertscore_model, "--bertscore-model") if args.bertscore_model else None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bertscore = json.loads(args.bertscore_settings) if args.bertscore_settings else None
    tune(args.start, corpus, split, config["reward"], config["prompts"], args.out, args.checkpoint_dir, encoders, args.device,
         bertscore=bertscore)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("reward", help="GRPO from a trained variant on the task's rewards (the grpo variant)")
    parser.add_argument("--start", required=True, help="results/models/{reward.start}: the trained model to tune")
    parser.add_argument("--corpus", nargs="+", required=True, help="LANG=results/corpus/{lang}.jsonl")
    parser.add_argument("--split", nargs="+", required=True, help="LANG=results/split/{lang}.json (their train ids)")
    parser.add_argument("--settings", required=True,
                        help='JSON: {"reward": <the config\'s reward section>, "prompts": {"summarize": ..., "role": ...}}')
    parser.add_argument("--bertscore-model", nargs="*", help="LANG=encoder directory, when reward.weights.bertscore > 0")
    parser.add_argument("--bertscore-settings",
                        help="JSON: {LANG: the evaluation's bertscore settings (model, num_layers, batch_size, max_tokens, "
                        "clamp)}, when reward.weights.bertscore > 0")
    parser.add_argument("--out", required=True, help="results/models/grpo")
    parser.add_argument("--checkpoint-dir", required=True, help="resume state (results/checkpoints/grpo); removed on success")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.set_defaults(func=_run)
