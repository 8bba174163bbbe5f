"""Corpus sources on disk, shared by the ingest stage and the workflow's start-up checks.

- Walking a folder: symbolic links are followed, a folder reached twice (a link loop, or two links to
  one folder) is read once and recorded; macOS metadata (`__MACOSX/`, `._*`, `.DS_Store`) is passed
  over before anything else looks at it, and counted.
- Zips, nested zips included, are read through `Archives`: listing a zip parses its central directory
  once and notes where each member lies (`ZipEntry`); reading a member then takes one seek and one
  read, with no directory in memory, instead of re-parsing the directory for every member.
- Layouts as data: a layout is a list of file-name regular expressions with named groups `set`, `lang`,
  `n` and `kind`, plus folder patterns whose `lang` group gives the language of the files inside.
- A content fingerprint of the sources, for Snakemake's `params` rerun trigger: touching a file changes
  nothing, editing, adding or removing a document does. Content hashes are cached per folder, keyed by
  the names, sizes and modification times of its files, so an unchanged corpus is only stat-ed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

from .io import ClinsumError, atomic_path
from .settings import SCHEMA_PATH as SCHEMA

LAYOUT_GROUPS = {"set", "lang", "n", "kind"}
ID_FIELDS = {"set": "gs", "lang": "en", "n": 1, "stem": "x"}
# zip members that cannot be read, for whatever reason the zip library gives
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, RuntimeError)


def is_macos_metadata(name: str) -> bool:
    """Finder's `.DS_Store`, AppleDouble `._*` files and the `__MACOSX` folder of macOS zips."""
    return name in (".DS_Store", "__MACOSX") or name.startswith("._")


def in_macos_metadata(relative: str) -> bool:
    if "__MACOSX" not in relative and "/." not in relative and not relative.startswith("."):
        return False  # the common case, without splitting the path
    return any(is_macos_metadata(part) for part in relative.split("/"))


def is_zip_name(name: str) -> bool:
    return name.lower().endswith(".zip")


class ZipEntry(NamedTuple):
    """Where a zip member's bytes lie, as the zip's central directory says."""

    offset: int
    compressed: int
    size: int
    crc: int
    method: int
    flags: int

    @classmethod
    def of(cls, info: zipfile.ZipInfo) -> "ZipEntry":
        return cls(info.header_offset, info.compress_size, info.file_size, info.CRC, info.compress_type, info.flag_bits)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a file lives: a path on disk, or a member inside a chain of (possibly nested) zips, with
    the member's entry when the listing found it."""

    path: str
    members: tuple[str, ...] = ()
    entry: ZipEntry | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return "!".join([self.path, *self.members])

    @property
    def name(self) -> str:
        """The file's own name, without its folders."""
        return (self.members[-1] if self.members else self.path).rsplit("/", 1)[-1]


@dataclass
class WalkNotes:
    """What a walk passed over on purpose, so that nothing is dropped without a trace."""

    macos_metadata: int = 0
    folders_reached_twice: list[str] = field(default_factory=list)


def walk_folder(root: str | Path, notes: WalkNotes) -> Iterator[tuple[str, os.DirEntry]]:
    """(path relative to `root` with `/` separators, entry) of every file under `root`: a folder's files
    in name order, then its sub-folders in name order.

    Links are followed; a folder reached a second time is recorded in `notes` and not read again.
    An entry whose type cannot be determined (a broken link) is yielded as a file: reading it fails
    later with a message that names it.
    """
    seen: set[tuple[int, int]] = set()
    pending = [(str(root), "")]  # a stack, not recursion: one generator frame per file, not one per level
    while pending:
        directory, prefix = pending.pop()
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen:
            notes.folders_reached_twice.append(directory)
            continue
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(directory) as entries:
            ordered = sorted(entries, key=lambda entry: entry.name)
        folders = []
        for entry in ordered:
            if is_macos_metadata(entry.name):
                notes.macos_metadata += 1
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                folders.append((entry.path, f"{prefix}{entry.name}/"))
            else:
                yield f"{prefix}{entry.name}", entry
        pending.extend(reversed(folders))


