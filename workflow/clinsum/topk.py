"""The teacher's top-k sidecar, `results/teacher/{lang}.topk.safetensors`: its one writer and reader.

Tensors `"{id}/ids"` (int32) and `"{id}/logprobs"` (float32), [n, k] each, row j belonging to the teacher's
j-th generated token, metadata `k` (64 bytes a generated token at k = 8). A teacher shard appends each
record's arrays to a partial binary file as it goes (`TopkPartialStore`, resumable), writes its shard's
safetensors at the end (`write_safetensors_stream`), and the gather merges the shards (`gather_topk`), all
streaming, never all in memory. distil_kl training reads the gathered file (`TeacherTopk`).
"""

from __future__ import annotations

import json
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

from .io import ClinsumError, atomic_path

SUFFIX = ".topk.safetensors"


class TeacherTopk:
    """The teacher's top-k sidecars, {lang: results/teacher/{lang}.topk.safetensors}, read lazily."""

    def __init__(self, paths: list[str]):
        from safetensors import safe_open

        self.paths = {}
        for path in paths:
            name = Path(path).name
            if not name.endswith(SUFFIX):
                raise ClinsumError(f"{path}: expected a file named {{lang}}{SUFFIX}")
            if not Path(path).is_file():
                raise ClinsumError(f"{path}: no such teacher top-k file")
            self.paths[name[: -len(SUFFIX)]] = path
        self.handles = {lang: safe_open(path, framework="numpy") for lang, path in self.paths.items()}

    def check(self, dataset) -> int:
        """Every distil_kl extract sequence has its rows; return k."""
        ks = set()
        for doc_id, lang, kl_rows in zip(dataset["id"], dataset["lang"], dataset["kl_rows"]):
            if kl_rows == 0:
                continue
            if lang not in self.handles:
                raise ClinsumError(f"no teacher top-k file for language {lang!r} (have {sorted(self.paths)})")
            handle, path = self.handles[lang], self.paths[lang]
            keys = self._keys(lang)
            if f"{doc_id}/ids" not in keys or f"{doc_id}/logprobs" not in keys:
                raise ClinsumError(f"{path}: no top-k rows for document {doc_id}")
            shape = handle.get_slice(f"{doc_id}/ids").get_shape()
            if shape != handle.get_slice(f"{doc_id}/logprobs").get_shape() or shape[0] < kl_rows:
                raise ClinsumError(f"{path}: document {doc_id} has top-k rows of shape {shape}, needs {kl_rows} rows")
            ks.add(shape[1])
        if len(ks) > 1:
            raise ClinsumError(f"teacher top-k files mix k values {sorted(ks)}")
        return ks.pop() if ks else 0

    @lru_cache(maxsize=None)
    def _keys(self, lang):
        return set(self.handles[lang].keys())

    def rows(self, lang: str, doc_id: str, n: int):
        handle = self.handles[lang]
        return handle.get_slice(f"{doc_id}/ids")[:n], handle.get_slice(f"{doc_id}/logprobs")[:n]


class TopkPartialStore:
    """Append-only top-k arrays of a shard, in the record order of its partial JSONL.

    Each record adds n*k int32 ids then n*k float32 logprobs. Bytes are fsynced before the JSONL
    record is written, so every kept record has its arrays; bytes past the kept records (a kill
    between the two writes) are cut on open.
    """

    def __init__(self, path: str | os.PathLike, k: int, kept_lengths: list[int]):
        self.path = Path(path)
        self.k = k
        expected = sum(n * k * 8 for n in kept_lengths)
        size = self.path.stat().st_size if self.path.exists() else 0
        if size < expected:
            raise ClinsumError(
                f"{self.path}: {size} bytes of top-k logprobs, but the partial records need {expected};"
                " delete it and the partial .jsonl beside it to start the shard over"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "ab")
        if size > expected:
            self._handle.truncate(expected)

    def write(self, top_ids, top_logprobs) -> None:
        import numpy as np

        ids = np.ascontiguousarray(top_ids, dtype="<i4")
        values = np.ascontiguousarray(top_logprobs, dtype="<f4")
        if ids.shape != values.shape or ids.ndim != 2 or ids.shape[1] != self.k:
            raise ClinsumError(f"top-k arrays of shape {ids.shape}/{values.shape}, expected [n, {self.k}]")
        self._handle.write(ids.tobytes())
        self._handle.write(values.tobytes())
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def iter_partial_topk(path: str | os.PathLike, lengths: list[int], k: int) -> Iterator[tuple]:
    """(ids [n,k] int32, logprobs [n,k] float32) per record, reading the partial binary file in order."""
    import numpy as np

    with open(path, "rb") as handle:
        for n in lengths:
            ids = np.frombuffer(handle.read(n * k * 4), dtype="<i4").reshape(n, k)
            values = np.frombuffer(handle.read(n * k * 4), dtype="<f4").reshape(n, k)
            yield ids, values


