"""Crop: token-level cropping of train/valid examples with the student's tokenizer and chat template.

For every train/valid document, one `summarize` example (answer: the reference summary) and, when the
teacher stage ran, one `extract` example (answer: the teacher's key information). The formatted
system+user part is cropped to `prompt_tokens` by shortening the report, the assistant part (answer
plus end-of-turn) to `answer_tokens`. Cropping cuts at a token boundary mapped back to characters, so a
cropped text is always a prefix of the original and never ends in a broken character.

`unit: characters` crops as the paper's code did instead: the report to its first `report_characters`
characters, the summary and the key information to `answer_characters`; the token counts are then measured,
and examples longer than prompt_tokens + answer_tokens (the code's own sequence limit, 3,078 tokens, at which
its tokenizer truncated) are counted and logged.

The corpus streams through in batches of documents, each cropped by `chat.ChatCropper` (one tokenizer pass
per text; the same results as the per-document `chat.crop_example`), optionally in worker processes; statistics
are running sums, and the teacher's records are read by id from an index of line offsets, so memory does not
grow with the corpus.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, Iterator

from .chat import ChatCropper, CroppedExample, build_messages, crop_example, example_ids, training_template
from .io import ClinsumError, JsonlIndex, atomic_path, read_jsonl
from .model_files import load_tokenizer
from .records import SPLITS, Document, iter_documents, read_split
from .settings import parse_settings

log = logging.getLogger(__name__)

TRAIN_SPLITS = ("train", "valid")
DOCUMENTS_PER_BATCH = 128  # enough to amortize a tokenizer call and a worker round trip; little memory


def example_record(doc_id, lang, task, instruction, text, answer, role, cropped: CroppedExample) -> dict:
    """One line of {split}.jsonl (`answer` stripped, as cropped)."""
    record = {
        "id": doc_id,
        "lang": lang,
        "task": task,
        "messages": build_messages(instruction, cropped.report, cropped.answer, role=role, training=True),
        "prompt_tokens": cropped.prompt_tokens,
        "answer_tokens": cropped.answer_tokens,
        "report_cropped": cropped.report != text,
        "answer_cropped": cropped.answer != answer,
    }
    if training_template(role) is not None:
        record["chat_template"] = role  # training renders the messages with this template (chat.named_template)
    return record


class Spread:
    """Count, sum, min and max of integers: a table cell "mean (min–max), n=…" in constant memory."""

    def __init__(self):
        self.count, self.total, self.low, self.high = 0, 0, None, None

    def add(self, value: int) -> None:
        self.count += 1
        self.total += value
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)

    def cell(self) -> str:
        if not self.count:
            return "–"
        # int / int rounds once, as statistics.mean does
        return f"{self.total / self.count:.0f} ({self.low}–{self.high}), n={self.count}"


# ---------------------------------------------------------------------------------------------
# cropping batches, in this process or in workers

_worker: dict = {}  # a worker's cropper: inherited from the parent where processes fork, else loaded


def _start_worker(tokenizer_dir: str, settings: dict) -> None:
    if "cropper" not in _worker:
        _worker["cropper"] = _cropper(tokenizer_dir, settings)


def _crop_in_worker(examples: list[tuple[str, str, str]]) -> tuple[list[CroppedExample], int]:
    cropper = _worker["cropper"]
    before = cropper.fallbacks
    return cropper.crop(examples), cropper.fallbacks - before


def _cropper(tokenizer_dir, settings: dict) -> ChatCropper:
    tokenizer = load_tokenizer(tokenizer_dir)
    return ChatCropper(tokenizer, settings["role"], settings["prompt_tokens"], settings["answer_tokens"])


def crop_batches(
    batches: Iterable[list[tuple[str, str, str]]], tokenizer_dir, settings: dict, workers: int = 1, threads: int = 1
) -> Iterator[tuple[list[CroppedExample], int]]:
    """(cropped examples, how many took the per-document path) for each batch of (instruction, report,
    answer), in order; in one process whose tokenizer encodes a batch's texts on `threads` threads, or with
    workers > 1 in that many single-threaded processes, a few batches in flight at a time."""
    # the job's cores: the tokenizer's own threads in one process (fastest: no copies between processes), or one
    # thread per worker process (forked workers must not inherit a thread pool)
    parallel = workers <= 1 and threads > 1
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
    if parallel:
        os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when the tokenizer first runs in parallel
    cropper = _cropper(tokenizer_dir, settings)
    if workers <= 1:
        for batch in batches:
            before = cropper.fallbacks
            yield cropper.crop(batch), cropper.fallbacks - before
        return
    _worker["cropper"] = cropper
    try:
        with ProcessPoolExecutor(workers, initializer=_start_worker, initargs=(str(tokenizer_dir), settings)) as pool:
            pending: deque = deque()
            for batch in batches:
                pending.append(pool.submit(_crop_in_worker, batch))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        _worker.clear()


def character_batches(batches: Iterable[list[tuple[str, str, str]]], tokenizer_dir, settings: dict):
    """(cropped examples, 0) for each batch, cropped by characters as the paper's code did, their tokens counted
    as training renders them."""
    tokenizer = load_tokenizer(tokenizer_dir)
    role, report_chars, answer_chars = settings["role"], settings["report_characters"], settings["answer_characters"]
    for batch in batches:
        cropped = []
        for instruction, text, answer in batch:
            report, kept = text[:report_chars], answer[:answer_chars]
            prompt, answer_ids = example_ids(tokenizer, instruction, report, kept, role)
            cropped.append(CroppedExample(report, kept, len(prompt), len(answer_ids)))
        yield cropped, 0


def reference_batches(batches: Iterable[list[tuple[str, str, str]]], tokenizer_dir, settings: dict):
    """crop_batches' results from the per-document functions (the reference, for tests and benchmarks)."""
    tokenizer = load_tokenizer(tokenizer_dir)
    role, prompt_tokens, answer_tokens = settings["role"], settings["prompt_tokens"], settings["answer_tokens"]
    for batch in batches:
        yield [crop_example(tokenizer, *example, role, prompt_tokens, answer_tokens) for example in batch], len(batch)


