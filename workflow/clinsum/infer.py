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

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .chat import ROLES, encode_cropped_prompt
from .degeneration import degenerate_reason
from .io import ClinsumError, JsonlAppender, read_json, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

# Defaults of the config schema's `infer` section, for settings given without them.
DEFAULTS = {
    "backend": "vllm",
    "dtype": "float16",
    "max_input_tokens": 16384,
    "max_new_tokens": 1024,
    "temperature": 0.0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "batch_size": 8,
    "guard": True,
    "seed": 0,
}

# Documents per generate call: the unit of progress that a killed job keeps. vLLM schedules its own
# batches and gains from many prompts at once; transformers sorts each call's prompts by length.
VLLM_CHUNK = 256
TRANSFORMERS_CHUNK_BATCHES = 8

# torch.multinomial's error when sampling from NaN/inf probabilities
_NAN_ERROR_RE = re.compile(r"\b(nan|inf)\b", re.IGNORECASE)


@dataclass
class Document:
    id: str
    text: str
    reference: str | None


# ---------------------------------------------------------------------------------------------------
# pure parts




def chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def is_nan_error(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and bool(_NAN_ERROR_RE.search(str(error)))


def public_record(record: dict) -> dict:
    return {key: value for key, value in record.items() if not key.startswith("_")}


# ---------------------------------------------------------------------------------------------------
# inputs


def load_test_documents(corpus_path, split_path, lang: str) -> list[Document]:
    """The test documents of `lang` in the split's order, streaming the corpus."""
    split = read_json(split_path)
    if not isinstance(split, dict) or not isinstance(split.get("test"), list):
        raise ClinsumError(f"{split_path}: not a split file (no `test` list of ids)")
    if split.get("lang") not in (None, lang):
        raise ClinsumError(f"{split_path}: split of language {split['lang']!r}, expected {lang!r}")
    test_ids = [str(doc_id) for doc_id in split["test"]]
    wanted = set(test_ids)
    if len(wanted) != len(test_ids):
        raise ClinsumError(f"{split_path}: the test split lists an id more than once")
    found: dict[str, Document] = {}
    for number, record in enumerate(read_jsonl(corpus_path), start=1):
        doc_id = str(record.get("id"))
        if doc_id not in wanted:
            continue
        if doc_id in found:
            raise ClinsumError(f"{corpus_path}: record {number}: duplicate id {doc_id!r}")
        if not isinstance(record.get("text"), str):
            raise ClinsumError(f"{corpus_path}: record {number} ({doc_id!r}) has no `text` string")
        found[doc_id] = Document(doc_id, record["text"], record.get("summary"))
    missing = [doc_id for doc_id in test_ids if doc_id not in found]
    if missing:
        raise ClinsumError(
            f"{corpus_path}: {len(missing)} test id(s) of {split_path} are not in the corpus, e.g. {missing[:3]}"
        )
    return [found[doc_id] for doc_id in test_ids]


def resume_key(model_dir, settings: dict, instruction: str, role: str, *inputs) -> str:
    """A digest of everything an output depends on; a partial file from other inputs is discarded."""
    files = []
    for path in sorted(Path(model_dir).rglob("*")):
        if path.is_file():
            stat = path.stat()
            files.append([str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns])
    for path in inputs:
        stat = Path(path).stat()
        files.append([str(path), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps([settings, instruction, role, files], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------
# generation


def predict(
    documents: list[Document],
    tokenizer,
    make_generator: Callable[[str], object],
    settings: dict,
    instruction: str,
    role: str,
    lang: str,
    out_path,
    key: str = "",
    chunk_size: int | None = None,
) -> dict:
    """Summarize `documents` into `out_path` (JSONL, documents' order); return counts.

    `make_generator(dtype)` builds a `generation.Generator`; it is called with the configured dtype
    when there is something to generate, and with "float32" only if the guard has documents to redo.
    """
    settings = {**DEFAULTS, **settings}
    if role not in ROLES:
        raise ClinsumError(f"prompts.role must be one of {ROLES}, got {role!r}")
    dtype = settings["dtype"]
    # the guard needs a precision to fall back to: nothing to do when the run is in float32 already
    guard = bool(settings["guard"]) and _resolved(dtype) != "float32"
    if chunk_size is None:
        chunk_size = (
            VLLM_CHUNK if settings["backend"] == "vllm" else TRANSFORMERS_CHUNK_BATCHES * settings["batch_size"]
        )
    if chunk_size < 1:
        raise ClinsumError(f"chunk size must be at least 1, got {chunk_size}")
    sampling = dict(
        max_new_tokens=settings["max_new_tokens"],
        temperature=settings["temperature"],
        top_p=settings["top_p"],
        seed=settings["seed"],
        repetition_penalty=settings["repetition_penalty"],
    )
    out_path = Path(out_path)
    partial_path = out_path.with_name(out_path.name + ".partial")
    header = {"_resume": key}

    appender = JsonlAppender(partial_path)
    if appender.existing and appender.existing[0] != header:
        log.info("%s: made with other settings, model or inputs; starting over", partial_path)
        appender.close()
        partial_path.unlink()
        appender = JsonlAppender(partial_path)
    if not appender.existing:
        appender.write(header)
    done = {record["id"]: record for record in appender.existing[1:]}  # a later record of an id wins
    if done:
        log.info("resuming: %d of %d documents already generated", len(done), len(documents))

    def prompts_of(batch: list[Document]) -> list[tuple[list[int], bool]]:
        return [encode_cropped_prompt(
            tokenizer, instruction, doc.text, role, settings["max_input_tokens"], "infer.max_input_tokens"
        ) for doc in batch]

    def run_pass(generator, batch_docs: list[Document], fallback: bool) -> None:
        encoded = prompts_of(batch_docs)
        started = time.perf_counter()
        try:
            completions = generator.generate([ids for ids, _ in encoded], **sampling)
            failure = None
        except RuntimeError as error:
            if fallback or not guard or not is_nan_error(error):
                raise
            completions, failure = [None] * len(batch_docs), f"generation failed: {error}"
        share = (time.perf_counter() - started) / len(batch_docs)
        for doc, (ids, truncated), completion in zip(batch_docs, encoded, completions):
            earlier = done.get(doc.id, {})
            if completion is None:
                record = {"id": doc.id, "_redo": failure, "seconds": share}
            else:
                record = {
                    "id": doc.id,
                    "lang": lang,
                    "prediction": completion.text.strip(),
                    "reference": doc.reference,
                    "finish_reason": completion.finish_reason,
                    "prompt_tokens": len(ids),
                    "completion_tokens": len(completion.token_ids),
                    "input_truncated": truncated,
                    "fp32_fallback": fallback,
                    "seconds": round(share + (earlier.get("seconds", 0.0) if fallback else 0.0), 4),
                }
                reason = (
                    None
                    if fallback
                    else degenerate_reason(completion.text, completion.token_ids, completion.finish_reason)
                )
                if reason and guard:
                    record["_redo"] = reason
                elif reason:
                    record["_degenerate"] = reason
            appender.write(record)
            done[doc.id] = record

    generator = None
    try:
        pending = [doc for doc in documents if doc.id not in done]
        for batch_docs in chunks(pending, chunk_size):
            if generator is None:
                log.info("loading the %s generator in %s", settings["backend"], dtype)
                generator = make_generator(dtype)
            run_pass(generator, batch_docs, fallback=False)
            log.info("%s: %d/%d documents", lang, len(done), len(documents))
        redo = [doc for doc in documents if "_redo" in done[doc.id]]
        for doc in redo:
            log.warning("guard: %s: %s; redoing it in float32", doc.id, done[doc.id]["_redo"])
        if redo:
            if generator is not None:
                generator.close()  # before the float32 one is loaded: two engines may not fit together
                generator = None
            log.info("loading the %s generator in float32 for %d document(s)", settings["backend"], len(redo))
            generator = make_generator("float32")
            for batch_docs in chunks(redo, chunk_size):
                run_pass(generator, batch_docs, fallback=True)
    finally:
        if generator is not None:
            generator.close()
        appender.close()

    records = [done[doc.id] for doc in documents]
    write_jsonl(out_path, (public_record(record) for record in records))
    partial_path.unlink()
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
            counts["degenerate_kept"],
            "off" if not settings["guard"] else "idle (the run is in float32 already)",
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
    if config_path.is_file():
        limit = read_json(config_path).get("max_position_embeddings")
        if limit and need > limit:
            log.warning(
                "max_input_tokens + max_new_tokens = %d exceeds the model's max_position_embeddings %d",
                need,
                limit,
            )
    engine_limit = (settings.get("vllm") or {}).get("max_model_len")
    if settings["backend"] == "vllm" and engine_limit and need > engine_limit:
        log.warning("max_input_tokens + max_new_tokens = %d exceeds vllm.max_model_len %d", need, engine_limit)


def run(args) -> None:
    try:
        settings = {**DEFAULTS, **json.loads(args.settings)}
    except json.JSONDecodeError as error:
        raise ClinsumError(f"--settings is not valid JSON ({error.msg})") from None
    settings.pop("resources", None)  # scheduling only: never part of the resume key
    if not (Path(args.model_dir) / "config.json").is_file():
        raise ClinsumError(f"{args.model_dir}: not a model directory (no config.json)")
    documents = load_test_documents(args.corpus, args.split, args.lang)
    log.info("%s: %d test documents, model %s, prompt %r", args.lang, len(documents), args.model_dir, args.instruction)
    _warn_on_context(args.model_dir, settings)

    import torch
    from transformers import AutoTokenizer

    from .generation import load_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)

    # vLLM's context: the longest prompt and the longest answer, unless the config sets it
    engine = {"max_model_len": settings["max_input_tokens"] + settings["max_new_tokens"], **(settings.get("vllm") or {})}

    def make_generator(dtype: str):
        return load_generator(settings["backend"], args.model_dir, dtype=dtype, batch_size=settings["batch_size"], vllm=engine)

    key = resume_key(args.model_dir, settings, args.instruction, args.role, args.corpus, args.split)
    predict(
        documents,
        tokenizer,
        make_generator,
        settings,
        args.instruction,
        args.role,
        args.lang,
        args.out,
        key=key,
        chunk_size=args.chunk_size,
    )


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
    parser.add_argument("--settings", default="{}", help="the config's `infer` section as JSON")
    parser.add_argument("--instruction", required=True, help="the summarization prompt (prompts.summarize[lang])")
    parser.add_argument("--role", default="system", choices=ROLES, help="turn that carries the instruction")
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
