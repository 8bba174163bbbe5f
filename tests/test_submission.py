"""Submission files: MultiClinSum 2025's upload folder, and MultiClinSum-2's team zip exactly as the organisers'
prepare_submission.py reads it, with the scorer's own results.jsonl beside it."""

from __future__ import annotations

import json
import zipfile
from pathlib import PurePosixPath

import pytest

from clinsum.io import ClinsumError, read_json, write_jsonl
from clinsum.submission import combine_runs, resolve_format, write_submission


def test_2025_naming_and_counts(tmp_path):
    predictions = {}
    for lang, tests in (("en", 3), ("fr", 2)):
        records = [
            {"id": f"multiclinsum_test_{n}_{lang}", "lang": lang, "prediction": f"  summary {n} {lang}\n", "reference": None}
            for n in range(1, tests + 1)
        ]
        records.append({"id": f"multiclinsum_gs_{lang}_7", "lang": lang, "prediction": "held out", "reference": "ref"})
        predictions[lang] = tmp_path / f"{lang}.jsonl"
        write_jsonl(predictions[lang], records)
    predictions["pt"] = tmp_path / "pt.jsonl"
    write_jsonl(predictions["pt"], [{"id": "multiclinsum_test_10_pt", "lang": "pt", "prediction": "", "reference": None}])

    manifest = write_submission(predictions, tmp_path / "sub", "multiclinsum2025")
    sub = tmp_path / "sub"
    assert sorted(p.name for p in (sub / "en").iterdir()) == [f"multiclinsum_test_{n}_en_sum.txt" for n in (1, 2, 3)]
    assert sorted(p.name for p in (sub / "fr").iterdir()) == ["multiclinsum_test_1_fr_sum.txt", "multiclinsum_test_2_fr_sum.txt"]
    assert (sub / "en" / "multiclinsum_test_2_en_sum.txt").read_text(encoding="utf-8") == "summary 2 en\n"
    assert (sub / "heldout" / "en" / "multiclinsum_gs_en_7_sum.txt").read_text() == "held out\n"
    assert (sub / "pt" / "multiclinsum_test_10_pt_sum.txt").read_text() == "\n"  # empty prediction: file still there
    assert manifest["languages"]["en"] == {"upload": 3, "heldout": 1, "empty": 0, "nonstandard_test_ids": []}
    assert manifest["languages"]["pt"]["empty"] == 1
    assert read_json(sub / "manifest.json") == manifest


def test_ids_outside_the_test_naming_are_flagged_and_unsafe_ids_refused(tmp_path):
    write_jsonl(tmp_path / "en.jsonl", [{"id": "case-12", "lang": "en", "prediction": "x", "reference": None}])
    manifest = write_submission({"en": tmp_path / "en.jsonl"}, tmp_path / "sub", "multiclinsum2025")
    assert manifest["languages"]["en"]["nonstandard_test_ids"] == ["case-12"]
    assert (tmp_path / "sub" / "en" / "case-12_sum.txt").exists()
    write_jsonl(tmp_path / "es.jsonl", [{"id": "../escape", "lang": "es", "prediction": "x", "reference": None}])
    with pytest.raises(ClinsumError, match="not usable as a file name"):
        write_submission({"es": tmp_path / "es.jsonl"}, tmp_path / "sub2", "multiclinsum2025")


def _2026_inputs(tmp_path):
    """ca and el: test-set reports with gold (1, 2), one without (3), a held-out training document."""
    predictions, corpus = {}, {}
    for lang in ("ca", "el"):
        docs = [{"id": f"multiclinsum2_test_{n}_{lang}", "lang": lang, "text": f"Informe {n} {lang}.\n",
                 "summary": f"Gold {n}." if n < 3 else None, "test_set": True} for n in (1, 2, 3)]
        docs.append({"id": f"multiclinsum2_train_5_{lang}", "lang": lang, "text": "Training report.", "summary": "Gold 5."})
        corpus[lang] = tmp_path / "corpus" / f"{lang}.jsonl"
        write_jsonl(corpus[lang], docs)
        predictions[lang] = tmp_path / "pred" / f"{lang}.jsonl"
        write_jsonl(predictions[lang], [
            {"id": d["id"], "lang": lang, "prediction": f" summary of {d['id']} ", "reference": d["summary"],
             "test_set": d.get("test_set", False)} for d in docs])
    return predictions, corpus


