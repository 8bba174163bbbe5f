"""The paper's setup rehearsed: config/paper-rehearsal.yaml is config/paper.yaml but for models, backends,
resources, corpus and generation lengths, and it runs end to end on a MultiClinSum-shaped corpus with
Qwen2.5-shaped stand-ins (a reduced corpus here; README gives the full run's time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clinsum.settings import merge
from conftest import REPO, copy_checkout

# What the rehearsal may change, and why: the stand-in models and their builds, the generated corpus,
# backends, precision and resources for a CPU, and generation lengths. A path here covers its sub-keys.
REHEARSAL_MAY_CHANGE = {
    "models": "stand-in models",
    "teacher.model": "stand-in models",
    "student.model": "stand-in models",
    "evaluate.bertscore.model": "stand-in models",
    "judge.model": "stand-in models",
    "corpus.sources": "the generated corpus",
    "corpus.synthetic": "the generated corpus",
    "teacher.backend": "backends",
    "infer.backend": "backends",
    "teacher.vllm": "backends",
    "infer.vllm": "backends",
    "teacher.python": "backends",
    "infer.python": "backends",
    "judge.backend": "backends",
    "judge.vllm": "backends",
    "judge.python": "backends",
    "judge.dtype": "precision on a CPU",
    "judge.batch_size": "resources",
    "judge.resources": "resources",
    "judge.max_new_tokens": "generation lengths",
    "teacher.dtype": "precision on a CPU",
    "infer.dtype": "precision on a CPU",
    "teacher.batch_size": "resources",
    "infer.batch_size": "resources",
    "teacher.resources": "resources",
    "crop.resources": "resources",
    "train.resources": "resources",
    "infer.resources": "resources",
    "evaluate.resources": "resources",
    "teacher.max_new_tokens": "generation lengths",
    "teacher.retry_max_new_tokens": "generation lengths",
    "train.eval_max_new_tokens": "generation lengths",
    "infer.max_new_tokens": "generation lengths",
    "reward.use_vllm": "backends",
    "reward.resources": "resources",
    "reward.max_new_tokens": "generation lengths",
}


def effective(configfile: str) -> dict:
    """The configuration a run with this --configfile sees: merged over config/config.yaml as Snakemake does."""
    load = lambda name: yaml.safe_load((REPO / "config" / name).read_text())  # noqa: E731
    return merge(load("config.yaml"), load(configfile))


def leaf_differences(a, b, prefix="") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return {path for key in a.keys() | b.keys()
                for path in leaf_differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)}
    return set() if a == b else {prefix}


def disallowed(paths: set[str]) -> set[str]:
    def allowed(path):
        parts = path.split(".")
        return any(".".join(parts[:n]) in REHEARSAL_MAY_CHANGE for n in range(1, len(parts) + 1))

    return {path for path in paths if not allowed(path)}


def test_rehearsal_changes_only_models_backends_resources_corpus_and_lengths():
    paper, rehearsal = effective("paper.yaml"), effective("paper-rehearsal.yaml")
    differences = leaf_differences(paper, rehearsal)
    assert disallowed(differences) == set(), "the rehearsal must keep every other key of config/paper.yaml"
    # it does change what it must, or it rehearses nothing on a CPU
    assert {"teacher.model", "student.model", "teacher.backend", "infer.backend", "corpus.sources"} <= differences
    # the keys the issue names are the paper's, whatever their value
    for key in ("split", "prompts"):
        assert rehearsal[key] == paper[key]
    for key in ("prompt_tokens", "answer_tokens"):
        assert rehearsal["crop"][key] == paper["crop"][key] == {"prompt_tokens": 2566, "answer_tokens": 512}[key]
    for key in ("gamma", "lr", "epochs", "eval_every", "documents_per_step", "selection", "tokens_per_batch", "kl"):
        assert rehearsal["train"].get(key) == paper["train"].get(key), key
    for key in ("max_prompt_tokens", "on_long_prompt", "on_truncated", "shards", "temperature"):
        assert rehearsal["teacher"][key] == paper["teacher"][key], key
    assert rehearsal["infer"]["max_input_tokens"] == paper["infer"]["max_input_tokens"] == 16384


def test_the_difference_check_catches_a_changed_setting():
    paper = effective("paper.yaml")
    changed = merge(paper, {"train": {"lr": 1e-3, "documents_per_step": {"distil": 4}}, "teacher": {"backend": "transformers"}})
    assert disallowed(leaf_differences(paper, changed)) == {"train.lr", "train.documents_per_step.distil"}


@pytest.mark.slow
def test_rehearsal_runs_end_to_end_on_a_reduced_corpus(tmp_path):
    """The whole DAG of config/paper-rehearsal.yaml on 10 gold pairs and 2 test reports per language (with each
    language's Table 1 extremes): the 37,351-character Portuguese report goes whole through the teacher, is
    cropped to the paper's 2,566-token prompt for training, and goes whole through inference."""
    workdir = copy_checkout(tmp_path)
    (workdir / "config" / "reduced.yaml").write_text("corpus:\n  synthetic: {gold: 10, test: 2}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/paper-rehearsal.yaml", "config/reduced.yaml"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=3600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    results = workdir / "results"

    corpus = {r["id"]: r for r in map(json.loads, (results / "corpus" / "pt.jsonl").open())}
    longest = max(corpus.values(), key=lambda r: len(r["text"]) if r["summary"] is not None else 0)
    longest_test = max((r for r in corpus.values() if r["summary"] is None), key=lambda r: len(r["text"]))
    assert len(longest["text"]) == len(longest_test["text"]) == 37351  # Table 1's Portuguese maximum
    split = json.loads((results / "split" / "pt.json").read_text())
    assert longest["id"] in split["train"] + split["valid"] and longest_test["id"] in split["test"]

    teacher = {r["id"]: r for r in map(json.loads, (results / "teacher" / "pt.jsonl").open())}
    assert teacher[longest["id"]]["prompt_tokens"] > 11000 and not teacher[longest["id"]]["prompt_cropped"]
    summary = json.loads((results / "teacher" / "summary.json").read_text())
    assert sum(lang["prompt_cropped"] for lang in summary.values()) == 0  # the paper's context holds every report
    assert summary["pt"]["records"] == len(split["train"]) + len(split["valid"])

    crop = [json.loads(line) for line in (results / "data" / "train.jsonl").open()]
    crop += [json.loads(line) for line in (results / "data" / "valid.jsonl").open()]
    rows = [r for r in crop if r["id"] == longest["id"]]
    assert {r["task"] for r in rows} == {"summarize", "extract"}
    assert all(r["report_cropped"] and 2500 < r["prompt_tokens"] <= 2566 for r in rows)
    assert max(r["prompt_tokens"] for r in crop) <= 2566 and max(r["answer_tokens"] for r in crop) <= 512

    for model in ("base", "standard", "distil"):
        predictions = {r["id"]: r for r in map(json.loads, (results / "predictions" / model / "pt.jsonl").open())}
        assert predictions[longest_test["id"]]["prompt_tokens"] > 11000
        assert not predictions[longest_test["id"]]["input_truncated"]

    plan = subprocess.run(
        [sys.executable, "-m", "clinsum", "plan", "--configfile", "config/paper-rehearsal.yaml", "config/reduced.yaml", "--json"],
        cwd=workdir, env={**env, "PYTHONPATH": str(workdir / "workflow")}, capture_output=True, text=True, check=True,
    )
    planned = {row["variant"]: row for row in json.loads(plan.stdout)["variants"]}
    for variant in ("standard", "distil"):
        log = list((results / "models" / variant / "train_log.csv").read_text().splitlines())
        assert len(log) - 1 == planned[variant]["optimizer_steps"]
    documents = planned["distil"]["documents"]  # the paper's batch sizes: 1 (distil) and 2 (standard), 3 epochs
    assert planned["distil"]["optimizer_steps"] == 3 * documents
    assert planned["standard"]["optimizer_steps"] == 3 * -(-documents // 2)
    assert "Table 4" in (results / "report" / "table4.md").read_text()
