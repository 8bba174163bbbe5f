"""Split: train/valid/test per language, deterministic from a hash of the document id and a seed.

A document's split depends on its own id alone, so adding documents never moves an existing one.
Test-layout documents (no reference summary) and a test set's reports (with their gold or not) always go to test. A language with at least 3 documents
gets every split non-empty: while a split has no document of its own, the one whose hash lies nearest
to that split's interval is lent to it (small corpora only; with a few hundred documents per language
every split fills naturally and the lending stops).

`method: paper_code` splits as the paper's code did (distil-tuning-llm, `split_dataset`): the documents with
a reference, in `order`, shuffled with `random.Random(seed)`, the first int(n·train) to train, the next
int(n·valid) to valid, the rest to test (MultiClinSum's 592 gold pairs a language: 473/5/114). Adding a
document then moves others; test-layout documents still go to test.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
import sys
from pathlib import Path

from .io import ClinsumError
from .records import SPLITS, iter_documents, write_split

log = logging.getLogger(__name__)


def unit_hash(doc_id: str, seed: int) -> float:
    """A uniform number in [0, 1) from the id and the seed (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def intervals(fractions: dict) -> dict[str, tuple[float, float]]:
    total = sum(fractions[s] for s in SPLITS)
    if abs(total - 1.0) > 1e-6:
        raise ClinsumError(f"split fractions must sum to 1, got {total} (split: in config)")
    start, result = 0.0, {}
    for name in SPLITS:
        result[name] = (start, start + fractions[name])
        start += fractions[name]
    result["test"] = (result["test"][0], 1.0)
    return result


def assign_split(doc_id: str, seed: int, fractions: dict) -> str:
    u = unit_hash(doc_id, seed)
    for name, (low, high) in intervals(fractions).items():
        if low <= u < high:
            return name
    return "test"


def split_documents(documents: list[tuple[str, bool]], fractions: dict, seed: int) -> dict[str, list[str]]:
    """documents: (id, splittable: has a reference and is no test-set report). Returns split name -> ids, in input
    order."""
    bounds = intervals(fractions)
    position = {doc_id: unit_hash(doc_id, seed) for doc_id, _ in documents}
    assignment = {
        doc_id: assign_split(doc_id, seed, fractions) if splittable else "test"
        for doc_id, splittable in documents
    }
    movable = [doc_id for doc_id, splittable in documents if splittable]
    if len(movable) >= 3:
        for name in SPLITS:
            members = [d for d in assignment if assignment[d] == name]
            if members:
                continue
            low, high = bounds[name]
            # lend the nearest document from a split that can spare one
            counts = {s: sum(1 for d in movable if assignment[d] == s) for s in SPLITS}
            candidates = [d for d in movable if counts[assignment[d]] > 1]
            nearest = min(candidates, key=lambda d: min(abs(position[d] - low), abs(position[d] - high)))
            log.info("split %r was empty: lent %s from %r", name, nearest, assignment[nearest])
            assignment[nearest] = name
    return {name: [doc_id for doc_id, _ in documents if assignment[doc_id] == name] for name in SPLITS}


def document_number(doc_id: str) -> tuple[int, str]:
    """The sort key of `order: number`: the last run of digits in an id (multiclinsum_gs_en_12 -> 12, then the id),
    ids without digits last."""
    digits = re.findall(r"\d+", doc_id)
    return (int(digits[-1]) if digits else sys.maxsize, doc_id)


def paper_code_split(documents: list[tuple[str, bool]], fractions: dict, seed: int, order: str) -> dict[str, list[str]]:
    """The paper's code's split: the documents with a reference in `order` ("number": by document number, as
    1, 2, …; "name": by id as a string, as a sorted file listing gives 1, 10, 100, …), shuffled with
    random.Random(seed), cut at int(n·train) and int(n·valid); test-layout documents go to test."""
    intervals(fractions)  # the fractions must sum to 1, as the code checks
    if order not in ("number", "name"):
        raise ClinsumError(f"split.order must be number or name, got {order!r}")
    key = document_number if order == "number" else None
    paired = sorted((doc_id for doc_id, splittable in documents if splittable), key=key)
    random.Random(seed).shuffle(paired)
    n = len(paired)
    train_end = int(n * fractions["train"])
    valid_end = train_end + int(n * fractions["valid"])
    unpaired = sorted((doc_id for doc_id, splittable in documents if not splittable), key=key)
    result = {"train": paired[:train_end], "valid": paired[train_end:valid_end], "test": paired[valid_end:] + unpaired}
    empty = [name for name in SPLITS if not result[name]]
    if empty:
        raise ClinsumError(
            f"split.method paper_code cuts {n} documents with a reference into {train_end} train, "
            f"{valid_end - train_end} valid and {n - valid_end} test: {' and '.join(empty)} would be empty "
            f"(the code's int() cuts need at least {math.ceil(1 / min(fractions['valid'], fractions['train']))} documents "
            f"for a valid document); use a larger corpus or split.method: hash"
        )
    return result


def split_sizes(n: int, fractions: dict, method: str) -> dict[str, int | float]:
    """Documents per split for n documents with a reference: exact for paper_code, expected for hash."""
    if method == "paper_code":
        train, valid = int(n * fractions["train"]), int(n * fractions["valid"])
        return {"train": train, "valid": valid, "test": n - train - valid}
    return {name: round(n * fractions[name], 1) for name in SPLITS}


def split_language(corpus_path: str | Path, out_path: str | Path, lang: str, fractions: dict, seed: int,
                   method: str, order: str) -> dict:
    documents = [(document.id, document.splittable) for _, document in iter_documents(corpus_path)]
    if method == "paper_code":
        result = paper_code_split(documents, fractions, seed, order)
    elif method == "hash":
        result = split_documents(documents, fractions, seed)
    else:
        raise ClinsumError(f"split.method must be hash or paper_code, got {method!r}")
    if not result["train"] or not result["test"]:
        paired = sum(splittable for _, splittable in documents)
        raise ClinsumError(
            f"{corpus_path}: language {lang} has {len(documents)} documents ({paired} with a reference summary, outside "
            f"the test set): "
            f"too few for a non-empty train and test split ({', '.join(f'{n} {len(result[n])}' for n in SPLITS)}); "
            "results/corpus/manifest.json lists its sources and what was skipped. Add documents or remove the "
            "language from `languages`"
        )
    write_split(out_path, lang, seed, fractions, result)
    log.info("%s: %s", lang, ", ".join(f"{name} {len(result[name])}" for name in SPLITS))
    return result


def _run(args) -> None:
    fractions = {"train": args.train, "valid": args.valid, "test": args.test}
    split_language(args.corpus, args.out, args.lang, fractions, args.seed, args.method, args.order)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("split", help="train/valid/test split of one language (by id hash, or as the paper's code)")
    parser.add_argument("--corpus", required=True, help="results/corpus/{lang}.jsonl")
    parser.add_argument("--lang", required=True)
    parser.add_argument("--train", type=float, required=True, help="train fraction (split.train)")
    parser.add_argument("--valid", type=float, required=True, help="valid fraction (split.valid)")
    parser.add_argument("--test", type=float, required=True, help="test fraction (split.test)")
    parser.add_argument("--seed", type=int, required=True, help="hash seed, or the paper code's shuffle seed (split.seed)")
    parser.add_argument("--method", choices=("hash", "paper_code"), required=True, help="split.method")
    parser.add_argument("--order", choices=("number", "name"), required=True, help="split.order (used by --method paper_code)")
    parser.add_argument("--out", required=True, help="results/split/{lang}.json")
    parser.set_defaults(func=_run)
