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

from .io import ClinsumError, JsonlAppender, JsonlIndex, atomic_path, iter_jsonl_lines, line_id, parse_line
from .io import read_json, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

SCATTERITEM = re.compile(r"^(\d+)-of-(\d+)$")
PROMPTS_PER_CALL = 256  # reports tokenized per batched call (their rendered prompts are held meanwhile)
# settings that do not change what the teacher writes (a retuned cluster job must not discard work)
NON_OUTPUT_SETTINGS = ("resources",)


# ---------------------------------------------------------------------------------------------
# shards


def shard_of(doc_id: str, shards: int) -> int:
    """The 0-based shard of a document: a hash of its id alone, so adding documents moves none."""
    if shards < 1:
        raise ClinsumError(f"shard count must be at least 1, got {shards}")
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def parse_scatteritem(item: str) -> tuple[int, int]:
    """Snakemake's scatter item "i-of-n" (1-based) -> (0-based index, n)."""
    match = SCATTERITEM.match(item)
    if not match:
        raise ClinsumError(f"shard must look like 'i-of-n' (Snakemake's scatteritem), got {item!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count:
        raise ClinsumError(f"shard {item!r}: index must lie between 1 and {count}")
    return index - 1, count


def teacher_ids(split_path: str | os.PathLike) -> list[str]:
    """Train then valid ids of a split file: the documents the teacher annotates."""
    split = read_json(split_path)
    for key in ("train", "valid"):
        if not isinstance(split.get(key), list):
            raise ClinsumError(f"{split_path}: no {key!r} list of document ids")
    ids = list(split["train"]) + list(split["valid"])
    repeated = sorted(doc_id for doc_id, count in Counter(ids).items() if count > 1)
    if repeated:
        raise ClinsumError(f"{split_path}: ids listed more than once across train/valid: {_some(repeated)}")
    return ids


def shard_ids(ids: list[str], index: int, shards: int) -> list[str]:
    return [doc_id for doc_id in ids if shard_of(doc_id, shards) == index]


def load_reports(corpus_path: str | os.PathLike, ids: Iterable[str]) -> dict[str, str]:
    """The texts of the wanted ids, streaming the corpus: only the wanted lines are parsed (the others are
    recognized by the id that starts them) and only their texts stay in memory."""
    wanted = set(ids)
    texts: dict[str, str] = {}
    for number, _, line in iter_jsonl_lines(corpus_path):
        peeked = line_id(line)
        if peeked is not None and peeked not in wanted:
            continue  # another shard's document
        record = parse_line(corpus_path, number, line)
        doc_id = record.get("id")
        if doc_id in wanted:
            if doc_id in texts:
                raise ClinsumError(f"{corpus_path}: document {doc_id!r} appears more than once")
            if not isinstance(record.get("text"), str):
                raise ClinsumError(f"{corpus_path}: document {doc_id!r} has no text")
            texts[doc_id] = record["text"]
    missing = sorted(wanted - texts.keys())
    if missing:
        raise ClinsumError(f"{corpus_path}: {len(missing)} split ids not in the corpus: {_some(missing)}")
    return texts


def _some(ids: list[str], limit: int = 20) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" … ({len(ids) - limit} more)" if len(ids) > limit else "")


# ---------------------------------------------------------------------------------------------
# settings


def normalize_settings(settings: dict) -> dict:
    """The rule's params (`{"teacher": {...}, "extract": str, "role": str}`) with defaults filled in."""
    teacher = dict(settings.get("teacher") or {})
    if "model" not in teacher:
        raise ClinsumError("teacher settings name no model")
    if "extract" not in settings:
        raise ClinsumError("teacher settings carry no extraction prompt (prompts.extract)")
    teacher.setdefault("backend", "vllm")
    teacher.setdefault("max_new_tokens", 512)
    teacher.setdefault("temperature", 0.0)
    teacher.setdefault("top_p", 1.0)
    teacher.setdefault("top_logprobs", 0)
    teacher.setdefault("repetition_penalty", 1.0)
    teacher.setdefault("max_prompt_tokens", 15360)
    teacher.setdefault("on_long_prompt", "crop")
    teacher.setdefault("on_truncated", "keep")
    teacher.setdefault("retry_max_new_tokens", 2 * teacher["max_new_tokens"])
    teacher.setdefault("batch_size", 8)
    teacher.setdefault("dtype", "auto")
    teacher.setdefault("seed", 0)
    teacher.setdefault("vllm", {})
    if teacher["on_truncated"] not in ("keep", "retry"):
        raise ClinsumError(f"teacher.on_truncated must be keep or retry, got {teacher['on_truncated']!r}")
    if teacher["on_long_prompt"] not in ("crop", "error"):
        raise ClinsumError(f"teacher.on_long_prompt must be crop or error, got {teacher['on_long_prompt']!r}")
    return {"teacher": teacher, "extract": settings["extract"], "role": settings.get("role", "system")}


