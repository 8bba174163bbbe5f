"""The corpus-scale benchmark at a tiny size: the same documents as folders and zips, every stage counted
and measured in a process of its own, and the 15-language dry run timed cold and warm."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, load_benchmark


def run_benchmark(out, *args) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "benchmarks" / "corpus_scale.py"), "--json", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_folders_and_zips_hold_the_same_documents(tmp_path):
    bench = load_benchmark("corpus_scale")
    corpora = bench.build_corpus(tmp_path, 10, ["en", "fr"])
    files = sorted(p for p in corpora["folders"].rglob("*.txt"))
    assert len(files) == 20
    members = {}
    for path in sorted(corpora["zips"].glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            members.update({name: archive.read(name) for name in archive.namelist()})
    assert members == {str(p.relative_to(corpora["folders"])): p.read_bytes() for p in files}
    assert sum(1 for name in members if name.endswith("_sum.txt")) == 10
    report = members["multiclinsum_ls_train_en/fulltext/multiclinsum_ls_en_1.txt"].decode()
    assert 1500 <= len(report) <= 4700 and report.endswith(".")


def test_each_stage_counts_every_document_in_its_own_process(tmp_path):
    out = tmp_path / "bench.json"
    run = run_benchmark(out, "--sizes", "24", "48", "--languages", "en", "es", "fr", "--shards", "0")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {(r["stage"], r["layout"], r["size"]): r for r in report["results"]}
    assert set(rows) == {(stage, layout, size) for size in (24, 48)
                         for stage, layout in (("ingest", "folders"), ("ingest", "zips"), ("split", "-"))}
    for (stage, layout, size), row in rows.items():
        assert row["documents"] == size
        assert row["docs_per_s"] == pytest.approx(size / row["seconds"])
        assert 10 < row["peak_rss_mib"] < 2000
    assert report["dry_runs"] == []
    assert "ingest at 48 documents: zips / folders documents per second = " in run.stdout


@pytest.mark.slow  # it runs Snakemake four times
def test_the_15_language_dry_run_is_timed_cold_and_warm(tmp_path):
    out = tmp_path / "bench.json"
    run = run_benchmark(out, "--sizes", "30", "--stages", "ingest", "--shards", "2")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    dry_runs = json.loads(out.read_text())["dry_runs"]
    assert [(r["layout"], r["cache"]) for r in dry_runs] == [
        ("folders", "cold"), ("folders", "warm"), ("zips", "cold"), ("zips", "warm")
    ]
    for row in dry_runs:
        assert row["teacher_jobs"] == 15 * 2 and row["jobs"] > 15 * 2 and row["seconds"] > 0
        assert row["corpus_size"] == 30