class Archives:
    """Zip access for one pass over a corpus; use as a context manager.

    `members` lists a zip's members with where each one lies (its central directory is parsed, then let
    go); `read` reads a member from that `ZipEntry` in one seek and one read, through a few cached file
    handles. So reading a whole zip parses its directory once per pass and keeps none of it in memory.
    A nested zip is copied to a temporary file once per pass, never held in memory.
    """

    def __init__(self, keep_open: int = 8):
        self.keep_open = keep_open  # file handles of top-level zips
        self._handles: OrderedDict[str, BinaryIO] = OrderedDict()
        self._spills: dict[tuple[str, tuple[str, ...]], BinaryIO] = {}
        self._fallback: tuple[tuple[str, tuple[str, ...]], zipfile.ZipFile] | None = None

    def __enter__(self) -> "Archives":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback[1].close()
            self._fallback = None
        for handle in [*self._handles.values(), *self._spills.values()]:
            handle.close()
        self._handles.clear()
        self._spills.clear()

    def _zip_file(self, path: str, chain: tuple[str, ...]) -> str | BinaryIO:
        """What holds the zip: its path, or for a zip inside zips, its temporary copy."""
        if not chain:
            return path
        key = (path, chain)
        if key not in self._spills:
            spill = tempfile.TemporaryFile()
            try:
                with self._open_zip(path, chain[:-1]) as parent, parent.open(chain[-1]) as member:
                    shutil.copyfileobj(member, spill, 1 << 20)
            except BaseException:
                spill.close()
                raise
            self._spills[key] = spill
        spill = self._spills[key]
        spill.seek(0)
        return spill

    @contextmanager
    def _open_zip(self, path: str, chain: tuple[str, ...]) -> Iterator[zipfile.ZipFile]:
        archive = zipfile.ZipFile(self._zip_file(path, chain))
        try:
            yield archive
        finally:
            archive.close()

    def members(self, path: str, chain: tuple[str, ...] = ()) -> Iterator[tuple[str, ZipEntry]]:
        """(name, entry) of every file in the zip at `path`, or in the zip reached through `chain`."""
        with self._open_zip(path, chain) as archive:
            for info in archive.infolist():
                if not info.is_dir():
                    yield info.filename, ZipEntry.of(info)

    def _handle(self, path: str, chain: tuple[str, ...]) -> BinaryIO:
        if chain:
            return self._zip_file(path, chain)
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = open(path, "rb")
            while len(self._handles) > self.keep_open:
                self._handles.popitem(last=False)[1].close()
        else:
            self._handles.move_to_end(path)
        return handle

    def read(self, location: Location) -> bytes:
        if not location.members:
            with open(location.path, "rb") as handle:
                return handle.read()
        chain, name = location.members[:-1], location.members[-1]
        entry = location.entry
        if entry is not None and entry.method in _RAW_METHODS and not entry.flags & _ENCRYPTED:
            return _read_member(self._handle(location.path, chain), entry, name)
        # other compressions (bzip2, lzma), encryption, or no entry: the zip library, one zip kept open
        key = (location.path, chain)
        if self._fallback is None or self._fallback[0] != key:
            if self._fallback is not None:
                self._fallback[1].close()
            self._fallback = (key, zipfile.ZipFile(self._zip_file(location.path, chain)))
        return self._fallback[1].read(name)


_RAW_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_ENCRYPTED = 0x1
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length


def _read_member(handle: BinaryIO, entry: ZipEntry, name: str) -> bytes:
    """A stored or deflated member in one seek and one read, CRC checked: what `ZipFile.read` does,
    without the zip's directory in memory nor per-member file and decompressor objects."""
    handle.seek(entry.offset)
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {name}")
    handle.seek(name_length + extra_length, os.SEEK_CUR)
    data = handle.read(entry.compressed)
    if entry.method == zipfile.ZIP_DEFLATED:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    if zlib.crc32(data) != entry.crc or len(data) != entry.size:
        raise zipfile.BadZipFile(f"bad CRC-32 or size for {name}")
    return data


