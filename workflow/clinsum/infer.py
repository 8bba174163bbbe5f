"""Inference: a student (the untuned `base` or a trained variant) summarizes one language's test split.

Each report is formatted with that language's summarization prompt (`prompts.summarize[lang]`, in the
system turn by default) through `chat.build_messages`/`chat.encode_prompt`, exactly as in training. A
report whose prompt exceeds `max_input_tokens` is cropped at a token boundary (`chat.crop_prompt`) and
flagged `input_truncated`.

The guard (`guard: true`) is for half precision, e.g. float16 on a T4, which has no bfloat16: float16
overflows to inf/NaN, and a model with NaN logits emits one token over and over (token 0, which is
`!` for Qwen and `<|endoftext|>` for SmolLM2). Outputs that look like that (`degenerate_reason`) are
redone in float32, in a second pass with a float32 generator loaded only when needed (after the first
generator is closed, so two vLLM engines never share the GPU); those records carry `fp32_fallback: true`
and their count is logged.

Records go to `{out}.partial` as they are generated (outside the rule's declared output, which Snakemake
deletes before a job runs), so a killed job resumes where it stopped; the output is written at the end,
atomically, in test-split order. The partial file starts with a key of the settings, prompt, model files
and inputs; any change to them discards it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Callable, Iterable

from .chat import ROLES, encode_cropped_prompt
from .degeneration import degenerate_reason
from .io import ClinsumError, JsonlAppender, exclusive_lock, fingerprint, read_json, write_jsonl
from .records import Document, load_documents, read_split
from .settings import parse_settings

log = logging.getLogger(__name__)

# Documents per generate call: the unit of progress that a killed job keeps. vLLM schedules its own
# batches and gains from many prompts at once; transformers sorts each call's prompts by length.
VLLM_CHUNK = 256
TRANSFORMERS_CHUNK_BATCHES = 8

# torch.multinomial's error when sampling from NaN/inf probabilities
_NAN_ERROR_RE = re.compile(r"\b(nan|inf)\b", re.IGNORECASE)


def chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def is_nan_error(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and bool(_NAN_ERROR_RE.search(str(error)))


def public_record(record: dict) -> dict:
    return {key: value for key, value in record.items() if not key.startswith("_")}


def load_test_documents(corpus_path, split_path, lang: str) -> list[Document]:
    """The test documents of `lang` in the split's order, streaming the corpus."""
    test_ids = read_split(split_path, lang)["test"]
    found = load_documents(corpus_path, test_ids)
    return [found[doc_id] for doc_id in test_ids]


# ---------------------------------------------------------------------------------------------------
# generation


class Summarizer:
    """Generates summaries into the partial file `{out}.partial`, one record per document as it comes.

    The file starts with the resume key; a partial file with another key (other settings, prompt, model or
    inputs) is discarded, one with the same key keeps its records (a later record of an id wins: the float32
    redo of a degenerate output)."""

    def __init__(self, tokenizer, settings: dict, instruction: str, role: str, lang: str, out_path: Path, key: str):
        if role not in ROLES:
            raise ClinsumError(f"prompts.role must be one of {ROLES}, got {role!r}")
        self.tokenizer, self.settings, self.instruction, self.role, self.lang = tokenizer, settings, instruction, role, lang
        # the guard needs a precision to fall back to: nothing to do when the run is in float32 already
        self.guard = bool(settings["guard"]) and _resolved(settings["dtype"]) != "float32"
        self.partial_path = out_path.with_name(out_path.name + ".partial")
        header = {"_resume": key}
        self.appender = JsonlAppender(self.partial_path)
        if self.appender.existing and self.appender.existing[0] != header:
            log.info("%s: made with other settings, model or inputs; starting over", self.partial_path)
            self.appender.close()
            self.partial_path.unlink()
            self.appender = JsonlAppender(self.partial_path)
        if not self.appender.existing:
            self.appender.write(header)
        self.done = {record["id"]: record for record in self.appender.existing[1:]}

    def run_pass(self, generator, documents: list[Document], fallback: bool) -> None:
        """Generate one chunk and write its records; a NaN failure of the whole call marks it for the guard."""
        settings = self.settings
        encoded = [encode_cropped_prompt(self.tokenizer, self.instruction, doc.text, self.role,
                                         settings["max_input_tokens"], "infer.max_input_tokens") for doc in documents]
        started = time.perf_counter()
        try:
            completions = generator.generate(
                [ids for ids, _ in encoded], max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"],
                top_p=settings["top_p"], top_k=settings["top_k"], seed=settings["seed"],
                repetition_penalty=settings["repetition_penalty"],
            )
        except RuntimeError as error:
            if fallback or not self.guard or not is_nan_error(error):
                raise
            completions = [f"generation failed: {error}"] * len(documents)
        share = (time.perf_counter() - started) / len(documents)
        for doc, (ids, truncated), completion in zip(documents, encoded, completions):
            record = self.record(doc, ids, truncated, completion, share, fallback)
            self.appender.write(record)
            self.done[doc.id] = record

    def record(self, doc: Document, ids, truncated: bool, completion, share: float, fallback: bool) -> dict:
        if isinstance(completion, str):  # the whole call failed on NaN: redo in float32
            return {"id": doc.id, "_redo": completion, "seconds": share}
        earlier = self.done.get(doc.id, {}).get("seconds", 0.0) if fallback else 0.0
        record = {
            "id": doc.id, "lang": self.lang, "prediction": completion.text.strip(), "reference": doc.summary,
            "test_set": doc.test_set,
            "finish_reason": completion.finish_reason, "prompt_tokens": len(ids),
            "completion_tokens": len(completion.token_ids), "input_truncated": truncated,
            "fp32_fallback": fallback, "seconds": round(share + earlier, 4),
        }
        reason = None if fallback else degenerate_reason(completion.text, completion.token_ids, completion.finish_reason)
        if reason:
            record["_redo" if self.guard else "_degenerate"] = reason
        return record


