"""Crop: token-level cropping of train/valid examples with the student's tokenizer and chat template.

For every train/valid document, one `summarize` example (answer: the reference summary) and, when the
teacher stage ran, one `extract` example (answer: the teacher's key information). The formatted
system+user part is cropped to `prompt_tokens` by shortening the report, the assistant part (answer
plus end-of-turn) to `answer_tokens`. Cropping cuts at a token boundary mapped back to characters, so a
cropped text is always a prefix of the original and never ends in a broken character.
"""

from __future__ import annotations

import json
import logging
import statistics
from contextlib import ExitStack
from pathlib import Path

from .chat import build_messages, crop_answer, crop_prompt, encode_example
from .io import ClinsumError, atomic_path, read_json, read_jsonl

log = logging.getLogger(__name__)

TRAIN_SPLITS = ("train", "valid")


def make_example(tokenizer, doc_id, lang, task, instruction, text, answer, settings) -> dict:
    role = settings["role"]
    report = crop_prompt(tokenizer, instruction, text, settings["prompt_tokens"], role)
    # leading newlines would merge with the template's "assistant\n" header into other tokens
    cropped_answer = crop_answer(tokenizer, answer.strip(), settings["answer_tokens"], role)
    messages = build_messages(instruction, report, cropped_answer, role=role)
    prompt_ids, answer_ids = encode_example(tokenizer, messages)
    return {
        "id": doc_id,
        "lang": lang,
        "task": task,
        "messages": messages,
        "prompt_tokens": len(prompt_ids),
        "answer_tokens": len(answer_ids),
        "report_cropped": report != text,
        "answer_cropped": cropped_answer != answer.strip(),
    }


def _chars(values: list[int]) -> str:
    """One table cell: mean (min–max) over n values."""
    if not values:
        return "–"
    return f"{statistics.mean(values):.0f} ({min(values)}–{max(values)}), n={len(values)}"


