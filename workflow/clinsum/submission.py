"""Submission: one model's summaries of the test documents as the shared task's upload files.

- `multiclinsum2025` (MultiClinSum, CLEF 2025): `{lang}/multiclinsum_test_{n}_{lang}_sum.txt`, one file per
  test-layout report.
- `multiclinsum2026` (MultiClinSum-2, CLEF 2026), as the organisers' `prepare_submission.py`
  (nlp4bia-bsc/classic-mcs2-eval) reads a submission: `{team}.zip` holding `{team}/{lang}/{run}/{case}_sum.txt`
  for every test-set report (`{case}` = `multiclinsum2_test_{n}_{lang}`), up to three runs. Beside it, per
  language and run, the scorer's own input, `scorer/{team}/{lang}/{run}/results.jsonl` (`case_id`, `language`,
  `full_case`, `reference_summary`, `generated_summary`) for every test-split document with a reference, so
  `python runner.py --team_dir results/submissions/{model}/scorer/{team}` scores what the workflow scored.

Test-split documents that are not test-set reports (held out of a training set) go to `heldout/{lang}/` in
both formats, apart from the upload files. A model's own submission holds it as `run1`; `submission.runs`
combines up to three models into one team zip (`combine_runs`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
from pathlib import Path

from .io import ClinsumError, atomic_path, pairs_option, write_json
from .predictions import load_predictions, load_sources

log = logging.getLogger(__name__)

FORMATS = ("multiclinsum2025", "multiclinsum2026")
TEST_IDS = {
    "multiclinsum2025": re.compile(r"^multiclinsum_test_(?P<n>\d+)_(?P<lang>[a-z]{2})$"),
    "multiclinsum2026": re.compile(r"^multiclinsum2_test_(?P<n>\d+)_(?P<lang>[a-z]{2})$"),
}
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_format(fmt: str | None, protocol: str) -> str:
    """submission.format, its null following the scoring protocol: MultiClinSum-2's files for its protocol."""
    if fmt is not None:
        return fmt
    return "multiclinsum2026" if protocol == "multiclinsum2026" else "multiclinsum2025"


def is_upload(record: dict) -> bool:
    """A test-set report (with its gold or without), or a test-layout report without a reference."""
    return bool(record.get("test_set")) or record["reference"] is None


def _checked_id(record: dict, path) -> str:
    doc_id = record["id"]
    if not SAFE_ID.match(doc_id):
        raise ClinsumError(f"{path}: document id {doc_id!r} is not usable as a file name")
    return doc_id


