"""Ingest: MultiClinSum folders and zips (gs, large-scale and test layouts, or any layout described in
config) and JSONL into one `{lang}.jsonl` per language, with a manifest of what was read, written and
skipped, and why.

Two passes keep large corpora out of memory: the first lists file *names* only (folders, zips, nested
zips) into an index on disk (`DocumentIndex`, SQLite in a temporary folder under the output folder); the
second reads each document's report and summary, in order, and streams it out. A zip's directory is read
once, in the first pass, which notes where each member lies; the second pass reads members from there
(clinsum.sources.Archives). Memory stays flat in the number of documents; the largest zip's directory
is the most it holds at once (about 0.7 KB per member while that zip is listed).
"""

from __future__ import annotations

import itertools
import json
import logging
import operator
import os
import shutil
import sqlite3
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .io import ClinsumError, atomic_path, exclusive_lock, write_json
from .sources import (
    ZIP_ERRORS,
    Archives,
    FileMatch,
    Layout,
    Location,
    WalkNotes,
    ZipEntry,
    in_macos_metadata,
    is_zip_name,
    layouts_from_config,
    preset_layouts,
    walk_folder,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FilePair:
    """A document as files: its report and (outside test sets) its summary, wherever they lie."""

    lang: str
    set: str
    number: int
    report: Location | None = None
    summary: Location | None = None


@dataclass
class Manifest:
    languages: list[str]
    on_bad_input: str
    read: Counter = field(default_factory=Counter)
    written: Counter = field(default_factory=Counter)
    skipped: list[dict] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    duplicate_files: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    walk: WalkNotes = field(default_factory=WalkNotes)

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

    def duplicate(self, lang: str, doc_id: str, read: list, repeats: list) -> None:
        """Files that repeat a document's report or summary within one source (one document, several files):
        the first of each is read, the others listed under the document, which counts once; `error` mode stops."""
        read = [str(location) for location in read if location is not None]
        if self.on_bad_input == "error":
            raise ClinsumError(f"{repeats[0]}: a second file for document {doc_id} (read: {', '.join(read)})")
        log.warning("document %s: %d more file(s) for it, not read: %s", doc_id, len(repeats), ", ".join(map(str, repeats)))
        self.duplicate_files.append({"id": doc_id, "lang": lang, "read": read, "not_read": [str(r) for r in repeats]})

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

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
                "duplicate_files": sum(len(d["not_read"]) for d in self.duplicate_files),
                "macos_metadata": self.walk.macos_metadata,
            },
            "warnings": self.warnings,
            "skipped": self.skipped,
            "duplicate_files": self.duplicate_files,
            "ignored_files": self.ignored,
            "folders_reached_twice": self.walk.folders_reached_twice,
        }


# ---------------------------------------------------------------- listing (names only)


def list_files(root: Path, manifest: Manifest, archives: Archives) -> Iterator[tuple[str, Location]]:
    """(path relative to the source, location) of every file under a folder or zip, nested zips
    included; zips count as folders in the relative path, macOS metadata is passed over."""
    if root.is_file():
        if is_zip_name(root.name):
            yield from _list_zip(root.name, Location(str(root)), manifest, archives)
        else:
            yield root.name, Location(str(root))
        return
    if not root.is_dir():
        raise ClinsumError(f"{root}: corpus source not found")
    for relative, entry in walk_folder(root, manifest.walk):
        if is_zip_name(entry.name):
            yield from _list_zip(relative, Location(entry.path), manifest, archives)
        else:
            yield relative, Location(entry.path)


def _list_zip(relative: str, location: Location, manifest: Manifest, archives: Archives) -> Iterator[tuple[str, Location]]:
    members = _zip_members(location, manifest, archives)
    try:
        first = next(members, None)  # opening the zip reads its directory: the only place it fails
    except ZIP_ERRORS as error:
        manifest.count_read(None)
        manifest.skip(None, location, f"unreadable zip ({error})")
        return
    for name, entry in itertools.chain([first] if first else [], members):
        inner = Location(location.path, (*location.members, name), entry)
        if is_zip_name(name):
            yield from _list_zip(f"{relative}/{name}", inner, manifest, archives)
        else:
            yield f"{relative}/{name}", inner