def crop_corpus(
    corpus_dir: str | Path,
    split_dir: str | Path,
    languages: list[str],
    tokenizer_dir: str | Path,
    settings: dict,
    out_dir: str | Path,
    teacher_dir: str | Path | None = None,
) -> dict:
    """Write {out_dir}/train.jsonl, valid.jsonl and stats.md; return the statistics."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out_dir = Path(out_dir)
    stats: dict = {"counts": {}, "chars": {}, "tokens": {}}
    with ExitStack() as stack:
        files = {name: stack.enter_context(atomic_path(out_dir / f"{name}.jsonl")) for name in TRAIN_SPLITS}
        for lang in languages:
            split = read_json(Path(split_dir) / f"{lang}.json")
            where = {doc_id: name for name in ("train", "valid", "test") for doc_id in split[name]}
            stats["counts"][lang] = {name: len(split[name]) for name in ("train", "valid", "test")}
            teacher = _read_teacher(teacher_dir, lang) if teacher_dir else {}
            summarize = settings.get("train_summarize") or settings["summarize"][lang]
            for record in read_jsonl(Path(corpus_dir) / f"{lang}.jsonl"):
                name = where.get(record["id"])
                if name is None:
                    raise ClinsumError(f"{split_dir}/{lang}.json: document {record['id']} is in no split; rerun split")
                chars = stats["chars"].setdefault(lang, {}).setdefault(name, {"text": [], "summary": []})
                chars["text"].append(len(record["text"]))
                if record["summary"] is not None:
                    chars["summary"].append(len(record["summary"]))
                if name not in TRAIN_SPLITS:
                    continue
                examples = [
                    make_example(tokenizer, record["id"], lang, "summarize", summarize, record["text"], record["summary"], settings)
                ]
                if teacher_dir:
                    key_info = teacher.get(record["id"])
                    if key_info is None:
                        raise ClinsumError(f"{teacher_dir}/{lang}.jsonl: no teacher record for {record['id']}")
                    example = make_example(
                        tokenizer, record["id"], lang, "extract", settings["extract"], record["text"], key_info["key_info"], settings
                    )
                    if key_info.get("token_ids") is not None:
                        example["teacher_token_ids"] = key_info["token_ids"][: settings["answer_tokens"]]
                    # the teacher saw a cropped report (teacher.max_prompt_tokens): say so downstream
                    example["teacher_prompt_cropped"] = bool(key_info.get("prompt_cropped"))
                    examples.append(example)
                for example in examples:
                    files[name].write(json.dumps(example, ensure_ascii=False) + "\n")
                    cropped = stats["tokens"].setdefault(lang, {}).setdefault(
                        (name, example["task"]), {"prompt": [], "answer": [], "report_chars": [], "answer_chars": []}
                    )
                    cropped["prompt"].append(example["prompt_tokens"])
                    cropped["answer"].append(example["answer_tokens"])
                    cropped["report_chars"].append(len(example["messages"][-2]["content"]))
                    cropped["answer_chars"].append(len(example["messages"][-1]["content"]))
    tables = stats_markdown(stats, settings)
    if teacher_dir:
        from .teacher import teacher_stats

        tables += "\n" + teacher_stats([Path(teacher_dir) / f"{lang}.jsonl" for lang in languages])
    with atomic_path(out_dir / "stats.md") as handle:
        handle.write(tables)
    return stats


def _read_teacher(teacher_dir, lang) -> dict:
    return {r["id"]: r for r in read_jsonl(Path(teacher_dir) / f"{lang}.jsonl")}


def stats_markdown(stats: dict, settings: dict) -> str:
    lines = ["# Corpus statistics", "", "## Table 1: documents per language and split", ""]
    lines += ["| language | train | valid | test | total |", "|---|---:|---:|---:|---:|"]
    totals = {"train": 0, "valid": 0, "test": 0}
    for lang, counts in stats["counts"].items():
        lines.append(f"| {lang} | {counts['train']} | {counts['valid']} | {counts['test']} | {sum(counts.values())} |")
        for name in totals:
            totals[name] += counts[name]
    lines.append(f"| all | {totals['train']} | {totals['valid']} | {totals['test']} | {sum(totals.values())} |")
    lines += ["", "## Table 3: characters before cropping, mean (min–max)", ""]
    lines += ["| language | split | reports | summaries |", "|---|---|---|---|"]
    for lang, by_split in stats["chars"].items():
        for name in ("train", "valid", "test"):
            chars = by_split.get(name, {"text": [], "summary": []})
            lines.append(f"| {lang} | {name} | {_chars(chars['text'])} | {_chars(chars['summary'])} |")
    lines += [
        "",
        f"## Table 3 (cropped): after cropping to {settings['prompt_tokens']} prompt / "
        f"{settings['answer_tokens']} answer tokens, mean (min–max)",
        "",
        "| language | split | task | report chars | answer chars | prompt tokens | answer tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for lang, by_key in stats["tokens"].items():
        for (name, task), values in sorted(by_key.items()):
            lines.append(
                f"| {lang} | {name} | {task} | {_chars(values['report_chars'])} | {_chars(values['answer_chars'])} "
                f"| {_chars(values['prompt'])} | {_chars(values['answer'])} |"
            )
    return "\n".join(lines) + "\n"


def _run(args) -> None:
    crop_corpus(
        args.corpus_dir,
        args.split_dir,
        args.languages,
        args.tokenizer,
        json.loads(args.settings),
        args.out_dir,
        args.teacher_dir,
    )


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("crop", help="token-level cropping of train/valid examples, corpus statistics")
    parser.add_argument("--corpus-dir", required=True, help="results/corpus (one {lang}.jsonl per language)")
    parser.add_argument("--split-dir", required=True, help="results/split (one {lang}.json per language)")
    parser.add_argument("--teacher-dir", help="results/teacher ({lang}.jsonl key information); omit for summaries only")
    parser.add_argument("--languages", nargs="+", required=True)
    parser.add_argument("--tokenizer", required=True, help="the student model directory (tokenizer, chat template)")
    parser.add_argument(
        "--settings",
        required=True,
        help="JSON: prompt_tokens, answer_tokens, role, extract, summarize {lang: prompt}, train_summarize",
    )
    parser.add_argument("--out-dir", required=True, help="writes train.jsonl, valid.jsonl, stats.md here")
    parser.set_defaults(func=_run)
