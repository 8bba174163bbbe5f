"""The teacher's top-k sidecar, `results/teacher/{lang}.topk.safetensors`: its reader.

Tensors `"{id}/ids"` (int32) and `"{id}/logprobs"` ([n, k] each, row j belonging to the teacher's j-th
generated token), metadata `k`. The teacher stage writes it; distil_kl training reads it here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .io import ClinsumError

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
