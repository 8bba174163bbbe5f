"""The benchmarks run: the training benchmark runs all three recipes end to end and counts useful tokens
correctly; the others run at toy size, the GPU check on a CPU with its own documented command."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO, load_benchmark


def run_train_benchmark(out, *args) -> subprocess.CompletedProcess:
    """As the README runs it (each recipe in a process of its own), on the small CPU architecture."""
    command = [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--device", "cpu", "--arch", "small",
               "--warmup", "0", "--steps", "1", "--threads", "2", "--json", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_throughput_counts_useful_tokens_of_each_recipe(tmp_path):
    bench = load_benchmark("train_throughput")
    out = tmp_path / "train.json"
    run = run_train_benchmark(out, "--tokens-per-batch", "4096", "--max-rows", "2")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ours / paper useful tokens per second" in run.stdout
    report = json.loads(out.read_text())
    results = report["results"]
    assert set(results) == {"paper", "ours", "ours_max"}

    # paper: one document a step, both tasks, every prompt and answer token is useful, padding is not
    first = bench.synthetic_documents(2000, seed=0)[0]
    paper = results["paper"]
    assert paper["steps"] == 1 and paper["rows_per_step"] == 2
    assert paper["useful_tokens"] == 2 * first["prompt"] + first["summarize"] + first["extract"]

    # ours: whole documents (an even number of rows) under the padded-token budget; a document over the
    # budget is a batch of its own
    ours = results["ours"]
    assert ours["rows_per_step"] >= 2 and ours["rows_per_step"] % 2 == 0
    assert 0 < ours["useful_tokens"] <= 4096 or ours["rows_per_step"] == 2

    # ours_max: the fixed batch of maximum-length rows
    assert results["ours_max"]["rows_per_step"] == 2
    assert results["ours_max"]["useful_tokens"] == 2 * bench.PAPER_LENGTH

    for result in results.values():
        assert result["useful_tokens_per_s"] > 0
        assert result["peak_gib"] > 0 and result["peak_kind"] == "process peak RSS"
        assert 0 < result["final_loss"] < 20  # cross-entropy of random weights over 151,936 ids is ~12
    assert report["ratio_ours_over_paper"] == pytest.approx(
        ours["useful_tokens_per_s"] / paper["useful_tokens_per_s"]
    )


@pytest.mark.slow
def test_train_throughput_reports_a_failed_recipe_and_keeps_the_others(tmp_path):
    out = tmp_path / "train.json"
    run = run_train_benchmark(out, "--recipes", "ours_max", "ours", "--tokens-per-batch", "0", "--max-rows", "1")
    assert run.returncode == 1
    assert "ours       failed: ValueError: tokens_per_batch must be positive, got 0" in run.stdout
    assert "failed recipes: ours" in run.stderr
    results = json.loads(out.read_text())["results"]
    assert results["ours"]["error"].startswith("ValueError: tokens_per_batch must be positive")
    assert results["ours_max"]["useful_tokens"] == 3078 and "error" not in results["ours_max"]


@pytest.mark.slow
def test_rehearsal_stages_runs_every_stage_with_the_rehearsals_settings(tmp_path):
    out = tmp_path / "stages.json"
    command = [sys.executable, str(REPO / "benchmarks" / "rehearsal_stages.py"), "--documents", "6", "--steps", "1",
               "--shards", "1", "--work", str(tmp_path / "work"), "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    stages = {row["stage"].split(" ")[0]: row for row in json.loads(out.read_text())["stages"]}
    assert list(stages) == ["models", "synthetic", "ingest", "split", "teacher", "crop", "train"]
    assert stages["synthetic"]["documents"] == stages["ingest"]["documents"] == 24
    assert all(row["seconds"] > 0 and 0 < row["peak_gib"] < 8 for row in stages.values())
    assert stages["teacher"]["processes"] == 4 + 4 + 1  # a shard and a gather per language, the summary
    work = tmp_path / "work"
    # the paper's crop budgets held, and one distil step a document
    crops = [json.loads(line) for line in (work / "data" / "train.jsonl").open()]
    assert max(c["prompt_tokens"] for c in crops) <= 2566 and max(c["answer_tokens"] for c in crops) <= 512
    log = (work / "model" / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + 1



def test_faithfulness_check_plants_each_fault_and_compares_two_checkers(tmp_path):
    """At toy size: two summaries (the 2024 layout and MultiClinSum-2's), every fault planted in each, a
    stand-in 'before' checker that flags nothing, and the current checker."""
    corpus = tmp_path / "corpus"
    (corpus / "summaries").mkdir(parents=True)
    (corpus / "fulltext").mkdir()
    (corpus / "es").mkdir()
    (corpus / "summaries" / "multiclinsum_gs_en_1_sum.txt").write_text(
        "A 62-year-old man received amoxicillin 500 mg for 7 days; CRP 85 mg/L.")
    (corpus / "fulltext" / "multiclinsum_gs_en_1.txt").write_text(
        "A 62-year-old man with pneumonia received amoxicillin 500 mg for 7 days, then 250 mg for 3 days. "
        "CRP was 85 mg/L on 12/03/2020.")
    (corpus / "es" / "multiclinsum2_train_1_es_sum.txt").write_text(
        "Varón de 58 años tratado con warfarina 2,5 mg durante 6 meses; INR 3,1.")
    (corpus / "es" / "multiclinsum2_train_1_es.txt").write_text(
        "Varón de 58 años. Warfarina 2,5 mg y después 5 mg durante 6 meses. INR 3,1 el 14 de mayo de 2021.")
    before = tmp_path / "before.py"
    before.write_text("def unsupported_numbers(summary, source):\n    return 0, []\n")
    out = tmp_path / "check.json"
    command = [sys.executable, str(REPO / "benchmarks" / "faithfulness_check.py"), "--corpus", str(corpus),
               "--before-file", str(before), "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "caught before" in run.stdout and "caught after" in run.stdout
    report = json.loads(out.read_text())
    assert report["summaries"] == 2 and report["languages"] == ["en", "es"]
    faults = report["faults"]
    for kind in ("unit swapped", "digit changed", "sign added", "decimal shifted", "date changed",
                 "date, day from report", "unit moved"):
        assert faults[kind]["planted"] == 2, kind
        assert faults[kind]["caught"] == {"before": 0, "after": 2}, kind
    # a value the report states elsewhere, in the same unit, is missed by design
    assert faults["value from report"]["planted"] == 2 and faults["value from report"]["caught"]["after"] == 0
    # the references are their reports' numbers: no false positive
    untouched = report["untouched"]["after"]
    assert untouched["numbers"] == 8 and untouched["flagged"] == 0


def gpu_check_cpu_command() -> list[str]:
    """The CPU command benchmarks/gpu_check.py's docstring gives (continued lines joined, comment dropped)."""
    doc = load_benchmark_doc("gpu_check")
    joined = re.sub(r"\\\n\s*", " ", doc)
    (line,) = [line for line in joined.splitlines() if "gpu_check.py --device cpu" in line]
    words = shlex.split(re.split(r"\s{2,}#", line.strip())[0])
    assert words[:2] == ["python", "benchmarks/gpu_check.py"]
    return [sys.executable, str(REPO / words[1]), *words[2:]]


def load_benchmark_doc(name: str) -> str:
    import ast

    return ast.get_docstring(ast.parse((REPO / "benchmarks" / f"{name}.py").read_text()))


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_at_toy_size(tmp_path):
    """The GPU check's own CPU command (its docstring's), as CI runs it, so the day a GPU is lent it runs once."""
    import torch
    import transformers

    out = tmp_path / "gpu_check.json"
    command = gpu_check_cpu_command()
    assert "--arch" in command and command[command.index("--arch") + 1] == "toy"
    run = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["transformers"] == transformers.__version__
    assert report["environment"]["device"] == "cpu"
    # nothing beyond torch, transformers and workflow/ was imported (the GPU image has no vLLM, no snakemake)
    assert report["imported_not_there"] == []
    assert report["checks"] and all(report["checks"].values()), report["checks"]

    train = report["train"]
    assert set(train) == {"paper", "ours", "ours_max", "ours_max_checkpointing"}
    for name, row in train.items():
        assert "error" not in row, (name, row)
        assert row["steps"] == 1
        assert math.isfinite(row["final_loss"]) and 0 < row["final_loss"] < 20, (name, row["final_loss"])
        assert row["useful_tokens_per_s"] > 0 and row["seconds"] > 0 and row["peak_gib"] > 0
    # the paper's recipe: one document (two sequences) a step; the max recipes: --max-rows rows of 2566 + 512
    assert train["paper"]["rows_per_step"] == 2
    assert train["ours_max"]["useful_tokens"] == train["ours_max_checkpointing"]["useful_tokens"] == 2 * 3078
    # checkpointing recomputes, it does not change the loss of the same batch from the same weights
    assert train["ours_max_checkpointing"]["final_loss"] == pytest.approx(train["ours_max"]["final_loss"], abs=1e-4)
    assert report["ratio_ours_over_paper"] == pytest.approx(
        train["ours"]["useful_tokens_per_s"] / train["paper"]["useful_tokens_per_s"])

    losses = report["overfit"]["losses"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]

    inference = report["inference"]
    assert inference["dtype"] == "float32" and inference["prompts"] == 2
    assert inference["same_twice"] is True and inference["lengths_ok"] is True
    assert 2 <= inference["generated_tokens"] <= 2 * 8
    assert inference["generated_tokens_per_s"] > 0
    assert "ours / paper useful tokens per second" in run.stdout
    assert "peak for 2 max-length sequences (ours_max)" in run.stdout
