"""Ingest: MultiClinSum folders and zips (gs, large-scale and test layouts) and JSONL into one
`{lang}.jsonl` per language, with a manifest of what was read, written and skipped, and why.

Two passes keep large corpora out of memory: the first lists file *names* only (folders, zips, nested
zips); the second reads each document's report and summary, in numeric order, and streams it out.
"""

from __future__ import annotations

import io as _io
import json
import logging
import re
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .io import ClinsumError, atomic_path, write_json

log = logging.getLogger(__name__)

# multiclinsum_gs_en_12.txt, multiclinsum_ls_es_3_sum.txt, multiclinsum_test_12_en.txt
TRAIN_FILE = re.compile(r"^multiclinsum_(?P<subset>gs|ls)_(?P<lang>[a-z]{2})_(?P<n>\d+)(?P<sum>_sum)?\.txt$")
TEST_FILE = re.compile(r"^multiclinsum_test_(?P<n>\d+)_(?P<lang>[a-z]{2})\.txt$")
SUBSET_ORDER = {"gs": 0, "ls": 1, "test": 2}


@dataclass(frozen=True)
class Location:
    """Where a file lives: a path on disk, or a member inside a chain of (possibly nested) zips."""

    path: Path
    members: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "!".join([str(self.path), *self.members])


@dataclass
class Document:
    lang: str
    subset: str  # gs | ls | test
    number: int
    report: Location | None = None
    summary: Location | None = None

    @property
    def id(self) -> str:
        if self.subset == "test":
            return f"multiclinsum_test_{self.number}_{self.lang}"
        return f"multiclinsum_{self.subset}_{self.lang}_{self.number}"


@dataclass
class Manifest:
    languages: list[str]
    on_bad_input: str = "skip"
    read: Counter = field(default_factory=Counter)
    written: Counter = field(default_factory=Counter)
    skipped: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def count_read(self, lang: str | None) -> str | None:
        """Count one document read; return its language, or None (counted as "unknown") if not configured."""
        bucket = lang if lang in self.languages else None
        self.read[bucket or "unknown"] += 1
        return bucket

    def skip(self, lang: str | None, where: object, reason: str) -> None:
        """Record a bad input; in `error` mode stop, naming the file and the problem."""
        if self.on_bad_input == "error":
            raise ClinsumError(f"{where}: {reason}")
        log.warning("skipped %s: %s", where, reason)
        self.skipped.append({"lang": lang, "path": str(where), "reason": reason})

    def to_dict(self) -> dict:
        per_lang = {}
        reasons: dict[str, Counter] = defaultdict(Counter)
        for item in self.skipped:
            reasons[item["lang"] or "unknown"][item["reason"].split(" (")[0]] += 1
        for lang in sorted(set(self.languages) | {s["lang"] or "unknown" for s in self.skipped}):
            skipped = sum(reasons[lang].values())
            per_lang[lang] = {
                "read": self.read[lang],
                "written": self.written[lang],
                "skipped": skipped,
                "skipped_by_reason": dict(sorted(reasons[lang].items())),
            }
        return {
            "languages": per_lang,
            "totals": {
                "read": sum(v["read"] for v in per_lang.values()),
                "written": sum(v["written"] for v in per_lang.values()),
                "skipped": len(self.skipped),
                "ignored_files": len(self.ignored),
            },
            "skipped": self.skipped,
            "ignored_files": self.ignored,
        }


# ---------------------------------------------------------------- listing (names only)


def list_files(root: Path, manifest: Manifest) -> Iterator[tuple[str, Location]]:
    """(file name, location) of every file under a folder or zip, descending into nested zips."""
    if root.is_file():
        if zipfile.is_zipfile(root) or root.suffix == ".zip":
            yield from _list_zip(Location(root), manifest)
        else:
            yield root.name, Location(root)
        return
    if not root.is_dir():
        raise ClinsumError(f"{root}: corpus source not found")
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        if path.suffix == ".zip":
            yield from _list_zip(Location(path), manifest)
        else:
            yield path.name, Location(path)


