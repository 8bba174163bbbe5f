"""Stage 1: the teacher extracts the key information of every train and valid report.

Documents are spread over shards by a stable hash of their id (`shard_of`), so Snakemake's
scattergather runs each shard as its own (GPU) job. A shard writes its records one by one to an
undeclared partial file (Snakemake deletes declared outputs before a job runs), so a shard that is
killed and rerun keeps what it wrote and generates only the missing documents; at the end the partial
file is moved into place. The gather checks that every train/valid id has exactly one record.

With `top_logprobs: k > 0` the k most likely tokens and their log-probabilities at every generated
position are kept beside the records: during a shard in an append-only binary file (int32 ids then
float32 logprobs, [n, k] each, records in the order of the partial JSONL), then as safetensors with
tensors `"{id}/ids"` and `"{id}/logprobs"`, written and merged by streaming, never all in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, Iterator

from .io import (
    ClinsumError,
    JsonlAppender,
    JsonlIndex,
    atomic_path,
    exclusive_lock,
    fingerprint,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)
from .records import load_documents, read_split, some
from .settings import parse_settings
from .topk import TopkPartialStore, gather_topk, write_shard_topk

log = logging.getLogger(__name__)

PROMPTS_PER_CALL = 256  # reports tokenized per batched call (their rendered prompts are held meanwhile)
# settings that do not change what the teacher writes (a retuned cluster job must not discard work)
JOB_KEYS = ("resources", "python")


# ---------------------------------------------------------------------------------------------
# shards


def shard_of(doc_id: str, shards: int) -> int:
    """The 0-based shard of a document: a hash of its id alone, so adding documents moves none."""
    if shards < 1:
        raise ClinsumError(f"shard count must be at least 1, got {shards}")
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def annotated_ids(split_path: str | os.PathLike) -> list[str]:
    """Train then valid ids of a split file: the documents the teacher annotates."""
    split = read_split(split_path)
    return split["train"] + split["valid"]


def shard_ids(ids: list[str], index: int, shards: int) -> list[str]:
    return [doc_id for doc_id in ids if shard_of(doc_id, shards) == index]


# ---------------------------------------------------------------------------------------------
# settings


def read_settings(settings: str | dict) -> dict:
    """The rule's `--settings` ({"teacher": <section>, "prompts": {"extract", "role"}}), the schema's defaults
    filled in; a retry needs its token budget."""
    settings = parse_settings(settings)
    teacher = settings["teacher"]
    if teacher["on_truncated"] == "retry" and "retry_max_new_tokens" not in teacher:
        raise ClinsumError("teacher.on_truncated: retry needs teacher.retry_max_new_tokens")
    for key in ("extract", "role"):
        if key not in settings.get("prompts", {}):
            raise ClinsumError(f"teacher settings carry no prompts.{key}")
    return settings


def output_fingerprint(settings: dict, model_dir) -> str:
    """What a partial shard was generated with (not how its job ran); a mismatch means its records are stale."""
    teacher = {key: value for key, value in settings["teacher"].items() if key not in JOB_KEYS}
    return fingerprint([teacher, settings["prompts"]["extract"], settings["prompts"]["role"]], files=[model_dir])


# ---------------------------------------------------------------------------------------------
# one shard


def partial_paths(out: str | os.PathLike) -> dict[str, Path]:
    """Undeclared working files beside a shard's output `{dir}/{scatteritem}.jsonl`."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return {
        "records": out.with_name(f"{stem}.partial.jsonl"),
        "topk": out.with_name(f"{stem}.partial.topk.bin"),
        "settings": out.with_name(f"{stem}.partial.settings.json"),
    }


def _discard_stale_partial(paths: dict[str, Path], fingerprint: str) -> None:
    if not paths["records"].exists() and not paths["topk"].exists():
        return
    previous = read_json(paths["settings"]).get("fingerprint") if paths["settings"].exists() else None
    if previous != fingerprint:
        log.warning("%s: written with other settings; starting the shard over", paths["records"])
        for path in paths.values():
            path.unlink(missing_ok=True)


