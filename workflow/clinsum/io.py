"""Streaming JSONL and atomic JSON writes shared by every stage."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
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


@contextmanager
def atomic_path(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file beside `path` and move it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
