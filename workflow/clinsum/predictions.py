"""Reading what inference wrote and the reports it summarized; shared by evaluate, judge and submission."""

from __future__ import annotations

from pathlib import Path

from .io import ClinsumError, read_jsonl
from .records import load_documents


def load_predictions(path: str | Path, lang: str | None = None) -> list[dict]:
    """Prediction records, checked: unique string ids, string predictions, string-or-null references."""
    records, seen = [], set()
    for number, record in enumerate(read_jsonl(path), start=1):
        where = f"{path}: record {number}"
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not record["id"]:
            raise ClinsumError(f"{where}: missing or non-string \"id\"")
        where = f"{path}: document {record['id']}"
        if record["id"] in seen:
            raise ClinsumError(f"{where}: duplicate id")
        seen.add(record["id"])
        if not isinstance(record.get("prediction"), str):
            raise ClinsumError(f"{where}: \"prediction\" must be a string, got {type(record.get('prediction')).__name__}")
        if "reference" not in record or not (record["reference"] is None or isinstance(record["reference"], str)):
            raise ClinsumError(f"{where}: \"reference\" must be a string or null")
        if lang is not None and record.get("lang", lang) != lang:
            raise ClinsumError(f"{where}: lang {record.get('lang')!r} in a file for {lang!r}")
        records.append(record)
    return records


def load_sources(corpus_path: str | Path, ids: list[str]) -> dict[str, str]:
    """id -> report text for the given ids, streaming the corpus (results/corpus/{lang}.jsonl)."""
    return {doc_id: document.text for doc_id, document in load_documents(corpus_path, ids).items()}