def _organisers_reading(zip_path, reference_dir_texts: dict) -> dict:
    """What prepare_submission.py takes from a zip, written out from its documented behaviour: team = the zip's
    stem; (lang, run) from `{team}/{lang}/{run}/{case}_sum.txt`; each summary stripped."""
    team = PurePosixPath(zip_path.name).stem
    found = {}
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            parts = PurePosixPath(name).parts
            assert len(parts) == 4 and parts[0] == team and parts[-1].endswith("_sum.txt"), name
            found.setdefault((parts[1], parts[2]), {})[parts[3][: -len("_sum.txt")]] = archive.read(name).decode().strip()
    return found


def test_2026_zip_unpacks_to_the_organisers_structure_with_their_results_jsonl(tmp_path):
    predictions, corpus = _2026_inputs(tmp_path)
    out = tmp_path / "sub"
    manifest = write_submission(predictions, out, "multiclinsum2026", team="bu_team", corpus=corpus)
    found = _organisers_reading(out / "bu_team.zip", {})
    assert sorted(found) == [("ca", "run1"), ("el", "run1")]
    assert sorted(found[("el", "run1")]) == [f"multiclinsum2_test_{n}_el" for n in (1, 2, 3)]  # with gold or not
    assert found[("ca", "run1")]["multiclinsum2_test_3_ca"] == "summary of multiclinsum2_test_3_ca"
    assert (out / "heldout" / "ca" / "multiclinsum2_train_5_ca_sum.txt").exists()  # not uploaded
    rows = [json.loads(line) for line in (out / "scorer" / "bu_team" / "el" / "run1" / "results.jsonl").open()]
    assert [row["case_id"] for row in rows] == ["multiclinsum2_test_1_el", "multiclinsum2_test_2_el", "multiclinsum2_train_5_el"]
    assert rows[0] == {"case_id": "multiclinsum2_test_1_el", "language": "el", "full_case": "Informe 1 el.",
                       "reference_summary": "Gold 1.", "generated_summary": "summary of multiclinsum2_test_1_el"}
    assert manifest["languages"]["el"] == {"upload": 3, "heldout": 1, "empty": 0, "nonstandard_test_ids": [],
                                           "scorer_rows": 3}


def test_2026_runs_combine_into_one_team_zip(tmp_path):
    predictions, corpus = _2026_inputs(tmp_path)
    write_submission(predictions, tmp_path / "distil", "multiclinsum2026", team="bu_team", corpus=corpus)
    write_submission(predictions, tmp_path / "standard", "multiclinsum2026", team="bu_team", corpus=corpus)
    runs = combine_runs([tmp_path / "distil", tmp_path / "standard"], "bu_team", tmp_path / "bu_team.zip")
    assert runs == {"run1": str(tmp_path / "distil"), "run2": str(tmp_path / "standard")}
    found = _organisers_reading(tmp_path / "bu_team.zip", {})
    assert sorted(found) == [("ca", "run1"), ("ca", "run2"), ("el", "run1"), ("el", "run2")]
    with pytest.raises(ClinsumError, match="1 to 3 runs"):
        combine_runs([tmp_path / "distil"] * 4, "bu_team", tmp_path / "x.zip")


def test_the_format_follows_the_protocol_unless_given():
    assert resolve_format(None, "multiclinsum2026") == "multiclinsum2026"
    assert resolve_format(None, "paper") == "multiclinsum2025"
    assert resolve_format("multiclinsum2025", "multiclinsum2026") == "multiclinsum2025"