def _open_zip(location: Location) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(location.path)
    for member in location.members:
        archive = zipfile.ZipFile(_io.BytesIO(archive.read(member)))
    return archive


def _list_zip(location: Location, manifest: Manifest) -> Iterator[tuple[str, Location]]:
    try:
        with _open_zip(location) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        manifest.count_read(None)
        manifest.skip(None, location, f"unreadable zip ({error})")
        return
    for name in names:
        inner = Location(location.path, (*location.members, name))
        if name.lower().endswith(".zip"):
            yield from _list_zip(inner, manifest)
        else:
            yield name.rsplit("/", 1)[-1], inner


def read_bytes(location: Location) -> bytes:
    if not location.members:
        return location.path.read_bytes()
    with _open_zip(Location(location.path, location.members[:-1])) as archive:
        return archive.read(location.members[-1])


def decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 (invalid byte at offset {error.start})") from None


# ---------------------------------------------------------------- the multiclinsum layout


def index_multiclinsum(root: Path, manifest: Manifest) -> dict[tuple[str, str, int], Document]:
    """Pair reports with summaries by (subset, language, number), from names alone."""
    documents: dict[tuple[str, str, int], Document] = {}
    for name, location in list_files(root, manifest):
        match = TRAIN_FILE.match(name)
        subset = match and match["subset"]
        if not match:
            match = TEST_FILE.match(name)
            subset = "test" if match else None
        if not match:
            manifest.ignored.append(str(location))
            continue
        lang, number = match["lang"], int(match["n"])
        doc = documents.setdefault((subset, lang, number), Document(lang, subset, number))
        is_summary = bool(match.groupdict().get("sum"))
        slot = "summary" if is_summary else "report"
        if getattr(doc, slot) is not None:
            manifest.skip(manifest.count_read(lang), location, f"duplicate id {doc.id} (first seen in {getattr(doc, slot)})")
            continue
        setattr(doc, slot, location)
    return documents


def read_multiclinsum(root: Path, manifest: Manifest, source: str) -> Iterator[dict]:
    documents = index_multiclinsum(root, manifest)
    for key in sorted(documents, key=lambda k: (k[1], SUBSET_ORDER[k[0]], k[2])):
        doc = documents[key]
        where = doc.report or doc.summary
        if manifest.count_read(doc.lang) is None:
            manifest.skip(None, where, f"unknown language {doc.lang!r}")
            continue
        if doc.report is None:
            manifest.skip(doc.lang, where, "summary without its report")
            continue
        try:
            text = decode_utf8(read_bytes(doc.report)).strip()
            summary = None
            if doc.subset != "test":
                if doc.summary is None:
                    raise ValueError("report without its summary")
                where = doc.summary
                summary = decode_utf8(read_bytes(doc.summary)).strip()
        except ValueError as error:
            manifest.skip(doc.lang, where, str(error))
            continue
        except (OSError, zipfile.BadZipFile) as error:
            manifest.skip(doc.lang, where, f"unreadable file ({error})")
            continue
        if not text:
            manifest.skip(doc.lang, doc.report, "empty report")
            continue
        if summary is not None and not summary:
            manifest.skip(doc.lang, doc.summary, "empty summary")
            continue
        yield {"id": doc.id, "lang": doc.lang, "text": text, "summary": summary, "source": str(doc.report)}


# ---------------------------------------------------------------- the jsonl layout


