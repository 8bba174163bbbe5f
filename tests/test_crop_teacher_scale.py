"""The crop/teacher scale benchmark: its corpus, its stand-in generator, and a tiny run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from clinsum.io import read_json, read_jsonl
from clinsum.synthetic import TABLE1

from conftest import REPO, load_benchmark


def test_corpus_is_multiclinsum_shaped_and_complete(tmp_path):
    bench = load_benchmark("crop_teacher_scale")
    counts = bench.write_corpus(tmp_path, 23)
    assert counts["documents"] == 23
    per_language = {}
    for lang in bench.LANGUAGES:
        records = list(read_jsonl(tmp_path / "corpus" / f"{lang}.jsonl"))
        per_language[lang] = len(records)
        # document 1 of a set is its longest: Table 1's maximum
        assert len(records[0]["text"]) == TABLE1[lang]["report"].max
        assert max(len(r["text"]) for r in records) == TABLE1[lang]["report"].max
        split = read_json(tmp_path / "split" / f"{lang}.json")
        assert sorted(split["train"] + split["valid"] + split["test"]) == sorted(r["id"] for r in records)
        teacher = [r["id"] for r in read_jsonl(tmp_path / "teacher" / f"{lang}.jsonl")]
        assert sorted(teacher) == sorted(split["train"] + split["valid"])
    assert per_language == {"en": 6, "es": 6, "fr": 6, "pt": 5}
    assert counts["characters"] == sum(len(r["text"]) + len(r["summary"]) for lang in bench.LANGUAGES
                                       for r in read_jsonl(tmp_path / "corpus" / f"{lang}.jsonl"))


def test_stand_in_generator_gives_lengths_and_top_k():
    bench = load_benchmark("crop_teacher_scale")
    prompts = [list(range(5, 5 + n)) for n in (3, 100, 2000)]
    completions = bench.StandInGenerator().generate(prompts, 512, top_logprobs=4)
    for prompt, completion in zip(prompts, completions):
        n = len(completion.token_ids)
        assert 40 <= n <= 512 and completion.prompt_tokens == len(prompt)
        assert completion.top_ids.shape == completion.top_logprobs.shape == (n, 4)
        assert completion.top_ids.dtype == np.int32 and completion.top_logprobs.dtype == np.float32
        assert completion.top_ids[:, 0].tolist() == completion.token_ids
    assert bench.StandInGenerator().generate(prompts, 512)[0].top_ids is None


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_a_tiny_corpus(tmp_path, qwen_dir):
    out = tmp_path / "scale.json"
    command = [sys.executable, str(REPO / "benchmarks" / "crop_teacher_scale.py"), "--documents", "40",
               "--workers", "2", "--teacher-documents", "60", "--shards", "3", "--topk", "4",
               "--tokenizer", str(qwen_dir), "--work", str(tmp_path / "work"), "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| 40 | per_document |" in run.stdout and "| documents |" in run.stdout
    report = json.loads(out.read_text())

    crop = report["crop"][0]
    assert crop["documents"] == 40 and crop["same_output"]
    assert set(crop["runs"]) == {"per_document", "batched, 1 process x 1 thread", "batched, 1 process x 2 threads",
                                 "batched, 2 processes x 1 thread"}
    examples = {run["examples"] for run in crop["runs"].values()}
    assert len(examples) == 1 and examples.pop() > 40  # both tasks of every train/valid document
    assert all(run["fallbacks"] == 0 for name, run in crop["runs"].items() if name != "per_document")
    assert crop["runs"]["batched, 2 processes x 1 thread"]["workers_peak_gib"] > 0  # workers in processes of their own

    teacher = report["teacher"]
    split = read_json(tmp_path / "work" / "teacher-60" / "split" / "en.json")
    assert teacher["gather"]["records"] == len(split["train"]) + len(split["valid"])
    assert [row["shard"] for row in teacher["per_shard"]] == ["1-of-3", "2-of-3", "3-of-3"]
    assert sum(row["documents"] for row in teacher["per_shard"]) == teacher["gather"]["records"]
    spread = teacher["gather"]["shards"]
    assert spread["count"] == 3
    assert spread["documents"]["max"] == max(row["documents"] for row in teacher["per_shard"])
    assert spread["prompt_tokens"]["min"] == min(row["prompt_tokens"] for row in teacher["per_shard"])
    assert teacher["first_shard"]["prompts"]["same_ids"]
    # int32 ids and float32 log-probs: 8 bytes per token and k, plus the safetensors header (names, shapes)
    assert 32 < teacher["topk"]["4"]["bytes_per_token"] < 36