# ---------------------------------------------------------------------------------------------
# the stage


def _documents(corpus_path: Path, split_path: Path, lang: str, stats: dict) -> Iterator[tuple[Document, str]]:
    """(document, split name) of each train/valid document in corpus order; counts every document's characters."""
    split = read_split(split_path, lang)
    where = {doc_id: name for name in SPLITS for doc_id in split[name]}
    stats["counts"][lang] = {name: len(split[name]) for name in SPLITS}
    for _, document in iter_documents(corpus_path):
        name = where.get(document.id)
        if name is None:
            raise ClinsumError(f"{split_path}: document {document.id} is in no split; rerun split")
        chars = stats["chars"].setdefault(lang, {}).setdefault(name, {"text": Spread(), "summary": Spread()})
        chars["text"].add(len(document.text))
        if document.summary is not None:
            chars["summary"].add(len(document.summary))
        if name in TRAIN_SPLITS:
            yield document, name


def _specs(corpus_dir, split_dir, languages, settings: dict, teacher_dir, stats: dict):
    """(lang, split name, task, record, instruction, stripped answer, teacher record) of each example, in order."""
    # answers are stripped: leading newlines would merge with the template's "assistant\n" header into other tokens
    for lang in languages:
        with ExitStack() as stack:
            teacher = stack.enter_context(JsonlIndex(Path(teacher_dir) / f"{lang}.jsonl")) if teacher_dir else None
            summarize = settings.get("train_summarize") or settings["summarize"][lang]
            corpus, split = Path(corpus_dir) / f"{lang}.jsonl", Path(split_dir) / f"{lang}.json"
            for document, name in _documents(corpus, split, lang, stats):
                yield lang, name, "summarize", document, summarize, document.summary.strip(), None
                if teacher is not None:
                    key_info = teacher.get(document.id)
                    if key_info is None:
                        raise ClinsumError(f"{teacher.path}: no teacher record for {document.id}")
                    yield lang, name, "extract", document, settings["extract"], key_info["key_info"].strip(), key_info


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _example(spec, settings: dict, cropped: CroppedExample) -> dict:
    lang, _, task, document, instruction, answer, key_info = spec
    example = example_record(document.id, lang, task, instruction, document.text, answer, settings["role"], cropped)
    if key_info is not None:
        if key_info.get("token_ids") is not None:
            example["teacher_token_ids"] = key_info["token_ids"][: settings["answer_tokens"]]
        # the teacher saw a cropped report (teacher.max_prompt_tokens): say so downstream
        example["teacher_prompt_cropped"] = bool(key_info.get("prompt_cropped"))
    return example


def _count_tokens(stats: dict, lang: str, name: str, example: dict) -> None:
    keys = ("prompt", "answer", "report_chars", "answer_chars")
    cropped = stats["tokens"].setdefault(lang, {}).setdefault((name, example["task"]), {key: Spread() for key in keys})
    cropped["prompt"].add(example["prompt_tokens"])
    cropped["answer"].add(example["answer_tokens"])
    cropped["report_chars"].add(len(example["messages"][-2]["content"]))
    cropped["answer_chars"].add(len(example["messages"][-1]["content"]))