def build_prompts(tokenizer, texts: dict[str, str], instruction: str, role: str) -> dict[str, list[int]]:
    """Each document's prompt ids, from batched tokenizer calls (the same ids as chat.encode_prompt)."""
    from .chat import build_messages, encode_prompts

    prompts: dict[str, list[int]] = {}
    doc_ids = list(texts)
    for start in range(0, len(doc_ids), PROMPTS_PER_CALL):
        chunk = doc_ids[start : start + PROMPTS_PER_CALL]
        conversations = [build_messages(instruction, texts[doc_id], role=role) for doc_id in chunk]
        prompts.update(zip(chunk, encode_prompts(tokenizer, conversations)))
    return prompts


def fit_prompts(tokenizer, texts: dict[str, str], settings: dict) -> tuple[dict[str, list[int]], set[str]]:
    """Every document's prompt ids within teacher.max_prompt_tokens, and the ids whose report was cropped
    to fit (`on_long_prompt: crop`); with `on_long_prompt: error`, a stop that names every over-long report."""
    from .chat import encode_cropped_prompt

    teacher = settings["teacher"]
    limit = teacher["max_prompt_tokens"]
    extract, role = settings["prompts"]["extract"], settings["prompts"]["role"]
    prompts = build_prompts(tokenizer, texts, extract, role)
    too_long = sorted((doc_id for doc_id, ids in prompts.items() if len(ids) > limit), key=lambda d: -len(prompts[d]))
    if too_long and teacher["on_long_prompt"] == "error":
        listed = [f"{doc_id} ({len(prompts[doc_id])} tokens)" for doc_id in too_long]
        raise ClinsumError(
            f"{len(too_long)} teacher prompts exceed teacher.max_prompt_tokens ({limit}): {some(listed)};"
            " raise it (and the context the model and engine allow), or set teacher.on_long_prompt: crop"
        )
    for doc_id in too_long:
        prompts[doc_id], _ = encode_cropped_prompt(
            tokenizer, extract, texts[doc_id], role, limit, "teacher.max_prompt_tokens"
        )
    if too_long:
        log.warning("%d reports cropped to fit teacher.max_prompt_tokens (%d): %s", len(too_long), limit, some(too_long))
    return prompts, set(too_long)


def generation_budget(teacher: dict) -> int:
    """The most tokens one answer may take: max_new_tokens, or the retry's when outputs are retried."""
    if teacher["on_truncated"] == "retry":
        return max(teacher["max_new_tokens"], teacher["retry_max_new_tokens"])
    return teacher["max_new_tokens"]


def check_context(model_dir, teacher: dict) -> int:
    """The context a teacher job needs (the longest prompt plus the longest answer), checked against the
    model's max_position_embeddings and an explicit vllm.max_model_len before any engine loads."""
    need = teacher["max_prompt_tokens"] + generation_budget(teacher)
    config_path = Path(model_dir) / "config.json"
    limit = read_json(config_path).get("max_position_embeddings") if config_path.is_file() else None
    if limit and need > limit:
        raise ClinsumError(
            f"teacher.max_prompt_tokens + the answer budget = {need} tokens exceeds the model's context "
            f"({config_path}: max_position_embeddings {limit}); lower teacher.max_prompt_tokens"
        )
    engine = (teacher.get("vllm") or {}).get("max_model_len")
    if teacher["backend"] == "vllm" and engine is not None and need > engine:
        raise ClinsumError(
            f"teacher.vllm.max_model_len ({engine}) cannot hold teacher.max_prompt_tokens + the answer budget"
            f" ({need}); raise it, or leave it out (it is then sized to exactly that)"
        )
    return need


