"""The corpus stages at scale: ingest and split on a synthetic corpus of N documents in MultiClinSum's
large-scale layout, as folders and as zips (one zip per language holding its folder, as shipped), at
1k, 10k and 100k documents; documents per second and each stage's peak resident memory (every stage
runs in a process of its own, so the memory is its own). Then `snakemake -n` of MultiClinSum-2's 15
languages with 32 teacher shards each (config/multiclinsum2.yaml) on the largest corpus, timed cold (no
source fingerprint cache) and warm.

The texts are filler (random clinical-sounding sentences of realistic length), enough for the corpus
stages, which never look at the words. A stage is a function in STAGES: adding one (crop, the teacher's
bookkeeping) is a function that takes a `StageRun` and returns how many documents it processed.

    python benchmarks/corpus_scale.py --sizes 1000 10000 100000
    python benchmarks/corpus_scale.py --sizes 200 --shards 2      # a quick look
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

LAYOUTS = ("folders", "zips")
WORDS = (
    "patient presented with acute chest pain dyspnea fever history of hypertension diabetes mellitus "
    "examination revealed tachycardia laboratory tests showed elevated troponin leukocytosis imaging "
    "computed tomography demonstrated lesion biopsy confirmed diagnosis treatment with antibiotics "
    "corticosteroids surgery was performed postoperative course uneventful discharged follow-up months"
).split()


# ---------------------------------------------------------------- the synthetic corpus


def filler(rng: random.Random, characters: int) -> str:
    sentences, length = [], 0
    while length < characters:
        sentence = " ".join(rng.choices(WORDS, k=rng.randint(8, 20))).capitalize() + "."
        sentences.append(sentence)
        length += len(sentence) + 1
    return " ".join(sentences)


def documents(n: int, languages: list[str], seed: int = 0):
    """(lang, number, report, summary) of n documents spread over the languages; ~3,000 and ~700
    characters, near MultiClinSum's large-scale averages."""
    rng = random.Random(seed)
    for index in range(n):
        lang = languages[index % len(languages)]
        number = index // len(languages) + 1
        yield lang, number, filler(rng, rng.randint(1500, 4500)), filler(rng, rng.randint(400, 1000))


def member_paths(lang: str, number: int) -> tuple[str, str]:
    folder = f"multiclinsum_ls_train_{lang}"
    return (
        f"{folder}/fulltext/multiclinsum_ls_{lang}_{number}.txt",
        f"{folder}/summaries/multiclinsum_ls_{lang}_{number}_sum.txt",
    )


def build_corpus(root: Path, n: int, languages: list[str]) -> dict[str, Path]:
    """The same n documents as folders (root/folders) and as one zip per language (root/zips)."""
    folders, zips = root / "folders", root / "zips"
    zips.mkdir(parents=True, exist_ok=True)
    archives = {
        lang: zipfile.ZipFile(zips / f"multiclinsum_ls_train_{lang}.zip", "w", zipfile.ZIP_DEFLATED)
        for lang in languages
    }
    made = set()
    for lang, number, report, summary in documents(n, languages):
        for relative, text in zip(member_paths(lang, number), (report, summary)):
            path = folders / relative
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            path.write_text(text, encoding="utf-8")
            archives[lang].writestr(relative, text)
    for archive in archives.values():
        archive.close()
    return {"folders": folders, "zips": zips}


# ---------------------------------------------------------------- stages


@dataclass
class StageRun:
    """What a stage gets: the corpus of one layout, a scratch folder shared by the stages of that
    corpus (ingest writes `work/corpus`, split reads it), and the languages."""

    corpus: Path
    work: Path
    languages: list[str]


def stage_ingest(run: StageRun) -> int:
    from clinsum.ingest import ingest

    manifest = ingest([{"path": str(run.corpus), "layout": "multiclinsum"}], run.languages, run.work / "corpus", "skip")
    return manifest["totals"]["written"]


def stage_split(run: StageRun) -> int:
    from clinsum.split import split_language

    from clinsum.settings import parse_settings

    split = parse_settings({"split": yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))["split"]})["split"]
    fractions = {name: split[name] for name in ("train", "valid", "test")}
    total = 0
    for lang in run.languages:
        result = split_language(run.work / "corpus" / f"{lang}.jsonl", run.work / "split" / f"{lang}.json", lang, fractions, split["seed"],
                                split["method"], split["order"])
        total += sum(len(ids) for ids in result.values())
    return total


# name -> (function, whether it runs on each layout or once per size on the folders' outputs)
STAGES: dict[str, tuple[Callable[[StageRun], int], bool]] = {
    "ingest": (stage_ingest, True),
    "split": (stage_split, False),
}


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM counts only this program's memory, where
    `ru_maxrss` also keeps the high-water mark of the parent's memory copied before exec."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(stage: str, run: StageRun, queue) -> None:
    try:
        started = time.perf_counter()
        processed = STAGES[stage][0](run)
        seconds = time.perf_counter() - started
        queue.put({"documents": processed, "seconds": seconds, "peak_rss_mib": peak_rss_mib()})
    except BaseException as error:  # reported as a failed row
        queue.put({"error": f"{type(error).__name__}: {error}"})


