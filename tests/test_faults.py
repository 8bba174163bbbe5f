"""Faults a careful user meets, on purpose, against the real command line and workflow: each ends in a clear
sentence naming the file and what to do, or a counted, logged skip; never a run that exits 0 with a language
gone, never a bare traceback, and nothing already computed lost."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from clinsum.io import exclusive_lock, read_jsonl, write_json, write_jsonl
from conftest import REPO, SAMPLE, copy_checkout
from test_ingest import gs_pair, write, zip_folder

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "workflow")}


def clinsum(*args, cwd=None, env=None, check_fails=True) -> subprocess.CompletedProcess:
    """The real command line in its own process; by default it must fail with one sentence, no traceback."""
    done = subprocess.run([sys.executable, "-m", "clinsum", *map(str, args)], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=600)
    if check_fails:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
    return done


def error_line(done: subprocess.CompletedProcess) -> str:
    return [line for line in done.stderr.splitlines() if ": error: " in line][-1]


def ingest_args(sources: list[dict], languages: list[str], out: Path, mode: str = "skip") -> list[str]:
    return ["ingest", "--sources", json.dumps(sources), "--languages", *languages, "--on-bad-input", mode,
            "--out-dir", out]


# ---------------------------------------------------------------- 1. a language never vanishes


def test_a_configured_language_without_documents_stops_ingest_naming_it(tmp_path):
    corpus = tmp_path / "corpus"
    gs_pair(corpus, "en", 1)
    gs_pair(corpus, "en", 2)
    done = clinsum(*ingest_args([{"path": str(corpus), "layout": "multiclinsum"}], ["en", "it"], tmp_path / "out"))
    message = error_line(done)
    assert "no document for the configured language(s) it (read 0, skipped 0" in message
    assert f"{corpus} (multiclinsum: wrote 2)" in message
    # the outputs are gone, the manifest kept for the post-mortem
    assert not (tmp_path / "out" / "en.jsonl").exists() and not (tmp_path / "out" / "manifest.json").exists()
    failed = json.loads((tmp_path / "out" / "manifest.failed.json").read_text())
    assert failed["languages"]["en"]["written"] == 2 and failed["languages"]["it"]["written"] == 0


def test_a_truncated_zip_of_one_language_stops_ingest_in_skip_mode(tmp_path):
    corpus = tmp_path / "corpus"
    gs_pair(corpus, "en", 1)
    gs_pair(tmp_path / "fr", "fr", 1)
    zip_folder(tmp_path / "fr" / "multiclinsum_gs_train_fr", corpus / "multiclinsum_gs_train_fr.zip")
    data = (corpus / "multiclinsum_gs_train_fr.zip").read_bytes()
    (corpus / "multiclinsum_gs_train_fr.zip").write_bytes(data[: len(data) // 2])  # a download cut short
    done = clinsum(*ingest_args([{"path": str(corpus), "layout": "multiclinsum"}], ["en", "fr"], tmp_path / "out"))
    message = error_line(done)
    assert "fr (read 0, skipped 0" in message
    failed = json.loads((tmp_path / "out" / "manifest.failed.json").read_text())
    assert [s["reason"].split(" (")[0] for s in failed["skipped"]] == ["unreadable zip"]


def test_a_source_that_contributes_nothing(tmp_path):
    corpus, empty = tmp_path / "corpus", tmp_path / "empty"
    gs_pair(corpus, "en", 1)
    write(empty / "notes" / "README.txt", "not a document")
    sources = [{"path": str(corpus), "layout": "multiclinsum"}, {"path": str(empty), "layout": "multiclinsum"}]
    # error mode: an error, naming the source
    done = clinsum(*ingest_args(sources, ["en"], tmp_path / "out", "error"))
    assert f"corpus source {empty} (layout multiclinsum) contributed no document: 0 read, 0 skipped, 1 files" in error_line(done)
    # skip mode: a warning in the log, the manifest and (through it) the report's header
    done = clinsum(*ingest_args(sources, ["en"], tmp_path / "out", "skip"), check_fails=False)
    assert done.returncode == 0 and f"WARNING clinsum.ingest: corpus source {empty}" in done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["warnings"]) == 1 and manifest["sources"][1]["written"] == {}
    from clinsum.report import corpus_notes

    assert corpus_notes(manifest)[0] == f"Corpus warning: {manifest['warnings'][0]}"


def test_too_few_documents_to_split_stops_the_split_naming_the_language(tmp_path):
    corpus = tmp_path / "ro.jsonl"
    write_jsonl(corpus, [{"id": "multiclinsum_gs_ro_1", "lang": "ro", "text": "Raport.", "summary": "Rezumat."}])
    done = clinsum("split", "--corpus", corpus, "--lang", "ro", "--train", 0.8, "--valid", 0.01, "--test", 0.19,
                   "--seed", 42, "--method", "hash", "--order", "number", "--out", tmp_path / "ro.json")
    assert ("language ro has 1 documents (1 with a reference summary, outside the test set): too few for a non-empty "
            "train and test") in error_line(done)
    assert not (tmp_path / "ro.json").exists()


def test_the_workflow_stops_at_ingest_when_a_language_has_no_documents(tmp_path):
    (tmp_path / "workflow").symlink_to(REPO / "workflow")
    (tmp_path / "Snakefile").symlink_to(REPO / "Snakefile")
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    (tmp_path / "resources").mkdir()
    (tmp_path / "resources" / "sample").symlink_to(SAMPLE)
    (tmp_path / "config" / "it.yaml").write_text("languages: [en, it]\nprompts: {summarize: {it: Riassumere il testo clinico}}\n")
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "results/split/en.json", "--configfile",
                           "config/tiny.yaml", "config/it.yaml"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert done.returncode != 0
    log = (tmp_path / "results" / "logs" / "ingest.log").read_text()
    assert "clinsum ingest: error: no document for the configured language(s) it (read 0, skipped 0" in log
    assert "Traceback" not in log and not (tmp_path / "results" / "split" / "en.json").exists()


# ---------------------------------------------------------------- 3. one writer per partial file


def _tiny_corpus(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    corpus, split = tmp_path / "corpus.jsonl", tmp_path / "split.json"
    documents = [{"id": f"d{i}", "lang": "en", "text": f"Report {i}.", "summary": "S."} for i in range(n)]
    write_jsonl(corpus, documents)
    write_json(split, {"lang": "en", "train": [d["id"] for d in documents], "valid": [], "test": []})
    return corpus, split


def test_a_second_teacher_on_the_same_shard_stops_at_once_naming_the_file_and_the_holder(tmp_path, tiny_dir):
    corpus, split = _tiny_corpus(tmp_path)
    out = tmp_path / "teacher" / "1-of-1.jsonl"
    settings = json.dumps({"teacher": {"model": "tiny", "backend": "transformers", "max_new_tokens": 4},
                           "prompts": {"extract": "Extract the key information from clinical text", "role": "system"}})
    lock = out.with_name("1-of-1.partial.jsonl.lock")
    with exclusive_lock(lock, "a running shard"):  # the orphan of a killed Snakemake
        done = clinsum("teacher", "run", "--corpus", corpus, "--split", split, "--model-dir", tiny_dir, "--settings",
                       settings, "--shard-index", 1, "--shard-count", 1, "--lang", "en", "--out", out)
    message = error_line(done)
    assert f"the teacher's partial file {out.with_name('1-of-1.partial.jsonl')} is being written by another process" in message
    assert f"pid {os.getpid()} on " in message and str(lock) in message
    assert not out.exists()


@pytest.mark.parametrize("top_logprobs", [0, 2])
def test_repeated_records_of_a_past_double_writer_are_resolved_not_refused(tmp_path, tiny_dir, top_logprobs):
    """A partial file two writers appended to (before the lock): one record per id is kept (they are the same
    greedy output) and the shard finishes; with top-k rows, whose order two writers may have mixed, only the
    records before the first repeat are kept and the rest is generated again."""
    from test_teacher import FakeGenerator, make_corpus, settings

    from clinsum import teacher

    corpus, split, ids = make_corpus(tmp_path)
    config = settings(top_logprobs=top_logprobs)
    out = tmp_path / "teacher" / "1-of-1.jsonl"
    topk_out = out.with_name("1-of-1.topk.safetensors") if top_logprobs else None
    teacher.run_shard(corpus, split, tiny_dir, config, 1, 1, out, topk_out, generator=FakeGenerator("a"))
    records = list(read_jsonl(out))
    # the state two writers leave: the first three, two of them again, then a fourth
    mixed = records[:3] + records[1:3] + records[3:4]
    paths = teacher.partial_paths(out)
    write_jsonl(paths["records"], mixed)
    fingerprint = teacher.output_fingerprint(teacher.read_settings(config), tiny_dir)
    write_json(paths["settings"], {"fingerprint": fingerprint, "shard_index": 1, "shard_count": 1})
    if top_logprobs:
        _write_partial_topk(paths["topk"], mixed, top_logprobs)
    out.unlink()
    again = FakeGenerator("b")
    counts = teacher.run_shard(corpus, split, tiny_dir, config, 1, 1, out, topk_out, generator=again)
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(ids)  # one record per id, none missing
    kept = 4 if top_logprobs == 0 else 3
    assert counts["kept"] == kept and counts["generated"] == len(ids) - kept
    assert sum(n for n, _ in again.calls) == len(ids) - kept


def _write_partial_topk(path: Path, records: list[dict], k: int) -> None:
    import numpy as np

    with open(path, "wb") as handle:
        for record in records:
            n = len(record["token_ids"])
            handle.write(np.zeros((n, k), dtype="<i4").tobytes())
            handle.write(np.zeros((n, k), dtype="<f4").tobytes())


# ---------------------------------------------------------------- 4. a killed run's leftovers


def test_a_rerun_removes_what_a_killed_ingest_left(tmp_path):
    out = tmp_path / "out"
    (out / ".ingest-abc123").mkdir(parents=True)
    (out / ".ingest-abc123" / "index.sqlite").write_bytes(b"\0" * 4096)
    (out / ".en.jsonl.x1y2z3.tmp").write_text("half a corpus")
    (out / ".manifest.json.q9.tmp").write_text("{")
    done = clinsum(*ingest_args([{"path": str(SAMPLE), "layout": "multiclinsum"}], ["en"], out), check_fails=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["en.jsonl", "manifest.json"]


# ---------------------------------------------------------------- 5. sentences, not tracebacks


def test_a_jsonl_record_whose_text_is_not_a_string(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [{"id": "a1", "lang": "en", "text": "Report.", "summary": "S."},
             {"id": "a2", "lang": "en", "text": 42, "summary": "S."},
             {"id": "a3", "lang": "en", "text": "Report.", "summary": ["not", "text"]},
             {"id": "a4", "lang": "en", "text": "Report.", "summary": "S."}]
    write_jsonl(path, lines)
    source = [{"path": str(path), "layout": "jsonl"}]
    done = clinsum(*ingest_args(source, ["en"], tmp_path / "out", "skip"), check_fails=False)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [(s["path"], s["reason"]) for s in manifest["skipped"]] == [
        (f"{path}:2", "`text` is not a string but a JSON number"), (f"{path}:3", "`summary` is not a string but a JSON array")]
    assert manifest["languages"]["en"] == {"read": 4, "written": 2, "skipped": 2,
                                           "skipped_by_reason": {"`summary` is not a string but a JSON array": 1,
                                                                 "`text` is not a string but a JSON number": 1}}
    done = clinsum(*ingest_args(source, ["en"], tmp_path / "out2", "error"))
    assert error_line(done).endswith(f"{path}:2: `text` is not a string but a JSON number")


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The model hub's answer for a repository it does not know."""

    def do_GET(self):  # noqa: N802 (the handler's API)
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("X-Error-Message", "Repository not found")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository not found"}')

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def test_a_misspelled_hub_model_is_named_with_its_config_key(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**ENV, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
        done = clinsum("models", "download", "--repo-id", "Qwen/Qwen2.5-0.5B-Instruc", "--used-by", "student.model",
                       "--out", tmp_path / "m", env=env)
    finally:
        server.shutdown()
    assert error_line(done).endswith(
        "Qwen/Qwen2.5-0.5B-Instruc (student.model in the config): no such model on the model hub (or it is private and "
        "no HF_TOKEN is set): check its spelling, or give the model as a local directory")
    # offline, the same download says so instead of a connection traceback
    done = clinsum("models", "download", "--repo-id", "Qwen/Qwen2.5-0.5B-Instruct", "--out", tmp_path / "m")
    assert "Qwen/Qwen2.5-0.5B-Instruct: cannot be downloaded here" in error_line(done)


def _truncated_copy(tiny_dir: Path, dest: Path) -> Path:
    shutil.copytree(tiny_dir, dest)
    weights = dest / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    return dest


def test_weights_cut_short_stop_at_start_and_in_the_stage(tmp_path, tiny_dir):
    model = _truncated_copy(tiny_dir, tmp_path / "student cut")
    workdir = tmp_path / "work"
    for name in ("workflow", "Snakefile", "config", "profiles"):
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).symlink_to(REPO / name)
    (workdir / "resources").mkdir()
    (workdir / "resources" / "sample").symlink_to(SAMPLE)
    (tmp_path / "student.yaml").write_text(f"student: {{model: {json.dumps(str(model))}}}\n")
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/tiny.yaml", str(tmp_path / "student.yaml")],
                          cwd=workdir, env=ENV, capture_output=True, text=True)
    assert done.returncode != 0
    assert f"config student.model: the model directory {model} lacks a whole model.safetensors (cut short:" in done.stdout + done.stderr
    # a stage given it anyway says the same, not a SafetensorError
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"id": "a", "lang": "en", "task": "summarize",
                        "messages": [{"role": "user", "content": "R"}, {"role": "assistant", "content": "S"}]}])
    done = clinsum("train", "--train", data, "--valid", data, "--model", model, "--variant", "standard",
                   "--settings", json.dumps({"train": {"variants": ["standard"]}}), "--out", tmp_path / "out",
                   "--checkpoint-dir", tmp_path / "ckpt")
    assert f"{model}: the model directory lacks a whole model.safetensors (cut short:" in error_line(done)


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -m` (root) to mount a full and a read-only file system")
@pytest.mark.parametrize("fault, expected", [
    ("full", "No space left on device (the disk is full: free space (or point results/ elsewhere) and run again"),
    ("read-only", "Read-only file system (the file system is read-only: run where results/ can be written)"),
])
def test_a_full_disk_and_a_read_only_results_folder_are_sentences(tmp_path, fault, expected):
    corpus = tmp_path / "en.jsonl"
    write_jsonl(corpus, [{"id": f"d{i}", "lang": "en", "text": "Report. " * 2000, "summary": "S."} for i in range(40)])
    results = tmp_path / "results"
    results.mkdir()
    options = "size=16k" if fault == "full" else "size=1m,ro"
    command = (f"mount -t tmpfs -o {options} tmpfs {results} && {sys.executable} -m clinsum ingest --sources "
               f"'{json.dumps([{'path': str(corpus), 'layout': 'jsonl'}])}' --languages en --on-bad-input error "
               f"--out-dir {results}/corpus")
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], env=ENV, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"clinsum ingest: error: {results}/corpus" in done.stderr and expected in done.stderr


# ---------------------------------------------------------------- 6. counts of documents, not files


def test_duplicate_files_and_a_misplaced_pair_count_documents(tmp_path):
    corpus = tmp_path / "corpus"
    for n in range(1, 15):
        gs_pair(corpus, "en", n)
    for copy in ("copy1", "copy2"):  # the same 14 documents twice more, zipped, in the same source
        zip_folder(corpus / "multiclinsum_gs_train_en", corpus / f"{copy}.zip")
    spanish = corpus / "multiclinsum_gs_train_es"
    write(spanish / "fulltext" / "multiclinsum_gs_en_99.txt", "Informe.")  # an English-named pair in es/
    write(spanish / "summaries" / "multiclinsum_gs_en_99_sum.txt", "Resumen.")
    gs_pair(corpus, "es", 1)
    done = clinsum(*ingest_args([{"path": str(corpus), "layout": "multiclinsum"}], ["en", "es"], tmp_path / "out"),
                   check_fails=False)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["languages"]["en"] == {"read": 15, "written": 14, "skipped": 1,
                                           "skipped_by_reason": {"language differs from its folder": 1}}
    assert len(manifest["duplicate_files"]) == 14 and manifest["totals"]["duplicate_files"] == 14 * 2 * 2
    assert all(len(d["read"]) == 2 and len(d["not_read"]) == 4 for d in manifest["duplicate_files"])
    misplaced = manifest["skipped"][0]["path"]
    assert "multiclinsum_gs_en_99.txt" in misplaced and "multiclinsum_gs_en_99_sum.txt" in misplaced


# ---------------------------------------------------------------- 2. paths with spaces and any letters


@pytest.mark.slow
def test_the_tiny_workflow_under_paths_with_spaces_and_accents(tmp_path, tiny_student_dir):
    """The checkout, the corpus, the student model and so every result under folders named with spaces and
    non-ASCII letters: every rule quotes its paths."""
    workdir = copy_checkout(tmp_path / "clinsum työ ñ")
    corpus = tmp_path / "corpus dir é" / "sample set"
    shutil.copytree(SAMPLE, corpus)
    student = tmp_path / "modèles à" / "tiny student"
    shutil.copytree(tiny_student_dir, student)
    (workdir / "config" / "spaced.yaml").write_text(json.dumps({
        "languages": ["en", "fr"],
        "corpus": {"sources": [{"path": str(corpus), "layout": "multiclinsum"}]},
        "student": {"model": str(student)},
        "train": {"variants": ["standard", "distil_kl"]},
    }))
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/tiny.yaml",
                           "config/spaced.yaml"], cwd=workdir, env=ENV, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    results = workdir / "results"
    assert (results / "report" / "index.html").is_file()
    assert len(list((results / "predictions").glob("*/*.jsonl"))) == 3 * 2
    train_log = (results / "logs" / "train" / "distil_kl.log").read_text()
    assert "teacher top-k" in train_log  # the KL options (top-k files, teacher model) reached the job whole