def run_shard(
    corpus: str | os.PathLike,
    split: str | os.PathLike,
    model_dir: str | os.PathLike,
    settings: dict,
    shard_index: int,
    shard_count: int,
    out: str | os.PathLike,
    topk_out: str | os.PathLike | None = None,
    lang: str | None = None,
    generator=None,
) -> dict:
    """Generate the key information of shard `shard_index` (1-based) of `shard_count`; resumes from its
    partial file.

    `generator` (a `generation.Generator`) is built from settings when not given (tests pass one).
    Returns counts: documents, kept (from a previous partial run), generated, retried, prompt_cropped.
    """
    settings = read_settings(settings)
    teacher = settings["teacher"]
    k = teacher["top_logprobs"]
    if k > 0 and topk_out is None:
        raise ClinsumError("teacher.top_logprobs > 0 needs an output path for the top-k logprobs (--topk-out)")
    if not 1 <= shard_index <= shard_count:
        raise ClinsumError(f"shard {shard_index} of {shard_count}: the index must lie between 1 and the count")
    shard = {"shard_index": shard_index, "shard_count": shard_count}
    ids = shard_ids(annotated_ids(split), shard_index - 1, shard_count)
    documents = load_documents(corpus, ids)
    lang = lang or read_json(split).get("lang")

    paths = partial_paths(out)
    # one writer per shard: a second job (an orphan of a killed Snakemake beside its rerun) stops at once
    with exclusive_lock(paths["records"].with_name(paths["records"].name + ".lock"), f"the teacher's partial file {paths['records']}"):
        _discard_stale_partial(paths, output_fingerprint(settings, model_dir))
        write_json(paths["settings"], {"fingerprint": output_fingerprint(settings, model_dir), **shard})
        appender = _resumed_appender(paths, documents, k)
        return _run_shard(paths, appender, ids, documents, model_dir, settings, lang, shard, out, topk_out, generator)


def _resumed_appender(paths: dict[str, Path], documents: dict, k: int) -> JsonlAppender:
    """The partial file opened for appending, holding one record per id of this shard. Records an earlier
    accident repeated (two writers before the lock existed) or that belong to no id of the shard are dropped,
    counted in the log: a repeated id's records are the same greedy output, so the first is kept. With top-k
    rows, which two writers may have interleaved, only the records before the first such one are kept."""
    appender = JsonlAppender(paths["records"])
    kept, seen = [], set()
    for record in appender.existing:
        doc_id = record.get("id")
        if doc_id in seen or doc_id not in documents:
            if k > 0:
                break  # the top-k rows past here cannot be matched to their records
            continue
        seen.add(doc_id)
        kept.append(record)
    if len(kept) != len(appender.existing):
        log.warning("%s: %d records, of which %d repeated or foreign ids (or records after one, with top-k rows) are "
                    "dropped; %d kept", paths["records"], len(appender.existing), len(appender.existing) - len(kept), len(kept))
        appender.close()
        write_jsonl(paths["records"], kept)
        appender = JsonlAppender(paths["records"])
    return appender


def _run_shard(paths, appender, ids, documents, model_dir, settings, lang, shard, out, topk_out, generator) -> dict:
    """Generate what the partial file lacks, then publish the shard's output."""
    k = settings["teacher"]["top_logprobs"]
    shard_index, shard_count = shard["shard_index"], shard["shard_count"]
    kept = appender.existing
    try:
        topk_store = TopkPartialStore(paths["topk"], k, [len(r["token_ids"]) for r in kept]) if k > 0 else None
    except ClinsumError:
        appender.close()
        raise
    done = {r["id"] for r in kept}
    pending = [doc_id for doc_id in ids if doc_id not in done]
    log.info("shard %d of %d: %d documents, %d already written, %d to generate", shard_index, shard_count,
             len(ids), len(done), len(pending))
    counts = {"documents": len(ids), "kept": len(done), "generated": 0, "retried": 0, "prompt_cropped": 0}
    try:
        if pending:
            texts = {doc_id: documents[doc_id].text for doc_id in pending}
            generate_pending(model_dir, settings, texts, lang, shard, appender, topk_store, counts, generator)
    finally:
        appender.close()
        if topk_store is not None:
            topk_store.close()
    load = _finish_shard(paths, out, topk_out, ids, k)
    log.info("shard %d of %d done: %d documents, %d prompt tokens, %d generated tokens", shard_index, shard_count, *load)
    return counts