def predict(documents: list[Document], tokenizer, make_generator: Callable[[str], object], settings: dict,
            instruction: str, role: str, lang: str, out_path, key: str = "", chunk_size: int | None = None) -> dict:
    """Summarize `documents` into `out_path` (JSONL, documents' order); return counts. `settings` is the
    config's infer section (the schema's defaults fill what it leaves out).

    `make_generator(dtype)` builds a `generation.Generator`; it is called with the configured dtype
    when there is something to generate, and with "float32" only if the guard has documents to redo.
    """
    settings = parse_settings({"infer": settings})["infer"]
    chunk_size = chunk_size or (
        VLLM_CHUNK if settings["backend"] == "vllm" else TRANSFORMERS_CHUNK_BATCHES * settings["batch_size"]
    )
    out_path = Path(out_path)
    lock = out_path.with_name(out_path.name + ".partial.lock")
    # one writer per output: a second job (an orphan of a killed Snakemake beside its rerun) stops at once
    with exclusive_lock(lock, f"the partial predictions {out_path.name}.partial"):
        return _predict(documents, tokenizer, make_generator, settings, instruction, role, lang, out_path, key, chunk_size)


def _predict(documents, tokenizer, make_generator, settings, instruction, role, lang, out_path: Path, key, chunk_size):
    summarizer = Summarizer(tokenizer, settings, instruction, role, lang, out_path, key)
    if summarizer.done:
        log.info("resuming: %d of %d documents already generated", len(summarizer.done), len(documents))
    try:
        pending = [doc for doc in documents if doc.id not in summarizer.done]
        generate_in_chunks(summarizer, make_generator, settings["dtype"], pending, chunk_size, fallback=False)
        redo = [doc for doc in documents if "_redo" in summarizer.done[doc.id]]
        for doc in redo:
            log.warning("guard: %s: %s; redoing it in float32", doc.id, summarizer.done[doc.id]["_redo"])
        generate_in_chunks(summarizer, make_generator, "float32", redo, chunk_size, fallback=True)
    finally:
        summarizer.appender.close()
    records = [summarizer.done[doc.id] for doc in documents]
    write_jsonl(out_path, (public_record(record) for record in records))
    summarizer.partial_path.unlink()
    return report_counts(records, settings)


def generate_in_chunks(summarizer: Summarizer, make_generator, dtype: str, documents: list[Document],
                       chunk_size: int, fallback: bool) -> None:
    """One generator (loaded only if there is something to generate), chunk after chunk, closed at the end:
    the float32 one of the guard is loaded after the first is closed (two engines may not fit together)."""
    if not documents:
        return
    log.info("loading the %s generator in %s for %d document(s)", summarizer.settings["backend"], dtype, len(documents))
    generator = make_generator(dtype)
    try:
        for batch in chunks(documents, chunk_size):
            summarizer.run_pass(generator, batch, fallback)
            log.info("%s: %d documents written", summarizer.lang, len(summarizer.done))
    finally:
        generator.close()