def settings_fingerprint(settings: dict, model_dir: str) -> str:
    """What a partial shard was generated with; a mismatch means its records are stale."""
    teacher = {k: v for k, v in settings["teacher"].items() if k not in NON_OUTPUT_SETTINGS}
    canonical = json.dumps(
        {"teacher": teacher, "extract": settings["extract"], "role": settings["role"], "model_dir": str(model_dir)},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# top-k store


class TopkPartialStore:
    """Append-only top-k arrays of a shard, in the record order of its partial JSONL.

    Each record adds n*k int32 ids then n*k float32 logprobs. Bytes are fsynced before the JSONL
    record is written, so every kept record has its arrays; bytes past the kept records (a kill
    between the two writes) are cut on open.
    """

    def __init__(self, path: str | os.PathLike, k: int, kept_lengths: list[int]):
        self.path = Path(path)
        self.k = k
        expected = sum(n * k * 8 for n in kept_lengths)
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < expected:
            raise ClinsumError(
                f"{self.path}: {size} bytes of top-k logprobs, but the partial records need {expected};"
                " delete it and the partial .jsonl beside it to start the shard over"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "ab")
        if size > expected:
            self._handle.truncate(expected)

    def write(self, top_ids, top_logprobs) -> None:
        import numpy as np

        ids = np.ascontiguousarray(top_ids, dtype="<i4")
        values = np.ascontiguousarray(top_logprobs, dtype="<f4")
        if ids.shape != values.shape or ids.ndim != 2 or ids.shape[1] != self.k:
            raise ClinsumError(f"top-k arrays of shape {ids.shape}/{values.shape}, expected [n, {self.k}]")
        self._handle.write(ids.tobytes())
        self._handle.write(values.tobytes())
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def iter_partial_topk(path: str | os.PathLike, lengths: list[int], k: int) -> Iterator[tuple]:
    """(ids [n,k] int32, logprobs [n,k] float32) per record, reading the partial binary file in order."""
    import numpy as np

    with open(path, "rb") as handle:
        for n in lengths:
            ids = np.frombuffer(handle.read(n * k * 4), dtype="<i4").reshape(n, k)
            values = np.frombuffer(handle.read(n * k * 4), dtype="<f4").reshape(n, k)
            yield ids, values


def write_safetensors_stream(path: str | os.PathLike, entries: list[tuple[str, str, list[int]]], chunks: Iterable,
                             metadata: dict | None = None) -> None:
    """Write a safetensors file without holding its tensors in memory.

    entries: (name, dtype "I32"|"F32", shape) in data order; chunks: one array per entry, same order.
    """
    import numpy as np

    sizes = {"I32": 4, "F32": 4}
    header: dict = {"__metadata__": {k: str(v) for k, v in (metadata or {}).items()}}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = sizes[dtype] * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data start to 8 bytes
    with atomic_path(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        written = 0
        for (name, dtype, shape), array in zip(entries, chunks):
            array = np.ascontiguousarray(array, dtype="<i4" if dtype == "I32" else "<f4")
            if list(array.shape) != list(shape):
                raise ClinsumError(f"{path}: tensor {name} has shape {array.shape}, header says {shape}")
            handle.write(array.tobytes())
            written += array.nbytes
        if written != offset:
            raise ClinsumError(f"{path}: wrote {written} bytes of tensors, header says {offset}")


def topk_entries(lengths: list[tuple[str, int]], k: int) -> list[tuple[str, str, list[int]]]:
    """The tensors of the records' (id, generated tokens), in order."""
    entries = []
    for doc_id, n in lengths:
        entries += [(f"{doc_id}/ids", "I32", [n, k]), (f"{doc_id}/logprobs", "F32", [n, k])]
    return entries


def _flatten(pairs: Iterable[tuple]) -> Iterator:
    for ids, values in pairs:
        yield ids
        yield values


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
    prompts = build_prompts(tokenizer, texts, settings["extract"], settings["role"])
    too_long = sorted((doc_id for doc_id, ids in prompts.items() if len(ids) > limit), key=lambda d: -len(prompts[d]))
    if too_long and teacher["on_long_prompt"] == "error":
        listed = [f"{doc_id} ({len(prompts[doc_id])} tokens)" for doc_id in too_long]
        raise ClinsumError(
            f"{len(too_long)} teacher prompts exceed teacher.max_prompt_tokens ({limit}): {_some(listed)};"
            " raise it (and the context the model and engine allow), or set teacher.on_long_prompt: crop"
        )
    for doc_id in too_long:
        prompts[doc_id], _ = encode_cropped_prompt(
            tokenizer, settings["extract"], texts[doc_id], settings["role"], limit, "teacher.max_prompt_tokens"
        )
    if too_long:
        log.warning("%d reports cropped to fit teacher.max_prompt_tokens (%d): %s", len(too_long), limit, _some(too_long))
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
    shard: str,
    out: str | os.PathLike,
    topk_out: str | os.PathLike | None = None,
    lang: str | None = None,
    generator=None,
) -> dict:
    """Generate the key information of one shard's documents; resumes from its partial file.

    `generator` (a `generation.Generator`) is built from settings when not given (tests pass one).
    Returns counts: documents, kept (from a previous partial run), generated, retried.
    """
    from transformers import AutoTokenizer

    settings = normalize_settings(settings)
    teacher = settings["teacher"]
    k = int(teacher["top_logprobs"])
    if k > 0 and topk_out is None:
        raise ClinsumError("teacher.top_logprobs > 0 needs an output path for the top-k logprobs (--topk-out)")
    index, shards = parse_scatteritem(shard)
    ids = shard_ids(teacher_ids(split), index, shards)
    texts = load_reports(corpus, ids)
    lang = lang or read_json(split).get("lang")

    paths = partial_paths(out)
    fingerprint = settings_fingerprint(settings, str(model_dir))
    _discard_stale_partial(paths, fingerprint)
    write_json(paths["settings"], {"fingerprint": fingerprint, "shard": shard})

    appender = JsonlAppender(paths["records"])
    kept = [r for r in appender.existing if r.get("id") in texts]
    if len(kept) != len(appender.existing) or len({r["id"] for r in kept}) != len(kept):
        # a partial file is this shard's own; foreign or repeated ids mean it was tampered with
        appender.close()
        raise ClinsumError(f"{paths['records']}: holds ids not in shard {shard} or repeated ids; delete it")
    topk_store = TopkPartialStore(paths["topk"], k, [len(r["token_ids"]) for r in kept]) if k > 0 else None
    done = {r["id"] for r in kept}
    pending = [doc_id for doc_id in ids if doc_id not in done]
    log.info("shard %s: %d documents, %d already written, %d to generate", shard, len(ids), len(done), len(pending))

    counts = {"documents": len(ids), "kept": len(done), "generated": 0, "retried": 0, "prompt_cropped": 0}
    if pending:
        context = check_context(model_dir, teacher)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        prompts, cropped = fit_prompts(tokenizer, {d: texts[d] for d in pending}, settings)
        counts["prompt_cropped"] = len(cropped)
        log.info("shard %s: %d prompt tokens to generate from", shard, sum(len(prompts[d]) for d in pending))
        # longest first, so batches hold prompts of similar length and memory peaks at once
        pending.sort(key=lambda d: (-len(prompts[d]), d))
        owns_generator = generator is None
        if owns_generator:
            generator = _load_generator(model_dir, teacher, context)
        try:
            for start in range(0, len(pending), teacher["batch_size"]):
                batch = pending[start : start + teacher["batch_size"]]
                for record, completion in _generate_batch(generator, batch, prompts, cropped, teacher, lang, k):
                    record["shard"] = shard  # for the spread of the load over shards (summary)
                    if topk_store is not None:
                        topk_store.write(completion.top_ids, completion.top_logprobs)
                    appender.write(record)
                    counts["generated"] += 1
                    counts["retried"] += int(record["retried"])
                log.info("shard %s: %d/%d generated", shard, counts["generated"], len(pending))
        finally:
            if owns_generator:
                generator.close()
    appender.close()
    if topk_store is not None:
        topk_store.close()
    load = _finish_shard(paths, out, topk_out, ids, k)
    log.info("shard %s done: %d documents, %d prompt tokens, %d generated tokens", shard, *load)
    return counts


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
        write_safetensors_stream(
            topk_out, topk_entries(lengths, k), _flatten(iter_partial_topk(paths["topk"], [n for _, n in lengths], k)),
            {"k": k},
        )
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
        problems.append(f"{len(missing)} ids missing: {_some(missing)}")
    if duplicate:
        problems.append(f"{len(duplicate)} ids with more than one record: {_some(duplicate)}")
    if unexpected:
        problems.append(f"{len(unexpected)} ids not in the train/valid split: {_some(unexpected)}")
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
    expected = teacher_ids(split)
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
                _gather_topk(lengths, topk_paths, topk_out)
    for path, (documents, prompt_tokens) in load.items():
        log.info("%s: %d documents, %d prompt tokens", path, documents, prompt_tokens)
    log.info("spread over %d shards: %s", len(load), json.dumps(spread([tuple(v) for v in load.values()])))
    return len(expected)


def _gather_topk(lengths: list[tuple[str, int]], topk_paths, topk_out) -> None:
    from safetensors import safe_open

    handles = [safe_open(str(path), framework="numpy") for path in topk_paths]
    owner, k = {}, None
    for path, handle in zip(topk_paths, handles):
        for name in handle.keys():
            owner[name] = handle
        shard_k = int((handle.metadata() or {}).get("k", 0))
        if k is not None and shard_k != k:
            raise ClinsumError(f"{path}: top-k width {shard_k}, other shards have {k}")
        k = shard_k
    for doc_id, n in lengths:
        for name in (f"{doc_id}/ids", f"{doc_id}/logprobs"):
            if name not in owner:
                raise ClinsumError(f"{', '.join(map(str, topk_paths))}: no top-k tensor {name}")
            shape = owner[name].get_slice(name).get_shape()
            if list(shape) != [n, k]:
                raise ClinsumError(f"top-k tensor {name} has shape {shape}, expected [{n}, {k}]")
    entries = topk_entries(lengths, k)
    write_safetensors_stream(topk_out, entries, (owner[name].get_tensor(name) for name, _, _ in entries), {"k": k})


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
            shard = load.setdefault(record.get("shard"), [0, 0])
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
    """The spread over shards of records that name theirs ("i-of-n"), empty shards included; None when some
    record names none (written before records did)."""
    if not load or any(shard is None for shard in load):
        return None
    counts = {parse_scatteritem(shard)[1] for shard in load}
    if len(counts) != 1:
        return None  # shards of different runs: no single split to compare
    count = counts.pop()
    loads = [tuple(load.get(f"{index}-of-{count}", (0, 0))) for index in range(1, count + 1)]
    return {"count": count, **spread(loads)}


def teacher_stats(teacher_jsonl_paths: list[str | os.PathLike]) -> str:
    """Table 2 of the paper as markdown: characters of the teacher's key information per language."""
    lines = [
        "## Table 2: teacher key information, characters per language",
        "",
        "| language | documents | mean | min | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for path in teacher_jsonl_paths:
        lengths, lang = [], None
        for record in read_jsonl(path):
            lang = lang or record.get("lang")
            lengths.append(len(record["key_info"]))
        lang = lang or Path(path).stem
        if lengths:
            lines.append(f"| {lang} | {len(lengths)} | {sum(lengths) / len(lengths):.0f} | {min(lengths)} | {max(lengths)} |")
        else:
            lines.append(f"| {lang} | 0 | – | – | – |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# command line


def _run(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as error:
        raise ClinsumError(f"--settings is not valid JSON ({error.msg})") from None
    counts = run_shard(args.corpus, args.split, args.model_dir, settings, args.shard, args.out, args.topk_out, args.lang)
    log.info("shard %s done: %s", args.shard, counts)


def _gather(args) -> None:
    count = gather(args.split, args.inputs, args.out, args.topk_inputs, args.topk_out)
    log.info("gathered %d records into %s", count, args.out)


def _summary(args) -> None:
    write_json(args.out, summarize(args.inputs))


def _stats(args) -> None:
    with atomic_path(args.out) as handle:
        handle.write(teacher_stats(args.inputs))


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("teacher", help="Stage 1: teacher key-information extraction (sharded)")
    commands = parser.add_subparsers(dest="teacher_command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="generate one shard's records (resumes a killed run)")
    run.add_argument("--corpus", required=True, help="results/corpus/{lang}.jsonl")
    run.add_argument("--split", required=True, help="results/split/{lang}.json (train+valid ids are annotated)")
    run.add_argument("--model-dir", required=True, help="teacher model directory (transformers/vLLM checkpoint)")
    run.add_argument(
        "--settings", required=True, help='JSON: {"teacher": <config teacher section>, "extract": str, "role": str}'
    )
    run.add_argument("--shard", required=True, help="Snakemake scatteritem 'i-of-n' (1-based)")
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

    stats = commands.add_parser("stats", help="Table 2 (key-information characters per language) as markdown")
    stats.add_argument("--inputs", nargs="+", required=True, help="results/teacher/{lang}.jsonl files")
    stats.add_argument("--out", required=True, help="markdown file to write")
    stats.set_defaults(func=_stats)