def generate_pending(model_dir, settings: dict, texts: dict[str, str], lang, shard: dict, appender, topk_store,
                     counts: dict, generator=None) -> None:
    """Prompts checked against the context (before any engine loads), then generated batch after batch,
    each record (and its top-k rows) written as it comes."""
    from .model_files import load_tokenizer

    teacher = settings["teacher"]
    context = check_context(model_dir, teacher)
    prompts, cropped = fit_prompts(load_tokenizer(model_dir), texts, settings)
    counts["prompt_cropped"] = len(cropped)
    # longest first, so batches hold prompts of similar length and memory peaks at once
    pending = sorted(texts, key=lambda d: (-len(prompts[d]), d))
    log.info("%d prompt tokens to generate from", sum(len(prompts[d]) for d in pending))
    owns_generator = generator is None
    generator = generator or _load_generator(model_dir, teacher, context)
    try:
        for start in range(0, len(pending), teacher["batch_size"]):
            batch = pending[start : start + teacher["batch_size"]]
            for record, completion in _generate_batch(generator, batch, prompts, cropped, teacher, lang, teacher["top_logprobs"]):
                record.update(shard)  # for the spread of the load over shards (summary)
                if topk_store is not None:
                    topk_store.write(completion.top_ids, completion.top_logprobs)
                appender.write(record)
                counts["generated"] += 1
                counts["retried"] += int(record["retried"])
            log.info("%d/%d generated", counts["generated"], len(pending))
    finally:
        if owns_generator:
            generator.close()


def _load_generator(model_dir, teacher: dict, context: int):
    from .generation import load_generator

    vllm_options = {"max_model_len": context, **(teacher.get("vllm") or {})}
    vllm_options.setdefault("seed", teacher["seed"])
    vllm_options["max_logprobs"] = max(20, int(teacher["top_logprobs"]))
    return load_generator(
        teacher["backend"], str(model_dir), dtype=teacher["dtype"], batch_size=teacher["batch_size"], vllm=vllm_options
    )


def _generate_batch(generator, batch: list[str], prompts: dict, cropped: set, teacher: dict, lang, k: int):
    """(record, completion) per document of the batch, after one retry of truncated outputs if configured."""
    started = time.perf_counter()
    common = dict(
        temperature=teacher["temperature"],
        top_p=teacher["top_p"],
        top_k=teacher["top_k"],
        top_logprobs=k,
        seed=teacher["seed"],
        repetition_penalty=teacher["repetition_penalty"],
    )
    completions = generator.generate([prompts[d] for d in batch], teacher["max_new_tokens"], **common)
    retried = [False] * len(batch)
    if teacher["on_truncated"] == "retry" and teacher["retry_max_new_tokens"] > teacher["max_new_tokens"]:
        again = [i for i, c in enumerate(completions) if c.finish_reason == "length"]
        if again:
            redone = generator.generate([prompts[batch[i]] for i in again], teacher["retry_max_new_tokens"], **common)
            for i, completion in zip(again, redone):
                completions[i], retried[i] = completion, True
    seconds = (time.perf_counter() - started) / len(batch)  # the batch's time, shared evenly
    for doc_id, completion, was_retried in zip(batch, completions, retried):
        record = {
            "id": doc_id,
            "lang": lang,
            "key_info": completion.text.strip(),
            "token_ids": [int(t) for t in completion.token_ids],
            "finish_reason": completion.finish_reason,
            "prompt_tokens": completion.prompt_tokens,
            "prompt_cropped": doc_id in cropped,
            "completion_tokens": len(completion.token_ids),
            "model": teacher["model"],
            "seconds": round(seconds, 4),
            "retried": was_retried,
        }
        yield record, completion


def _finish_shard(paths: dict[str, Path], out, topk_out, ids: list[str], k: int) -> tuple[int, int, int]:
    """Check the partial file holds each shard id once, then move it (and its top-k) into place; return the
    shard's documents, prompt tokens and generated tokens."""
    records = list(read_jsonl(paths["records"])) if paths["records"].exists() else []
    check_ids(records, ids, str(paths["records"]))
    lengths = [(r["id"], len(r["token_ids"])) for r in records]
    if k > 0:
        write_shard_topk(topk_out, paths["topk"], lengths, k)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if not paths["records"].exists():  # an empty shard (more shards than documents)
        write_jsonl(out, [])
    else:
        os.replace(paths["records"], out)
    paths["topk"].unlink(missing_ok=True)
    paths["settings"].unlink(missing_ok=True)
    return len(records), sum(int(r.get("prompt_tokens", 0)) for r in records), sum(n for _, n in lengths)