def measure(stage: str, run: StageRun, timeout: float) -> dict:
    """Run one stage in a fresh process; its time, documents/s and peak RSS, or why it has none."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(stage, run, queue))
    process.start()
    deadline = time.monotonic() + timeout
    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except Empty:
            if not process.is_alive():
                result = {"error": f"the process died (exit code {process.exitcode})"}
            elif time.monotonic() > deadline:
                process.kill()
                result = {"error": f"did not finish in {timeout:.0f} s"}
    process.join()
    if "seconds" in result:
        result["docs_per_s"] = result["documents"] / result["seconds"] if result["seconds"] else float("inf")
    return result


# ---------------------------------------------------------------- snakemake -n


def copy_checkout(dest: Path) -> Path:
    """The files a fresh clone has (tracked and untracked-not-ignored), nothing built."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def dry_run(workdir: Path, corpus: Path, shards: int) -> dict:
    """`snakemake -n` of config/multiclinsum2.yaml on `corpus`: seconds and planned jobs."""
    config = workdir / "config" / "bench-corpus.yaml"
    config.write_text(yaml.safe_dump({"corpus": {"sources": [{"path": str(corpus), "layout": "multiclinsum"}]}}))
    command = [
        sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--set-scatter", f"teacher={shards}",
        "--configfile", "config/multiclinsum2.yaml", str(config),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"seconds": seconds, "error": (done.stdout + done.stderr)[-2000:]}
    jobs = re.search(r"^total\s+(\d+)$", done.stdout, re.M)
    teacher = re.search(r"^teacher\s+(\d+)$", done.stdout, re.M)
    return {"seconds": seconds, "jobs": int(jobs.group(1)), "teacher_jobs": int(teacher.group(1))}


def time_dry_runs(scratch: Path, corpora: dict[str, Path], shards: int) -> list[dict]:
    workdir = copy_checkout(scratch / "checkout")
    rows = []
    for layout, corpus in corpora.items():
        shutil.rmtree(workdir / ".snakemake", ignore_errors=True)
        for cache in ("cold", "warm"):
            rows.append({"layout": layout, "cache": cache, "shards": shards, **dry_run(workdir, corpus, shards)})
    return rows


# ---------------------------------------------------------------- the benchmark


def run_size(n: int, args, scratch: Path) -> tuple[list[dict], dict[str, Path]]:
    root = scratch / f"n{n}"
    started = time.perf_counter()
    corpora = build_corpus(root, n, args.languages)
    print(f"built {n:,} documents as folders and zips in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    for stage in args.stages:
        per_layout = STAGES[stage][1]
        for layout in args.layouts if per_layout else ["folders"]:
            run = StageRun(corpora[layout], root / f"work-{layout}", args.languages)
            if not per_layout and not (run.work / "corpus").exists():
                continue  # its input comes from a stage not asked for
            row = {"stage": stage, "layout": layout if per_layout else "-", "size": n, **measure(stage, run, args.timeout)}
            rows.append(row)
            print(format_row(row), flush=True)
    return rows, corpora


HEADER = f"{'stage':8} {'layout':8} {'documents':>10} {'seconds':>9} {'documents/s':>12} {'peak RSS MiB':>13}"


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['stage']:8} {row['layout']:8} {row['size']:>10,} failed: {row['error']}"
    return (
        f"{row['stage']:8} {row['layout']:8} {row['documents']:>10,} {row['seconds']:>9.2f}"
        f" {row['docs_per_s']:>12,.0f} {row['peak_rss_mib']:>13.0f}"
    )


def print_summary(rows: list[dict], dry_runs: list[dict]) -> None:
    print("\n" + HEADER)
    for row in rows:
        print(format_row(row))
    ingest = {(r["size"], r["layout"]): r for r in rows if r["stage"] == "ingest" and "docs_per_s" in r}
    for size in sorted({size for size, _ in ingest}):
        if (size, "zips") in ingest and (size, "folders") in ingest:
            ratio = ingest[(size, "zips")]["docs_per_s"] / ingest[(size, "folders")]["docs_per_s"]
            print(f"ingest at {size:,} documents: zips / folders documents per second = {ratio:.2f}")
    if dry_runs:
        print(f"\nsnakemake -n, config/multiclinsum2.yaml (15 languages), on the {dry_runs[0].get('corpus_size', 0):,}-document corpus")
        for row in dry_runs:
            detail = f"{row['jobs']:,} jobs ({row['teacher_jobs']} teacher)" if "jobs" in row else f"failed: {row['error']}"
            print(f"  {row['layout']:8} {row['cache']:5} {row['seconds']:7.1f} s  {detail}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="corpus sizes in documents")
    parser.add_argument("--languages", nargs="+", default=["en", "es", "fr", "pt"],
                        help="languages the documents are spread over (default: the 4 large-scale sets of MultiClinSum)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--shards", type=int, default=32, help="teacher shards per language in the dry run; 0 skips it")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a stage may run before it is a failed row")
    parser.add_argument("--work-dir", type=Path, help="where the corpora are built (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "corpus_scale.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    scratch = args.work_dir or Path(tempfile.mkdtemp(prefix="corpus-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    rows, dry_runs = [], []
    try:
        print(HEADER, flush=True)
        for n in sorted(args.sizes):
            size_rows, corpora = run_size(n, args, scratch)
            rows += size_rows
            if n == max(args.sizes) and args.shards > 0:
                dry_runs = [{"corpus_size": n, **row} for row in time_dry_runs(scratch, corpora, args.shards)]
            if n != max(args.sizes):
                shutil.rmtree(scratch / f"n{n}")
    finally:
        if args.work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print_summary(rows, dry_runs)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "languages": args.languages,
        "results": rows,
        "dry_runs": dry_runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = [r for r in rows + dry_runs if "error" in r]
    if failed:
        print(f"failed: {len(failed)} row(s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