def write_safetensors_stream(path: str | os.PathLike, entries: list[tuple[str, str, list[int]]], chunks: Iterable,
                             metadata: dict | None = None) -> None:
    """Write a safetensors file without holding its tensors in memory.

    entries: (name, dtype "I32"|"F32", shape) in data order; chunks: one array per entry, same order.
    """
    import numpy as np

    sizes = {"I32": 4, "F32": 4}
    header: dict = {"__metadata__": {k: str(v) for k, v in (metadata or {}).items()}}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = sizes[dtype] * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data start to 8 bytes
    with atomic_path(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        written = 0
        for (name, dtype, shape), array in zip(entries, chunks):
            array = np.ascontiguousarray(array, dtype="<i4" if dtype == "I32" else "<f4")
            if list(array.shape) != list(shape):
                raise ClinsumError(f"{path}: tensor {name} has shape {array.shape}, header says {shape}")
            handle.write(array.tobytes())
            written += array.nbytes
        if written != offset:
            raise ClinsumError(f"{path}: wrote {written} bytes of tensors, header says {offset}")


def topk_entries(lengths: list[tuple[str, int]], k: int) -> list[tuple[str, str, list[int]]]:
    """The tensors of the records' (id, generated tokens), in order."""
    entries = []
    for doc_id, n in lengths:
        entries += [(f"{doc_id}/ids", "I32", [n, k]), (f"{doc_id}/logprobs", "F32", [n, k])]
    return entries


def write_shard_topk(path: str | os.PathLike, partial_path: str | os.PathLike, lengths: list[tuple[str, int]], k: int) -> None:
    """A shard's safetensors from its partial binary file, whose records are `lengths`: (id, tokens), in order."""
    pairs = iter_partial_topk(partial_path, [n for _, n in lengths], k)
    write_safetensors_stream(path, topk_entries(lengths, k), _flatten(pairs), {"k": k})


def _flatten(pairs: Iterable[tuple]) -> Iterator:
    for ids, values in pairs:
        yield ids
        yield values


def gather_topk(lengths: list[tuple[str, int]], topk_paths, topk_out) -> None:
    from safetensors import safe_open

    handles = [safe_open(str(path), framework="numpy") for path in topk_paths]
    owner, k = {}, None
    for path, handle in zip(topk_paths, handles):
        for name in handle.keys():
            owner[name] = handle
        shard_k = int((handle.metadata() or {}).get("k", 0))
        if k is not None and shard_k != k:
            raise ClinsumError(f"{path}: top-k width {shard_k}, other shards have {k}")
        k = shard_k
    for doc_id, n in lengths:
        for name in (f"{doc_id}/ids", f"{doc_id}/logprobs"):
            if name not in owner:
                raise ClinsumError(f"{', '.join(map(str, topk_paths))}: no top-k tensor {name}")
            shape = owner[name].get_slice(name).get_shape()
            if list(shape) != [n, k]:
                raise ClinsumError(f"top-k tensor {name} has shape {shape}, expected [{n}, {k}]")
    entries = topk_entries(lengths, k)
    write_safetensors_stream(topk_out, entries, (owner[name].get_tensor(name) for name, _, _ in entries), {"k": k})