def _zip_members(location: Location, manifest: Manifest, archives: Archives) -> Iterator[tuple[str, ZipEntry]]:
    for name, entry in archives.members(location.path, location.members):
        if in_macos_metadata(name):
            manifest.walk.macos_metadata += 1
        else:
            yield name, entry


def _normalize(text: str) -> str:
    """Windows (CRLF) and old Mac (CR) line ends become LF; surrounding whitespace goes."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.strip()


def decode_text(data: bytes) -> str:
    """A file's text: UTF-8 (a byte-order mark dropped), line ends normalized, stripped."""
    try:
        return _normalize(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 (invalid byte at offset {error.start})") from None


# ---------------------------------------------------------------- file-name layouts


_NO_ENTRY = (None,) * len(ZipEntry._fields)


class DocumentIndex:
    """What the listing pass found, kept on disk (SQLite in a temporary folder) rather than in memory, so
    that ingest's memory stays flat however large the corpus; the reading pass gets the files back
    sorted and grouped by document. It also remembers every id written, across sources."""

    BATCH = 10_000

    def __init__(self, directory: Path):
        self._db = sqlite3.connect(Path(directory) / "index.sqlite")
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            CREATE TABLE files (lang TEXT, late INTEGER, doc_set TEXT, n INTEGER, summary INTEGER,
                                container INTEGER, member TEXT,
                                offset INTEGER, compressed INTEGER, size INTEGER, crc INTEGER, method INTEGER,
                                flags INTEGER);
            CREATE TABLE seen (id TEXT PRIMARY KEY, source TEXT) WITHOUT ROWID;
            """
        )
        # a folder or a (nested) zip holding files, shared by its files' rows
        self._container_ids: dict[tuple[str, tuple[str, ...] | None], int] = {}
        self._containers: list[tuple[str, tuple[str, ...] | None]] = []
        self._pending: list[tuple] = []

    def close(self) -> None:
        self._db.close()

    def add(self, match: FileMatch, late: bool, location: Location) -> None:
        if location.members:
            container, member = (location.path, location.members[:-1]), location.members[-1]
        else:
            folder, _, member = location.path.rpartition(os.sep)
            container = (folder, None)
        number = self._container_ids.get(container)
        if number is None:
            number = self._container_ids[container] = len(self._containers)
            self._containers.append(container)
        entry = location.entry or _NO_ENTRY
        self._pending.append((match.lang, late, match.set, match.number, match.is_summary, number, member, *entry))
        if len(self._pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        self._db.executemany(f"INSERT INTO files VALUES ({', '.join('?' * 13)})", self._pending)
        self._pending = []

    def _location(self, container: int, member: str, entry: tuple) -> Location:
        path, chain = self._containers[container]
        if chain is None:
            return Location(f"{path}{os.sep}{member}")
        return Location(path, (*chain, member), None if entry[0] is None else ZipEntry._make(entry))

    def documents(self) -> Iterator[tuple[FilePair, list[tuple[str, Location]]]]:
        """(document, files that repeat one of its slots) in order: language, sets with summaries
        before the others, set, number; within a document, files in the order they were listed."""
        self._flush()
        rows = self._db.execute(
            "SELECT lang, doc_set, n, summary, container, member, offset, compressed, size, crc, method, flags"
            " FROM files"
            " ORDER BY lang, late, doc_set, n, rowid"
        )
        for (lang, doc_set, number), group in itertools.groupby(rows, key=operator.itemgetter(0, 1, 2)):
            doc, repeated = FilePair(lang, doc_set, number), []
            for _, _, _, is_summary, container, member, *entry in group:
                location = self._location(container, member, entry)
                slot = "summary" if is_summary else "report"
                if getattr(doc, slot) is None:
                    setattr(doc, slot, location)
                else:
                    repeated.append((slot, location))
            yield doc, repeated
        self._db.execute("DELETE FROM files")

    def first_seen(self, doc_id: str, source: str) -> str | None:
        """None for a new id (now remembered, with its source); else the source that had it first."""
        if self._db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (doc_id, source)).rowcount:
            return None
        return self._db.execute("SELECT source FROM seen WHERE id = ?", (doc_id,)).fetchone()[0]


def index_documents(root: Path, layout: Layout, manifest: Manifest, archives: Archives, index: DocumentIndex) -> None:
    """List the files of a source and index the documents among them, from names alone. Files in a folder of
    another language are skipped one document at a time (its report and summary together)."""
    misplaced: dict[tuple, list] = {}
    for relative, location in list_files(root, manifest, archives):
        match = layout.match(relative)
        if match is None:
            manifest.ignored.append(str(location))
            continue
        folder = layout.folder_language(relative)
        if folder and folder[1] != match.lang:
            misplaced.setdefault((match.set, match.lang, match.number, folder), []).append(location)
            continue
        index.add(match, match.set in layout.unpaired_sets, location)
    for (_, lang, _, (folder, folder_lang)), files in misplaced.items():
        manifest.skip(
            manifest.count_read(lang),
            files[0] if len(files) == 1 else f"{files[0]} (and {', '.join(map(str, files[1:]))})",
            f"language differs from its folder ({lang!r} in its name, {folder_lang!r} in {folder})",
        )


def read_layout(root: Path, manifest: Manifest, layout: Layout, index: DocumentIndex) -> Iterator[dict]:
    with Archives() as archives:
        index_documents(root, layout, manifest, archives, index)
        for doc, repeated in index.documents():
            doc_id = layout.document_id(doc.set, doc.lang, doc.number, (doc.report or doc.summary).name)
            if repeated:
                manifest.duplicate(doc.lang, doc_id, [doc.report, doc.summary], [location for _, location in repeated])
            record = _read_document(doc, doc_id, layout, manifest, archives)
            if record is not None:
                yield record


def _read_document(doc: FilePair, doc_id: str, layout: Layout, manifest: Manifest, archives: Archives) -> dict | None:
    """The record of one indexed document, or None after recording why it is skipped."""
    where = doc.report or doc.summary
    if manifest.count_read(doc.lang) is None:
        manifest.skip(None, where, f"unknown language {doc.lang!r}")
        return None
    if doc.report is None:
        manifest.skip(doc.lang, where, "summary without its report")
        return None
    test_set = doc.set in layout.unpaired_sets
    try:
        text = decode_text(archives.read(doc.report))
        summary = None
        if not test_set and doc.summary is None:
            raise ValueError("report without its summary")
        if doc.summary is not None:  # a test set's gold summary, when the release has it
            where = doc.summary
            summary = decode_text(archives.read(doc.summary))
    except ValueError as error:
        manifest.skip(doc.lang, where, str(error))
        return None
    except ZIP_ERRORS as error:
        manifest.skip(doc.lang, where, f"unreadable file ({error})")
        return None
    if not text:
        manifest.skip(doc.lang, doc.report, "empty report")
        return None
    if summary is not None and not summary:
        manifest.skip(doc.lang, doc.summary, "empty summary")
        return None
    record = {"id": doc_id, "lang": doc.lang, "text": text, "summary": summary, "source": str(doc.report)}
    if test_set:
        record["test_set"] = True  # always in the test split, with or without its gold summary
    return record


# ---------------------------------------------------------------- the jsonl layout


def _jsonl_files(path: Path, manifest: Manifest) -> list[Path]:
    if path.is_file():
        return [path]
    files = [Path(entry.path) for relative, entry in walk_folder(path, manifest.walk) if relative.lower().endswith(".jsonl")]
    if not files:
        raise ClinsumError(f"{path}: no JSONL file found")
    return files


def read_jsonl_source(path: Path, manifest: Manifest) -> Iterator[dict]:
    """JSONL records {id, lang, text, summary?}; a record without summary is a test document."""
    for file in _jsonl_files(path, manifest):
        with open(file, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                record = _jsonl_record(raw, f"{file}:{number}", manifest)
                if record is not None:
                    yield record


_JSON_KINDS = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}


def _jsonl_record(raw: bytes, where: str, manifest: Manifest) -> dict | None:
    try:
        record = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        manifest.count_read(None)
        manifest.skip(None, where, f"not UTF-8 (invalid byte at offset {error.start})")
        return None
    except ValueError:
        manifest.count_read(None)
        manifest.skip(None, where, "invalid JSON")
        return None
    lang = record.get("lang") if isinstance(record, dict) else None
    bucket = manifest.count_read(lang)
    if not isinstance(record, dict) or not record.get("id"):
        manifest.skip(bucket, where, "record without id")
        return None
    if bucket is None:
        manifest.skip(None, where, f"unknown language {lang!r}")
        return None
    text, summary = record.get("text"), record.get("summary")
    for key, value in (("text", text), ("summary", summary)):
        if value is not None and not isinstance(value, str):
            manifest.skip(lang, where, f"`{key}` is not a string but a JSON {_JSON_KINDS.get(type(value), 'value')}")
            return None
    text = _normalize(text or "")
    if not text:
        manifest.skip(lang, where, "empty report")
        return None
    if summary is not None:
        summary = _normalize(summary)
        if not summary:
            manifest.skip(lang, where, "empty summary")
            return None
    return {"id": str(record["id"]), "lang": lang, "text": text, "summary": summary, "source": where}


# ---------------------------------------------------------------- the stage


def read_source(source: dict, manifest: Manifest, layouts: dict[str, Layout], index: DocumentIndex) -> Iterator[dict]:
    path = Path(source["path"])
    if not path.exists():
        raise ClinsumError(f"{path}: corpus source not found (corpus.sources in config)")
    if source["layout"] == "jsonl":
        return read_jsonl_source(path, manifest)
    if source["layout"] not in layouts:
        raise ClinsumError(
            f"{source['path']}: layout {source['layout']!r} is neither jsonl nor one of {sorted(layouts)}"
            " (corpus.layouts in config)"
        )
    return read_layout(path, manifest, layouts[source["layout"]], index)


def ingest(
    sources: list[dict], languages: list[str], out_dir: str | Path, on_bad_input: str = "skip", layouts: dict | None = None
) -> dict:
    """Write `{out_dir}/{lang}.jsonl` for every configured language and `{out_dir}/manifest.json`.

    `layouts`: the `corpus.layouts` of config (None: the presets of the schema). A source that contributes no
    document stops ingest in `error` mode (in `skip` mode it is a warning, in the log and the manifest). The
    stage (`clinsum ingest`) also stops when a configured language gets no document (`check_every_language`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir / ".ingest.lock", f"the corpus in {out_dir}"):
        for stale in out_dir.glob(".ingest-*"):  # the scratch of a killed run
            shutil.rmtree(stale, ignore_errors=True)
        layout_objects = layouts_from_config(preset_layouts() if layouts is None else layouts)
        manifest = Manifest(languages=list(languages), on_bad_input=on_bad_input)
        contributions: list[dict] = []
        with tempfile.TemporaryDirectory(prefix=".ingest-", dir=out_dir) as scratch, _Writers(out_dir, languages) as writers:
            index = DocumentIndex(Path(scratch))
            try:
                for source in sources:
                    contributions.append(_ingest_source(source, manifest, layout_objects, index, writers))
            finally:
                index.close()
            result = {**manifest.to_dict(), "sources": contributions}
        write_json(out_dir / "manifest.json", result)
    for lang, counts in result["languages"].items():
        log.info("%s: read %d, written %d, skipped %d", lang, counts["read"], counts["written"], counts["skipped"])
    return result


def _ingest_source(source: dict, manifest: Manifest, layouts: dict[str, Layout], index: DocumentIndex, writers) -> dict:
    """Read one source into the writers; return the source with what it contributed. A source that gives no
    document stops ingest in `error` mode, and is a warning in `skip` mode."""
    before = (sum(manifest.written.values()), len(manifest.skipped), len(manifest.ignored), sum(manifest.read.values()))
    written: Counter = Counter()
    for record in read_source(source, manifest, layouts, index):
        lang = record["lang"]
        first = index.first_seen(record["id"], record["source"])
        if first is not None:
            manifest.skip(lang, record["source"], f"duplicate id {record['id']} (first seen in {first})")
            continue
        writers.write(lang, record)
        manifest.written[lang] += 1
        written[lang] += 1
    read = sum(manifest.read.values()) - before[3]
    skipped, ignored = len(manifest.skipped) - before[1], len(manifest.ignored) - before[2]
    contribution = {**source, "written": dict(sorted(written.items())), "read": read, "skipped": skipped,
                    "ignored_files": ignored}
    if not written:
        message = (f"corpus source {source['path']} (layout {source['layout']}) contributed no document: {read} read, "
                   f"{skipped} skipped, {ignored} files matching no file pattern of the layout")
        if manifest.on_bad_input == "error":
            raise ClinsumError(message + " (corpus.on_bad_input: error)")
        manifest.warn(message)
    return contribution


def check_every_language(result: dict, out_dir: Path) -> None:
    """A configured language without documents stops the run at ingest, before anything trains on or scores
    nothing: its outputs are removed and the manifest is kept as `manifest.failed.json`, and the error names
    the language, what was read and skipped for it, and the sources."""
    empty = [lang for lang in result["languages"] if lang != "unknown" and not result["languages"][lang]["written"]]
    if not empty:
        (out_dir / "manifest.failed.json").unlink(missing_ok=True)
        return
    os.replace(out_dir / "manifest.json", out_dir / "manifest.failed.json")
    for lang in result["languages"]:
        (out_dir / f"{lang}.jsonl").unlink(missing_ok=True)
    details = []
    for lang in empty:
        counts = result["languages"][lang]
        reasons = ", ".join(f"{reason}: {n}" for reason, n in counts["skipped_by_reason"].items()) or "none"
        details.append(f"{lang} (read {counts['read']}, skipped {counts['skipped']}; skipped by reason: {reasons})")
    sources = "; ".join(f"{s['path']} ({s['layout']}: wrote {sum(s['written'].values())})" for s in result["sources"])
    raise ClinsumError(
        f"no document for the configured language(s) {'; '.join(details)}; sources: {sources}. Check corpus.sources "
        f"and languages in the config (manifest: {out_dir / 'manifest.failed.json'})"
    )


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
    result = ingest(json.loads(args.sources), args.languages, args.out_dir, args.on_bad_input, json.loads(args.layouts or "null"))
    check_every_language(result, Path(args.out_dir))


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("ingest", help="read MultiClinSum folders/zips and JSONL into per-language JSONL")
    parser.add_argument("--sources", required=True, help='JSON list of {"path": ..., "layout": <a layout name>|jsonl}')
    parser.add_argument("--languages", nargs="+", required=True, help="languages to keep (others are skipped)")
    parser.add_argument("--on-bad-input", choices=["skip", "error"], required=True, help="skip and count, or stop")
    parser.add_argument(
        "--layouts", help="JSON of corpus.layouts: name -> {files, folders, unpaired_sets, id} (default: the schema's presets)"
    )
    parser.add_argument("--out-dir", required=True, help="writes {lang}.jsonl and manifest.json here")
    parser.set_defaults(func=_run)