def read_jsonl_source(path: Path, manifest: Manifest, source: str) -> Iterator[dict]:
    """JSONL records {id, lang, text, summary?}; a record without summary is a test document."""
    files = [path] if path.is_file() else sorted(path.rglob("*.jsonl"))
    if not files:
        raise ClinsumError(f"{path}: no JSONL file found")
    for file in files:
        with open(file, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                where = f"{file}:{number}"
                try:
                    record = json.loads(decode_utf8(raw))
                except ValueError as error:
                    manifest.count_read(None)
                    manifest.skip(None, where, str(error) if "UTF-8" in str(error) else "invalid JSON")
                    continue
                lang = record.get("lang") if isinstance(record, dict) else None
                bucket = manifest.count_read(lang)
                if not isinstance(record, dict) or not record.get("id"):
                    manifest.skip(bucket, where, "record without id")
                    continue
                if bucket is None:
                    manifest.skip(None, where, f"unknown language {lang!r}")
                    continue
                text = (record.get("text") or "").strip()
                summary = record.get("summary")
                if not text:
                    manifest.skip(lang, where, "empty report")
                    continue
                if summary is not None and not str(summary).strip():
                    manifest.skip(lang, where, "empty summary")
                    continue
                yield {
                    "id": str(record["id"]),
                    "lang": lang,
                    "text": text,
                    "summary": None if summary is None else str(summary).strip(),
                    "source": where,
                }


READERS: dict[str, Callable[[Path, Manifest, str], Iterator[dict]]] = {
    "multiclinsum": read_multiclinsum,
    "jsonl": read_jsonl_source,
}


# ---------------------------------------------------------------- the stage


def ingest(sources: list[dict], languages: list[str], out_dir: str | Path, on_bad_input: str = "skip") -> dict:
    """Write `{out_dir}/{lang}.jsonl` for every configured language and `{out_dir}/manifest.json`."""
    out_dir = Path(out_dir)
    manifest = Manifest(languages=list(languages), on_bad_input=on_bad_input)
    seen: dict[str, str] = {}
    with _Writers(out_dir, languages) as writers:
        for source in sources:
            path, layout = Path(source["path"]), source["layout"]
            if not path.exists():
                raise ClinsumError(f"{path}: corpus source not found (corpus.sources in config)")
            for record in READERS[layout](path, manifest, str(path)):
                lang = record["lang"]
                if record["id"] in seen:
                    manifest.skip(lang, record["source"], f"duplicate id {record['id']} (first seen in {seen[record['id']]})")
                    continue
                seen[record["id"]] = record["source"]
                writers.write(lang, record)
                manifest.written[lang] += 1
    result = manifest.to_dict()
    result["sources"] = sources
    write_json(out_dir / "manifest.json", result)
    for lang, counts in result["languages"].items():
        log.info("%s: read %d, written %d, skipped %d", lang, counts["read"], counts["written"], counts["skipped"])
    return result


class _Writers:
    """One atomic JSONL writer per language, all committed together when ingest succeeds."""

    def __init__(self, out_dir: Path, languages: list[str]):
        self._contexts = {lang: atomic_path(out_dir / f"{lang}.jsonl") for lang in languages}
        self._handles: dict = {}

    def __enter__(self) -> "_Writers":
        self._handles = {lang: ctx.__enter__() for lang, ctx in self._contexts.items()}
        return self

    def write(self, lang: str, record: dict) -> None:
        self._handles[lang].write(json.dumps(record, ensure_ascii=False) + "\n")

    def __exit__(self, *exc) -> None:
        for ctx in self._contexts.values():
            ctx.__exit__(*exc)


def _run(args) -> None:
    sources = json.loads(args.sources)
    ingest(sources, args.languages, args.out_dir, args.on_bad_input)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("ingest", help="read MultiClinSum folders/zips and JSONL into per-language JSONL")
    parser.add_argument("--sources", required=True, help='JSON list of {"path": ..., "layout": multiclinsum|jsonl}')
    parser.add_argument("--languages", nargs="+", required=True, help="languages to keep (others are skipped)")
    parser.add_argument("--on-bad-input", choices=["skip", "error"], default="skip", help="skip and count, or stop")
    parser.add_argument("--out-dir", required=True, help="writes {lang}.jsonl and manifest.json here")
    parser.set_defaults(func=_run)