# ---------------------------------------------------------------- layouts as data


@dataclass(frozen=True, slots=True)
class FileMatch:
    set: str
    lang: str
    number: int
    is_summary: bool


class Layout:
    """A corpus layout from config (`corpus.layouts.{name}`): which files are documents, and how to read
    their set, language, number and kind from the path (see config/README.md, `corpus`)."""

    def __init__(self, name: str, spec: dict):
        self.name = name
        self.files = [self._compile(pattern, "files", {"lang", "n"}) for pattern in spec["files"]]
        self.folders = [self._compile(pattern, "folders", {"lang"}) for pattern in spec["folders"]]
        self.unpaired_sets = {value.lower() for value in spec["unpaired_sets"]}
        self._folder_languages: dict[str, tuple[str, str] | None] = {}
        self.id_format = spec["id"]
        try:
            self.id_format.format(**ID_FIELDS)
        except (KeyError, IndexError, ValueError) as error:
            raise ClinsumError(
                f"corpus.layouts.{name}.id: {self.id_format!r} is not a format of {sorted(ID_FIELDS)} ({error})"
            ) from None

    def _compile(self, pattern: str, key: str, required: set[str]) -> re.Pattern:
        where = f"corpus.layouts.{self.name}.{key}: {pattern!r}"
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as error:
            raise ClinsumError(f"{where} is not a regular expression ({error})") from None
        groups = set(compiled.groupindex)
        if not required <= groups or not groups <= LAYOUT_GROUPS:
            raise ClinsumError(
                f"{where} must have the named groups {sorted(required)} and no others than {sorted(LAYOUT_GROUPS)}"
                f" (it has {sorted(groups)})"
            )
        return compiled

    def match(self, relative: str) -> FileMatch | None:
        """The document a file is, from its path relative to the source (zips count as folders)."""
        for pattern in self.files:
            found = pattern.search(relative)
            if found:
                groups = found.groupdict()
                return FileMatch(
                    set=(groups.get("set") or "").lower(),
                    lang=groups["lang"].lower(),
                    number=int(groups["n"]),
                    is_summary=bool(groups.get("kind")),
                )
        return None

    def is_document(self, relative: str) -> bool:
        return any(pattern.search(relative) for pattern in self.files)

    def folder_language(self, relative: str) -> tuple[str, str] | None:
        """(folder, language) of the nearest enclosing folder (or zip) that a folder pattern names."""
        parent = relative.rpartition("/")[0]
        if parent not in self._folder_languages:
            self._folder_languages[parent] = self._nearest_folder_language(parent)
        return self._folder_languages[parent]

    def _nearest_folder_language(self, parent: str) -> tuple[str, str] | None:
        for folder in reversed(parent.split("/")):
            name = folder[:-4] if is_zip_name(folder) else folder
            for pattern in self.folders:
                found = pattern.fullmatch(name)
                if found:
                    return folder, found["lang"].lower()
        return None

    def document_id(self, doc_set: str, lang: str, number: int, file_name: str) -> str:
        """The id of a document, from its report's file name (or its summary's, without a report)."""
        return self.id_format.format(set=doc_set, lang=lang, n=number, stem=file_name.rsplit(".", 1)[0])


@functools.cache
def _schema() -> dict:
    import yaml

    if not SCHEMA.exists():
        raise ClinsumError(f"{SCHEMA}: the config schema is missing (it holds the layout presets and defaults)")
    return yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))


def preset_layouts() -> dict:
    """The layouts the schema presets (`corpus.layouts`), for callers outside Snakemake."""
    presets = _schema()["properties"]["corpus"]["properties"]["layouts"]["properties"]
    return {name: spec["default"] for name, spec in presets.items()}


