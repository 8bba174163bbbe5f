"""Training data: the crop stage's records as a tokenized, memory-mapped dataset, the teacher's top-k rows
for distil_kl, and the validation prompts that select the checkpoint."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .. import model_files
from ..chat import build_messages, encode_example, encode_prompt, named_template
from ..io import ClinsumError, fingerprint, read_jsonl
from ..losses import TASK_ID, teacher_answer_ids
from ..variants import variant as variant_entry

PROBE_TEXT = "Paciente de 45 años, diagnóstico: neumonía; résumé clinique — 3.5 mg/kg, IL-6 ↑. Résultats normaux."


@lru_cache(maxsize=4)
def load_tokenizer(tokenizer_dir: str):
    return model_files.load_tokenizer(tokenizer_dir)


def validate_records(path: Path, variant: str) -> dict:
    """Check the crop records this variant trains on; return how many there are and how many of its extract
    records come from a teacher prompt cropped to teacher.max_prompt_tokens. Errors name the record."""
    count = extract = teacher_cropped = 0
    for number, record in enumerate(read_jsonl(path), start=1):
        missing = [key for key in ("id", "lang", "task", "messages") if key not in record]
        if missing:
            raise ClinsumError(f"{path}: record {number} lacks {missing}")
        where = f"{path}: record {number} (id {record['id']}, {record['task']})"
        if record["task"] not in TASK_ID:
            raise ClinsumError(f"{where}: task must be summarize or extract")
        messages = record["messages"]
        if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
            raise ClinsumError(f"{where}: messages must end with the assistant turn")
        if record["task"] not in variant_entry(variant).tasks:
            continue
        if variant_entry(variant).teacher_topk and record["task"] == "extract" and not record.get("teacher_token_ids"):
            raise ClinsumError(
                f"{where}: no teacher_token_ids; {variant} needs the teacher's generated ids "
                "(run the teacher with top_logprobs > 0 and crop again)"
            )
        count += 1
        if record["task"] == "extract":
            extract += 1
            teacher_cropped += int(bool(record.get("teacher_prompt_cropped")))
    return {"records": count, "extract": extract, "teacher_prompt_cropped": teacher_cropped}


def _raw_records(path: str, signature: str, variant: str):
    """The fields training needs; `signature` only keys the datasets cache to the file's version."""
    for record in read_jsonl(path):
        if record["task"] in variant_entry(variant).tasks:
            yield {
                "id": str(record["id"]),
                "lang": record["lang"],
                "task": record["task"],
                "messages": json.dumps(record["messages"], ensure_ascii=False),
                "chat_template": record.get("chat_template") or "",
                "teacher_token_ids": list(record.get("teacher_token_ids") or []),
            }


def _tokenize(batch: dict, tokenizer_dir: str, tokenizer_signature: str, variant: str, answer_budget, source: str):
    """datasets.map function (batched). tokenizer_signature only keys the cache to the tokenizer files."""
    tokenizer = load_tokenizer(tokenizer_dir)
    special = set(tokenizer.all_special_ids)
    end_of_turn: dict[str, list[int]] = {}  # per chat template: the ids the template puts after an answer
    out = {"input_ids": [], "prompt_len": [], "length": [], "task_id": [], "kl_rows": []}
    rows = zip(batch["id"], batch["messages"], batch["task"], batch["teacher_token_ids"], batch["chat_template"])
    for doc_id, messages, task, teacher_ids, template_name in rows:
        try:
            template = named_template(template_name or None)
            prompt_ids, answer_ids = encode_example(tokenizer, json.loads(messages), template)
        except (ValueError, ClinsumError) as error:
            raise ClinsumError(f"{source}: document {doc_id} ({task}): {error}") from None
        kl_rows = 0
        if variant_entry(variant).teacher_topk and task == "extract":
            if template_name not in end_of_turn:
                end_of_turn[template_name] = encode_example(tokenizer, build_messages("x", "x", ""), template)[1]
            answer_ids, kl_rows = teacher_answer_ids(teacher_ids, end_of_turn[template_name], special, answer_budget)
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
    path, tokenizer_dir = Path(path), Path(tokenizer_dir)
    text = datasets.Value("string")
    raw = datasets.Dataset.from_generator(
        _raw_records,
        gen_kwargs={"path": str(path), "signature": fingerprint(None, files=[path]), "variant": variant},
        features=datasets.Features(
            {"id": text, "lang": text, "task": text, "messages": text, "chat_template": text,
             "teacher_token_ids": datasets.Sequence(datasets.Value("int32"))}
        ),
        cache_dir=str(cache_dir),
    )
    if len(raw) == 0:
        raise ClinsumError(f"{path}: no records to train the {variant} variant on")
    tokenizer_file = tokenizer_dir / "tokenizer.json"
    return raw.map(
        _tokenize,
        batched=True,
        batch_size=256,
        fn_kwargs={
            "tokenizer_dir": str(tokenizer_dir),
            "tokenizer_signature": fingerprint(None, files=[tokenizer_file if tokenizer_file.exists() else tokenizer_dir]),
            "variant": variant,
            "answer_budget": answer_budget,
            "source": str(path),
        },
        remove_columns=["messages", "teacher_token_ids", "chat_template"],
        num_proc=num_proc if num_proc and len(raw) >= 2000 else None,
        features=datasets.Features(
            {"id": text, "lang": text, "task": text,
             "input_ids": datasets.Sequence(datasets.Value("int32")), "prompt_len": datasets.Value("int32"),
             "length": datasets.Value("int32"), "task_id": datasets.Value("int8"), "kl_rows": datasets.Value("int32")}
        ),
    )


def document_units(langs, ids) -> list[list[int]]:
    """Row indices grouped by document: a document's summarize and extract sequences share every step."""
    units: dict[tuple[str, str], list[int]] = {}
    for index, key in enumerate(zip(langs, ids)):
        units.setdefault(key, []).append(index)
    return list(units.values())


def examples(dataset, indices: list[int], topk) -> list[dict]:
    """The rows `indices` as collate() takes them, with their teacher top-k rows for distil_kl."""
    columns = dataset[indices]
    found = []
    for i in range(len(indices)):
        example = {"input_ids": columns["input_ids"][i], "prompt_len": columns["prompt_len"][i], "task": columns["task_id"][i]}
        if topk is not None and columns["kl_rows"][i]:
            example["teacher_ids"], example["teacher_logprobs"] = topk.rows(
                columns["lang"][i], columns["id"][i], columns["kl_rows"][i]
            )
        found.append(example)
    return found


def valid_prompts(path, tokenizer) -> tuple[list[list[int]], list[str]]:
    """Prompt ids (messages without the assistant turn) and reference summaries of the summarize records."""
    prompts, references = [], []
    for record in read_jsonl(path):
        if record.get("task") == "summarize":
            prompts.append(encode_prompt(tokenizer, record["messages"], named_template(record.get("chat_template"))))
            references.append(record["messages"][-1]["content"])
    if not prompts:
        raise ClinsumError(f"{path}: no summarize records to select the checkpoint on")
    return prompts, references


def check_tokenizer_compatible(student_dir, teacher_dir) -> None:
    """Student and teacher must give the same ids to a probe text, to the chat template's special tokens
    and, on their shared id range, to every token (Qwen2.5 heads differ in size, their tokenizers not)."""
    student, teacher = load_tokenizer(str(student_dir)), load_tokenizer(str(teacher_dir))
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
