"""The records stages pass each other, one reader (and writer) per kind, so a file's format has one owner:

- corpus documents, `results/corpus/{lang}.jsonl` (ingest writes them): `Document`, `load_documents`;
- split ids, `results/split/{lang}.json` (split writes them): `write_split`, `read_split`;
- teacher records, `results/teacher/{lang}.jsonl` (the teacher writes them): `read_teacher_records`.

Predictions are `clinsum.predictions`, the teacher's top-k sidecar `clinsum.topk`, the training log
`clinsum.trainlog`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

from .io import ClinsumError, iter_jsonl_lines, line_id, parse_line, read_json, read_jsonl, write_json

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Document:
    """A corpus document: a report and its reference summary (None for test-layout reports without gold);
    `test_set`: a report of a task's test set, which always goes to the test split."""

    id: str
    lang: str
    text: str
    summary: str | None
    test_set: bool = False

    @property
    def splittable(self) -> bool:
        """Whether the split may put it in train or valid: it has a reference and is no test-set report."""
        return self.summary is not None and not self.test_set


def some(ids: list[str], limit: int = 20) -> str:
    """The first `limit` ids, and how many more, for error messages."""
    shown = ", ".join(ids[:limit])
    return shown + (f" … ({len(ids) - limit} more)" if len(ids) > limit else "")


def iter_documents(corpus_path: str | os.PathLike) -> Iterator[tuple[int, Document]]:
    """(record number, document) of a corpus file, streaming; a record without id or text stops naming it."""
    for number, record in enumerate(read_jsonl(corpus_path), start=1):
        yield number, _document(corpus_path, number, record)


def _document(path, number: int, record) -> Document:
    if not isinstance(record, dict) or not record.get("id") or not isinstance(record.get("text"), str):
        raise ClinsumError(f"{path}: record {number} is not a document (an id and a `text` string)")
    return Document(str(record["id"]), record.get("lang"), record["text"], record.get("summary"), bool(record.get("test_set")))


def load_documents(corpus_path: str | os.PathLike, ids: Iterable[str]) -> dict[str, Document]:
    """The documents with these ids, streaming the corpus: only their lines are parsed (the others are
    recognized by the id that starts them, as the stages write records) and only they stay in memory. An id
    twice in the corpus, a record without text, or a wanted id missing from it stops with the file and ids."""
    wanted = set(ids)
    found: dict[str, Document] = {}
    for number, _, line in iter_jsonl_lines(corpus_path):
        peeked = line_id(line)
        if peeked is not None and peeked not in wanted:
            continue  # a document not asked for
        document = _document(corpus_path, number, parse_line(corpus_path, number, line))
        if document.id not in wanted:
            continue
        if document.id in found:
            raise ClinsumError(f"{corpus_path}: record {number}: document {document.id!r} appears more than once")
        found[document.id] = document
    missing = sorted(wanted - found.keys())
    if missing:
        raise ClinsumError(f"{corpus_path}: {len(missing)} document(s) asked for are not in the corpus: {some(missing)}")
    return found


def write_split(path: str | os.PathLike, lang: str, seed: int, fractions: dict, splits: dict[str, list[str]]) -> None:
    write_json(path, {"lang": lang, "seed": seed, "fractions": fractions, **{name: splits[name] for name in SPLITS}})


def read_split(path: str | os.PathLike, lang: str | None = None) -> dict[str, list[str]]:
    """{train, valid, test: ids} of a split file, checked: lists of ids, none repeated, the language expected."""
    split = read_json(path)
    if not isinstance(split, dict):
        raise ClinsumError(f"{path}: not a split file (a JSON object with train, valid and test lists)")
    for name in SPLITS:
        if not isinstance(split.get(name), list):
            raise ClinsumError(f"{path}: not a split file (no {name!r} list of document ids)")
    if lang is not None and split.get("lang") not in (None, lang):
        raise ClinsumError(f"{path}: split of language {split['lang']!r}, expected {lang!r}")
    ids = {name: [str(doc_id) for doc_id in split[name]] for name in SPLITS}
    repeated = sorted(doc_id for doc_id, count in Counter(i for name in SPLITS for i in ids[name]).items() if count > 1)
    if repeated:
        raise ClinsumError(f"{path}: ids listed more than once: {some(repeated)}")
    return ids


def read_teacher_records(path: str | os.PathLike) -> dict[str, dict]:
    """The teacher's records of one language by document id."""
    return {record["id"]: record for record in read_jsonl(path)}