def report_counts(records: list[dict], settings: dict) -> dict:
    counts = {
        "documents": len(records),
        "input_truncated": sum(r["input_truncated"] for r in records),
        "fp32_fallback": sum(r["fp32_fallback"] for r in records),
        "finish_length": sum(r["finish_reason"] == "length" for r in records),
        "degenerate_kept": sum("_degenerate" in r for r in records),
    }
    log.info("fp32 fallback: %d of %d documents redone in float32", counts["fp32_fallback"], len(records))
    if counts["degenerate_kept"]:
        log.warning(
            "%d output(s) look degenerate (repeats, empty at the length limit); the guard is %s",
            counts["degenerate_kept"], "off" if not settings["guard"] else "idle (the run is in float32 already)",
        )
    log.info("counts: %s", json.dumps(counts))
    return counts


def _resolved(dtype: str) -> str:
    from .generation import resolve_dtype

    return resolve_dtype(dtype)


def _warn_on_context(model_dir, settings: dict) -> None:
    """The model or engine cannot see max_input_tokens + max_new_tokens: say so before hours of work."""
    need = settings["max_input_tokens"] + settings["max_new_tokens"]
    config_path = Path(model_dir) / "config.json"
    limit = read_json(config_path).get("max_position_embeddings") if config_path.is_file() else None
    if limit and need > limit:
        log.warning("max_input_tokens + max_new_tokens = %d exceeds the model's max_position_embeddings %d", need, limit)
    engine_limit = settings["vllm"].get("max_model_len")
    if settings["backend"] == "vllm" and engine_limit and need > engine_limit:
        log.warning("max_input_tokens + max_new_tokens = %d exceeds vllm.max_model_len %d", need, engine_limit)


def run(args) -> None:
    settings = parse_settings(args.settings)["infer"]
    if not (Path(args.model_dir) / "config.json").is_file():
        raise ClinsumError(f"{args.model_dir}: not a model directory (no config.json)")
    documents = load_test_documents(args.corpus, args.split, args.lang)
    log.info("%s: %d test documents, model %s, prompt %r", args.lang, len(documents), args.model_dir, args.instruction)
    _warn_on_context(args.model_dir, settings)

    import torch

    from .generation import load_generator
    from .model_files import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.model_dir)
    # vLLM's context: the longest prompt and the longest answer, unless the config sets it
    engine = {"max_model_len": settings["max_input_tokens"] + settings["max_new_tokens"], **settings["vllm"]}

    def make_generator(dtype: str):
        return load_generator(settings["backend"], args.model_dir, dtype=dtype, batch_size=settings["batch_size"], vllm=engine)

    key = fingerprint([settings, args.instruction, args.role], files=[args.model_dir, args.corpus, args.split])
    predict(documents, tokenizer, make_generator, settings, args.instruction, args.role, args.lang, args.out,
            key=key, chunk_size=args.chunk_size)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="summarize one language's test split with a student model",
        description="Summarize the test documents of one language with a localized prompt; "
        "writes one JSON record per document (see README, Artifacts).",
    )
    parser.add_argument("--model-dir", required=True, help="the model directory (save_pretrained layout)")
    parser.add_argument("--corpus", required=True, help="results/corpus/{lang}.jsonl")
    parser.add_argument("--split", required=True, help="results/split/{lang}.json (its `test` ids are summarized)")
    parser.add_argument("--lang", required=True, help="language code of the corpus, e.g. en")
    parser.add_argument("--settings", required=True, help='JSON: {"infer": <the config\'s infer section>}')
    parser.add_argument("--instruction", required=True, help="the summarization prompt (prompts.summarize[lang])")
    parser.add_argument("--role", required=True, choices=ROLES, help="turn that carries the instruction (prompts.role)")
    parser.add_argument("--out", required=True, help="output JSONL, results/predictions/{model}/{lang}.jsonl")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help=f"documents per generate call, kept on disk after each (default: {VLLM_CHUNK} for vllm, "
        f"{TRANSFORMERS_CHUNK_BATCHES} x batch_size for transformers)",
    )
    parser.set_defaults(func=run)