def crop_corpus(
    corpus_dir: str | Path,
    split_dir: str | Path,
    languages: list[str],
    tokenizer_dir: str | Path,
    settings: dict,
    out_dir: str | Path,
    teacher_dir: str | Path | None = None,
    workers: int = 1,
    per_document: bool = False,
    threads: int = 1,
) -> dict:
    """Write {out_dir}/train.jsonl, valid.jsonl and stats.md; return the statistics (and counts: documents,
    examples, fallbacks, seconds). `per_document` crops with the reference functions instead."""
    out_dir = Path(out_dir)
    stats: dict = {"counts": {}, "chars": {}, "tokens": {}}
    started, examples, fallbacks, longer = time.perf_counter(), 0, 0, 0
    sequence_limit = settings["prompt_tokens"] + settings["answer_tokens"]
    with ExitStack() as stack:
        files = {name: stack.enter_context(atomic_path(out_dir / f"{name}.jsonl")) for name in TRAIN_SPLITS}
        specs = _specs(corpus_dir, split_dir, languages, settings, teacher_dir, stats)
        in_flight: deque = deque()  # the specs of batches handed to the cropper, awaiting their results

        def batches():
            for batch in _batched(specs, DOCUMENTS_PER_BATCH * (2 if teacher_dir else 1)):
                in_flight.append(batch)
                yield [(spec[4], spec[3].text, spec[5]) for spec in batch]

        if settings["unit"] == "characters":
            cropped_batches = character_batches(batches(), tokenizer_dir, settings)
        elif per_document:
            cropped_batches = reference_batches(batches(), tokenizer_dir, settings)
        else:
            cropped_batches = crop_batches(batches(), tokenizer_dir, settings, workers, threads)
        for cropped, fell_back in cropped_batches:
            fallbacks += fell_back
            for spec, result in zip(in_flight.popleft(), cropped):
                example = _example(spec, settings, result)
                files[spec[1]].write(json.dumps(example, ensure_ascii=False) + "\n")
                _count_tokens(stats, spec[0], spec[1], example)
                examples += 1
                longer += example["prompt_tokens"] + example["answer_tokens"] > sequence_limit
    stats["over_sequence_limit"] = longer
    if longer:
        log.warning("%d examples are longer than prompt_tokens + answer_tokens = %d tokens (cropped by characters: "
                    "the paper's code truncated such sequences at its 3,078-token limit; they are kept whole here)",
                    longer, sequence_limit)
    tables = stats_markdown(stats, settings)
    if teacher_dir:
        tables += "\n" + table2_markdown([Path(teacher_dir) / f"{lang}.jsonl" for lang in languages])
    with atomic_path(out_dir / "stats.md") as handle:
        handle.write(tables)
    documents = sum(sum(counts.values()) for counts in stats["counts"].values())
    seconds = time.perf_counter() - started
    stats.update(documents=documents, examples=examples, fallbacks=fallbacks, seconds=seconds)
    log.info("cropped %d documents (%d examples) in %.1f s: %.0f documents/s; %d examples by the per-document path",
             documents, examples, seconds, documents / max(seconds, 1e-9), fallbacks)
    return stats


def table2_markdown(teacher_jsonl_paths: list[str | os.PathLike]) -> str:
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
            chars = by_split.get(name, {"text": Spread(), "summary": Spread()})
            lines.append(f"| {lang} | {name} | {chars['text'].cell()} | {chars['summary'].cell()} |")
    if settings["unit"] == "characters":
        budget = (f"{settings['report_characters']} report / {settings['answer_characters']} answer characters "
                  f"(the paper's code); {stats.get('over_sequence_limit', 0)} examples over "
                  f"{settings['prompt_tokens'] + settings['answer_tokens']} tokens")
    else:
        budget = f"{settings['prompt_tokens']} prompt / {settings['answer_tokens']} answer tokens"
    lines += [
        "",
        f"## Table 3 (cropped): after cropping to {budget}, mean (min–max)",
        "",
        "| language | split | task | report chars | answer chars | prompt tokens | answer tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for lang, by_key in stats["tokens"].items():
        for (name, task), values in sorted(by_key.items()):
            lines.append(
                f"| {lang} | {name} | {task} | {values['report_chars'].cell()} | {values['answer_chars'].cell()} "
                f"| {values['prompt'].cell()} | {values['answer'].cell()} |"
            )
    return "\n".join(lines) + "\n"


def crop_settings(settings: str | dict) -> dict:
    """The rule's `--settings` ({"crop": <section>, "prompts": <section>}), validated with the schema's
    defaults, as the flat settings crop works with: prompt_tokens, answer_tokens, role, extract, summarize,
    train_summarize."""
    config = parse_settings(settings)
    prompts = config["prompts"]
    return {**config["crop"], **{key: prompts[key] for key in ("role", "extract", "summarize", "train_summarize")}}


def _run(args) -> None:
    if args.workers < 1 or args.threads < 1:
        raise ClinsumError(f"--workers and --threads must be at least 1, got {args.workers} and {args.threads}")
    crop_corpus(args.corpus_dir, args.split_dir, args.languages, args.tokenizer, crop_settings(args.settings),
                args.out_dir, args.teacher_dir, args.workers, threads=args.threads)


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
        help='JSON: {"crop": <the config\'s crop section>, "prompts": <its prompts section>}',
    )
    parser.add_argument("--out-dir", required=True, help="writes train.jsonl, valid.jsonl, stats.md here")
    parser.add_argument(
        "--threads", type=int, default=1, help="the tokenizer's threads in one process (default: 1)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes that crop batches in parallel, one thread each (default: 1)"
    )
    parser.set_defaults(func=_run)