def layouts_from_config(layouts: dict) -> dict[str, Layout]:
    """Layout objects from config; keys a layout leaves out take the schema's defaults."""
    defaults = {
        key: value["default"]
        for key, value in _schema()["definitions"]["layout"]["properties"].items()
        if "default" in value
    }
    return {name: Layout(name, {**defaults, **spec}) for name, spec in layouts.items()}


def check_sources(sources: list[dict], layouts: dict[str, Layout]) -> None:
    """Every source path exists and names a known layout; raise naming the first that does not."""
    for number, source in enumerate(sources):
        where = f"corpus.sources[{number}]"
        if not Path(source["path"]).exists():
            raise ClinsumError(f"{where}: {source['path']} does not exist")
        if source["layout"] != "jsonl" and source["layout"] not in layouts:
            raise ClinsumError(
                f"{where}: layout {source['layout']!r} is neither jsonl nor a name under corpus.layouts"
                f" ({', '.join(sorted(layouts))})"
            )


# ---------------------------------------------------------------- the content fingerprint


def _file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_input_file(relative: str, layout: Layout | None) -> bool:
    """Whether a file can hold documents: the layout names it, or it is a zip (or JSONL for `jsonl`)."""
    if layout is None:
        return relative.lower().endswith(".jsonl")
    return is_zip_name(relative) or layout.is_document(relative)


def _input_files(root: Path, layout: Layout | None) -> dict[str, list[tuple[str, str]]]:
    """Folder (relative) -> [(file name, path)] of the files under `root` that can hold documents."""
    folders: dict[str, list[tuple[str, str]]] = {}
    if root.is_file():
        folders[""] = [(root.name, str(root))]
        return folders
    for relative, entry in walk_folder(root, WalkNotes()):
        if _is_input_file(relative, layout):
            folder, _, name = relative.rpartition("/")
            folders.setdefault(folder, []).append((name, entry.path))
    return folders


def _folder_digest(files: list[tuple[str, str]], key: str, cache: dict, counter: list[int]) -> str:
    """The content digest of one folder's input files, from the cache while their stats are unchanged."""
    stats = []
    for name, path in files:
        try:
            info = os.stat(path)
            stats.append(f"{name}\0{info.st_size}\0{info.st_mtime_ns}")
        except OSError:
            stats.append(f"{name}\0unreadable")
    stat_key = hashlib.blake2b("\n".join(stats).encode(), digest_size=16).hexdigest()
    cached = cache.get(key)
    if cached and cached[0] == stat_key:
        return cached[1]
    digest = hashlib.blake2b(digest_size=16)
    for name, path in files:
        try:
            content = _file_digest(path)
            counter[0] += 1
        except OSError:
            content = "unreadable"
        digest.update(f"{name}\0{content}\n".encode())
    cache[key] = [stat_key, digest.hexdigest()]
    return cache[key][1]


def fingerprint_sources(sources: list[dict], layouts: dict[str, Layout], cache_path: str | Path) -> tuple[str, int]:
    """(a digest of the content of every file of the sources that can hold documents, files hashed now).

    Equal digests mean equal input files: a touched file keeps the digest, an edited, added or removed
    one changes it. The cache at `cache_path` (created if missing, rebuilt if unreadable) keeps each
    folder's digest under the names, sizes and modification times of its files.
    """
    check_sources(sources, layouts)
    cache_path = Path(cache_path)
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    before = json.dumps(cache, sort_keys=True)
    hashed = [0]
    total = hashlib.blake2b(digest_size=16)
    for source in sources:
        root = Path(source["path"])
        layout = None if source["layout"] == "jsonl" else layouts[source["layout"]]
        total.update(f"source\0{source['path']}\0{source['layout']}\n".encode())
        for folder, files in sorted(_input_files(root, layout).items()):
            key = f"{root.resolve()}\0{folder}"
            total.update(f"{folder}\0{_folder_digest(files, key, cache, hashed)}\n".encode())
    if json.dumps(cache, sort_keys=True) != before:
        with atomic_path(cache_path) as handle:
            json.dump(cache, handle)
    return total.hexdigest(), hashed[0]