# ---------------------------------------------------------------------------------------------
# gather, summary, statistics


def check_ids(records: list[dict], expected: list[str], source: str) -> None:
    """Exactly one record per expected id; the error names the missing, duplicate and unexpected ids."""
    check_id_counts(Counter(r.get("id") for r in records), expected, source)


def check_id_counts(counts: Counter, expected: list[str], source: str) -> None:
    expected_set = set(expected)
    missing = [d for d in expected if d not in counts]
    duplicate = sorted(str(d) for d, c in counts.items() if c > 1)
    unexpected = sorted(str(d) for d in counts if d not in expected_set)
    problems = []
    if missing:
        problems.append(f"{len(missing)} ids missing: {some(missing)}")
    if duplicate:
        problems.append(f"{len(duplicate)} ids with more than one record: {some(duplicate)}")
    if unexpected:
        problems.append(f"{len(unexpected)} ids not in the train/valid split: {some(unexpected)}")
    if problems:
        raise ClinsumError(f"{source}: " + "; ".join(problems))


def gather(
    split: str | os.PathLike,
    shard_paths: list[str | os.PathLike],
    out: str | os.PathLike,
    topk_paths: list[str | os.PathLike] | None = None,
    topk_out: str | os.PathLike | None = None,
) -> int:
    """Merge shard records into one file in split order (train, then valid); return the record count.
    Streams: memory holds each record's line offset, one record at a time."""
    if topk_paths and topk_out is None:
        raise ClinsumError("gathering top-k logprobs needs --topk-out")
    expected = annotated_ids(split)
    with ExitStack() as stack:
        indexes = [stack.enter_context(JsonlIndex(path)) for path in shard_paths]
        counts = Counter(doc_id for index in indexes for doc_id in index.offsets)
        check_id_counts(counts, expected, f"{', '.join(map(str, shard_paths))} (gathered against {split})")
        owner = {doc_id: index for index in indexes for doc_id in index.offsets}
        load = {index.path: [0, 0] for index in indexes}  # documents, prompt tokens
        lengths = []
        with atomic_path(out) as handle:
            for doc_id in expected:
                record = owner[doc_id].get(doc_id)
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                lengths.append((doc_id, len(record["token_ids"])))
                load[owner[doc_id].path][0] += 1
                load[owner[doc_id].path][1] += int(record.get("prompt_tokens", 0))
            if topk_paths:
                gather_topk(lengths, topk_paths, topk_out)
    for path, (documents, prompt_tokens) in load.items():
        log.info("%s: %d documents, %d prompt tokens", path, documents, prompt_tokens)
    log.info("spread over %d shards: %s", len(load), json.dumps(spread([tuple(v) for v in load.values()])))
    return len(expected)


def spread(loads: list[tuple[int, int]]) -> dict:
    """Documents and prompt tokens over shards: min, max, mean, and max/mean (how much longer the busiest
    shard runs than an even split would)."""
    result = {}
    for position, name in enumerate(("documents", "prompt_tokens")):
        values = [load[position] for load in loads]
        mean = sum(values) / len(values) if values else 0.0
        result[name] = {
            "min": min(values, default=0),
            "max": max(values, default=0),
            "mean": round(mean, 1),
            "max_over_mean": round(max(values) / mean, 3) if mean else None,
        }
    return result