def _write_summary(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n", encoding="utf-8")


def write_language(records: list[dict], path, lang: str, upload_dir: Path, heldout_dir: Path, fmt: str) -> dict:
    """One language's files: uploads in `upload_dir`, held-out documents in `heldout_dir`; returns counts."""
    counts = {"upload": 0, "heldout": 0, "empty": 0, "nonstandard_test_ids": []}
    upload_dir.mkdir(parents=True, exist_ok=True)
    for record in records:
        doc_id = _checked_id(record, path)
        text = record["prediction"].strip()
        counts["empty"] += not text
        if is_upload(record):
            _write_summary(upload_dir / f"{doc_id}_sum.txt", text)
            counts["upload"] += 1
            match = TEST_IDS[fmt].match(doc_id)
            if not match or match["lang"] != lang:
                counts["nonstandard_test_ids"].append(doc_id)
        else:
            _write_summary(heldout_dir / f"{doc_id}_sum.txt", text)
            counts["heldout"] += 1
    written = len(list(upload_dir.glob("*_sum.txt")))
    if written != counts["upload"]:
        raise ClinsumError(f"{upload_dir}: {written} files for {counts['upload']} test documents of {path}")
    if counts["nonstandard_test_ids"]:
        log.warning("%s: %d test documents have ids outside the %s test naming, e.g. %s", path,
                    len(counts["nonstandard_test_ids"]), fmt, counts["nonstandard_test_ids"][0])
    if not counts["upload"]:
        log.warning("%s: no test-set document for %s: its upload folder is empty", path, lang)
    return counts


def scorer_rows(records: list[dict], lang: str, corpus_path) -> list[dict]:
    """The organisers' results.jsonl lines for the documents with a reference, sorted by case id as their
    prepare_submission.py writes them."""
    scored = [record for record in records if record["reference"] is not None]
    reports = load_sources(corpus_path, [record["id"] for record in scored]) if scored else {}
    rows = [
        {"case_id": record["id"], "language": lang, "full_case": reports[record["id"]].strip(),
         "reference_summary": record["reference"].strip(), "generated_summary": record["prediction"].strip()}
        for record in scored
    ]
    return sorted(rows, key=lambda row: row["case_id"])


def write_submission(predictions: dict[str, str | Path], out_dir: str | Path, fmt: str, team: str = "clinsum",
                     corpus: dict[str, str | Path] | None = None, run: str = "run1") -> dict:
    """Write one model's submission in `fmt` into `out_dir` (see the module docstring); return its manifest."""
    if fmt not in FORMATS:
        raise ClinsumError(f"submission.format must be one of {FORMATS}, got {fmt!r}")
    out_dir = Path(out_dir)
    manifest: dict = {"format": fmt, "languages": {}}
    for lang, path in predictions.items():
        records = load_predictions(path, lang)
        if fmt == "multiclinsum2025":
            counts = write_language(records, path, lang, out_dir / lang, out_dir / "heldout" / lang, fmt)
        else:
            counts = write_language(records, path, lang, out_dir / team / lang / run, out_dir / "heldout" / lang, fmt)
            if corpus is None or lang not in corpus:
                raise ClinsumError(f"the {fmt} submission needs the corpus of {lang} (--corpus {lang}=PATH)")
            rows = scorer_rows(records, lang, corpus[lang])
            with atomic_path(out_dir / "scorer" / team / lang / run / "results.jsonl") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            counts["scorer_rows"] = len(rows)
        manifest["languages"][lang] = counts
        log.info("submission %s: %d upload files, %d held out, %d empty", lang, counts["upload"], counts["heldout"],
                 counts["empty"])
    if fmt == "multiclinsum2026":
        manifest.update(team=team, zip=f"{team}.zip", runs={run: str(out_dir)})
        zip_team(out_dir / team, out_dir / f"{team}.zip")
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def zip_team(team_dir: Path, out_zip: Path) -> int:
    """`{team}.zip` with `{team}/{lang}/{run}/*_sum.txt` inside, as the organisers unpack it; returns the files."""
    files = sorted(team_dir.glob("*/*/*_sum.txt"))
    with atomic_path(out_zip, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, f"{team_dir.name}/{path.relative_to(team_dir).as_posix()}")
    return len(files)


def combine_runs(model_dirs: list[str | Path], team: str, out_zip: str | Path) -> dict:
    """Up to three models' submissions (each `{dir}/{team}/{lang}/run1/`) as run1, run2, run3 of one team zip."""
    if not 1 <= len(model_dirs) <= 3:
        raise ClinsumError(f"a MultiClinSum-2 submission holds 1 to 3 runs, got {len(model_dirs)} (submission.runs)")
    out_zip = Path(out_zip)
    staging = out_zip.with_name(f".{out_zip.stem}.staging") / team
    shutil.rmtree(staging.parent, ignore_errors=True)
    runs = {}
    for number, model_dir in enumerate(map(Path, model_dirs), start=1):
        source = model_dir / team
        if not source.is_dir():
            raise ClinsumError(f"{source}: no multiclinsum2026 submission of team {team} (submission.format)")
        for lang_dir in sorted(p for p in source.iterdir() if p.is_dir()):
            shutil.copytree(lang_dir / "run1", staging / lang_dir.name / f"run{number}")
        runs[f"run{number}"] = str(model_dir)
    files = zip_team(staging, out_zip)
    shutil.rmtree(staging.parent)
    log.info("%s: %d files, %s", out_zip, files, runs)
    return runs


# ---------------------------------------------------------------- CLI


def _run(args) -> None:
    corpus = pairs_option(args.corpus, "--corpus") if args.corpus else None
    write_submission(pairs_option(args.predictions, "--predictions"), args.out, args.format, args.team, corpus)


def _run_combine(args) -> None:
    combine_runs(args.runs, args.team, args.out)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("submission", help="one model's predictions as the shared task's upload files")
    parser.add_argument("--predictions", nargs="+", required=True, help="LANG=results/predictions/{model}/{lang}.jsonl")
    parser.add_argument("--corpus", nargs="*", help="LANG=results/corpus/{lang}.jsonl (multiclinsum2026: the scorer's full_case)")
    parser.add_argument("--format", choices=FORMATS, required=True, help="submission.format, resolved")
    parser.add_argument("--team", required=True, help="submission.team (multiclinsum2026)")
    parser.add_argument("--out", required=True, help="results/submissions/{model}")
    parser.set_defaults(func=_run)

    parser = subparsers.add_parser("submission-runs", help="up to three models' MultiClinSum-2 submissions as one team zip")
    parser.add_argument("--runs", nargs="+", required=True, help="results/submissions/{model} of run1, run2, run3 in order")
    parser.add_argument("--team", required=True, help="submission.team")
    parser.add_argument("--out", required=True, help="results/submissions/{team}.zip")
    parser.set_defaults(func=_run_combine)
