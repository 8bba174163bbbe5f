"""Streaming JSONL and atomic JSON writes shared by every stage."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


_UMASK = os.umask(0)
os.umask(_UMASK)


class ClinsumError(Exception):
    """A user-facing error: the CLI prints its message (which names the file) and exits 1."""


def fingerprint(values, files=(), code_files=()) -> str:
    """A digest of what a resumable job's output depends on: `values` (settings, prompts; as JSON), the
    versions (size, modification time) of `files` (a directory stands for every file under it), and the
    content of `code_files`. Partial work made under another digest is discarded."""
    versions = []
    for path in map(Path, files):
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for member in members:
            stat = member.stat()
            versions.append([str(member), stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256(json.dumps([values, versions], sort_keys=True, ensure_ascii=False, default=str).encode())
    for path in code_files:
        digest.update(b"\0" + Path(path).read_bytes())
    return digest.hexdigest()


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield one record per non-empty line; a malformed line raises naming the file and line."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ClinsumError(f"{path}:{number}: invalid JSON ({error.msg})") from None


def remove_stale_temporaries(path: str | os.PathLike) -> int:
    """Remove the temporary files a killed writer of `path` left beside it (`.{name}.*.tmp`, atomic_path's);
    return how many. Only one job writes an output at a time (Snakemake's own lock), so any such file is stale."""
    path = Path(path)
    removed = 0
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def glob_escape(name: str) -> str:
    """A file name as a glob pattern matching only itself."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in name)


@contextmanager
def atomic_path(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file beside `path` and move it into place only on success; a temporary file an earlier,
    killed writer of `path` left is removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp, path)
    except OSError as error:
        os.unlink(tmp)
        raise named(error, path) from None
    except BaseException:
        os.unlink(tmp)
        raise


def named(error: OSError, path) -> OSError:
    """A system error that names the file it is about (a failed write names none: a full disk, say)."""
    if error.filename is not None or error.errno is None:
        return error
    return type(error)(error.errno, error.strerror, str(path))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically, one JSON object per line; return how many were written."""
    count = 0
    with atomic_path(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2)
        handle.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str):
    """Hold an exclusive lock on `path` (a lock file: created, and removed on release) for the whole block; a
    second process that asks for it stops at once, naming the file and the process that holds it. `what` says
    what the lock guards, for the message (e.g. "the partial file results/teacher/en/1-of-2.partial.jsonl").

    An advisory flock: it guards against a second clinsum job (an orphan of a killed Snakemake, a rerun beside
    it), which all take it; it is released when the holder exits, however it exits."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "an unknown process"
        handle.close()
        raise ClinsumError(
            f"{what} is being written by another process ({holder}, lock {path}): wait for it to end or stop it, "
            "then run again"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def pairs_option(values: list[str], flag: str) -> dict[str, str]:
    """A command line's NAME=PATH values (LANG=results/predictions/...) as a mapping; a malformed one is named."""
    pairs = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ClinsumError(f"{flag}: expected NAME=PATH, got {value!r}")
        pairs[name] = path
    return pairs


class JsonlAppender:
    """Append records to a JSONL file, flushed and fsynced per record, so a killed job keeps them.

    A torn last line (a crash mid-write) is cut off on open, so resumed writes stay valid JSONL.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.existing = list(self._read_complete())
        self._handle = open(self.path, "a", encoding="utf-8")

    def _read_complete(self) -> Iterator[dict]:
        if not self.path.exists():
            return
        good_bytes = 0
        with open(self.path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    break
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break
                good_bytes += len(line)
                yield record
        if good_bytes != self.path.stat().st_size:
            with open(self.path, "r+b") as handle:
                handle.truncate(good_bytes)

    def write(self, record: dict) -> None:
        try:
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as error:
            raise named(error, self.path) from None

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_ID_PREFIX = b'{"id": "'
_DECODER = json.JSONDecoder()


def line_id(line: bytes) -> str | None:
    """The id of a JSONL line written with "id" as its first key (as the stages write records), read without
    parsing the rest of the line; None when the line is laid out otherwise (then parse it whole)."""
    if not line.startswith(_ID_PREFIX):
        return None
    try:
        value, _ = _DECODER.raw_decode(line[:512].decode("utf-8"), len(_ID_PREFIX) - 1)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, str) else None


def parse_line(path, number: int, line: bytes) -> dict:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ClinsumError(f"{path}:{number}: invalid JSON ({getattr(error, 'msg', error)})") from None
    if not isinstance(record, dict):
        raise ClinsumError(f"{path}:{number}: not a JSON object")
    return record


def iter_jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line) of each non-empty line, unparsed."""
    offset = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, offset, line
            offset += len(line)


class JsonlIndex:
    """The records of a JSONL file by id, read on demand: memory holds each line's offset, not its record."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offsets: dict[str, tuple[int, int]] = {}
        for number, offset, line in iter_jsonl_lines(self.path):
            doc_id = line_id(line)
            if doc_id is None:
                doc_id = parse_line(self.path, number, line).get("id")
            if not isinstance(doc_id, str):
                raise ClinsumError(f"{self.path}:{number}: a record without a string id")
            if doc_id in self.offsets:
                raise ClinsumError(f"{self.path}:{number}: document {doc_id!r} appears more than once")
            self.offsets[doc_id] = (number, offset)
        self._handle = open(self.path, "rb")

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def get(self, doc_id: str) -> dict | None:
        if doc_id not in self.offsets:
            return None
        number, offset = self.offsets[doc_id]
        self._handle.seek(offset)
        record = parse_line(self.path, number, self._handle.readline())
        if record.get("id") != doc_id:
            raise ClinsumError(f"{self.path}:{number}: changed while being read (expected {doc_id!r})")
        return record

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "JsonlIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