def summarize(paths: list[str | os.PathLike]) -> dict:
    """Per language: records, empty outputs, outputs cut by the token limit, retried, reports cropped to
    fit teacher.max_prompt_tokens, tokens, seconds, and the spread of documents and prompt tokens over shards."""
    summary = {}
    for path in paths:
        counts = {"records": 0, "empty": 0, "length": 0, "retried": 0, "prompt_cropped": 0, "completion_tokens": 0, "seconds": 0.0}
        lang, load = None, {}
        for record in read_jsonl(path):
            lang = lang or record.get("lang")
            shard = load.setdefault((record.get("shard_index"), record.get("shard_count")), [0, 0])
            shard[0] += 1
            shard[1] += int(record.get("prompt_tokens", 0))
            counts["records"] += 1
            counts["empty"] += int(not record["key_info"].strip())
            counts["length"] += int(record["finish_reason"] == "length")
            counts["retried"] += int(bool(record.get("retried")))
            counts["prompt_cropped"] += int(bool(record.get("prompt_cropped")))
            counts["completion_tokens"] += int(record.get("completion_tokens", 0))
            counts["seconds"] += float(record.get("seconds", 0.0))
        counts["seconds"] = round(counts["seconds"], 2)
        counts["shards"] = _shard_spread(load)
        summary[lang or Path(path).stem] = counts
    return summary


def _shard_spread(load: dict) -> dict | None:
    """The spread over shards of records that name theirs ((index, count)), empty shards included; None when
    some record names none (written before records did)."""
    if not load or any(index is None for index, _ in load):
        return None
    counts = {count for _, count in load}
    if len(counts) != 1:
        return None  # shards of different runs: no single split to compare
    count = counts.pop()
    loads = [tuple(load.get((index, count), (0, 0))) for index in range(1, count + 1)]
    return {"count": count, **spread(loads)}


# ---------------------------------------------------------------------------------------------
# command line


def _run(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    counts = run_shard(args.corpus, args.split, args.model_dir, read_settings(args.settings), args.shard_index,
                       args.shard_count, args.out, args.topk_out, args.lang)
    log.info("shard %d of %d done: %s", args.shard_index, args.shard_count, counts)


def _gather(args) -> None:
    count = gather(args.split, args.inputs, args.out, args.topk_inputs, args.topk_out)
    log.info("gathered %d records into %s", count, args.out)


def _summary(args) -> None:
    write_json(args.out, summarize(args.inputs))


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("teacher", help="Stage 1: teacher key-information extraction (sharded)")
    commands = parser.add_subparsers(dest="teacher_command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="generate one shard's records (resumes a killed run)")
    run.add_argument("--corpus", required=True, help="results/corpus/{lang}.jsonl")
    run.add_argument("--split", required=True, help="results/split/{lang}.json (train+valid ids are annotated)")
    run.add_argument("--model-dir", required=True, help="teacher model directory (transformers/vLLM checkpoint)")
    run.add_argument(
        "--settings", required=True, help='JSON: {"teacher": <config teacher section>, "prompts": {"extract": str, "role": str}}'
    )
    run.add_argument("--shard-index", type=int, required=True, help="which shard, from 1")
    run.add_argument("--shard-count", type=int, required=True, help="how many shards (teacher.shards)")
    run.add_argument("--out", required=True, help="shard output results/teacher/{lang}/{i-of-n}.jsonl")
    run.add_argument("--topk-out", help="shard top-k logprobs .safetensors (required when top_logprobs > 0)")
    run.add_argument("--lang", help="language code written into records (default: the split file's lang)")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    run.set_defaults(func=_run)

    merge = commands.add_parser("gather", help="merge shards, checking one record per train/valid id")
    merge.add_argument("--split", required=True, help="results/split/{lang}.json")
    merge.add_argument("--inputs", nargs="+", required=True, help="shard .jsonl files")
    merge.add_argument("--out", required=True, help="results/teacher/{lang}.jsonl")
    merge.add_argument("--topk-inputs", nargs="*", help="shard top-k .safetensors files")
    merge.add_argument("--topk-out", help="results/teacher/{lang}.topk.safetensors")
    merge.set_defaults(func=_gather)

    summary = commands.add_parser(
        "summary", help="per-language counts of empty, truncated and retried outputs; the load's spread over shards"
    )
    summary.add_argument("--inputs", nargs="+", required=True, help="results/teacher/{lang}.jsonl files")
    summary.add_argument("--out", required=True, help="results/teacher/summary.json")
    summary.set_defaults(func=_summary)
