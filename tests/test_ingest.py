import json
import zipfile
from pathlib import Path

import pytest

from clinsum.ingest import ingest, list_files, Manifest
from clinsum.io import ClinsumError, read_jsonl

from conftest import SAMPLE

LANGS = ["en", "es", "fr", "pt"]


def write(path: Path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))


def gs_pair(root: Path, lang: str, n: int, subset="gs", report=None, summary="A summary."):
    folder = root / f"multiclinsum_{subset}_train_{lang}"
    text = f"Report {lang} {n}." if report is None else report
    write(folder / "fulltext" / f"multiclinsum_{subset}_{lang}_{n}.txt", text)
    if summary is not None:
        write(folder / "summaries" / f"multiclinsum_{subset}_{lang}_{n}_sum.txt", summary)


def zip_folder(folder: Path, zip_path: Path, doubled=False):
    """Zip a folder; with doubled=True the archive holds a folder of the same name inside its top folder."""
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = f"{folder.name}/" + str(path.relative_to(folder))
                if doubled:
                    name = f"{folder.name}/{name}"
                archive.write(path, name)


def run(sources, tmp_path, on_bad_input="skip"):
    out = tmp_path / "out"
    manifest = ingest(sources, LANGS, out, on_bad_input)
    records = {lang: list(read_jsonl(out / f"{lang}.jsonl")) for lang in LANGS}
    return manifest, records


def test_sample_corpus_ingests_completely(tmp_path):
    manifest, records = run([{"path": str(SAMPLE), "layout": "multiclinsum"}], tmp_path)
    for lang in LANGS:
        gs = [r for r in records[lang] if r["summary"] is not None]
        test = [r for r in records[lang] if r["summary"] is None]
        assert len(gs) >= 12 and len(test) >= 1
        assert manifest["languages"][lang]["read"] == len(records[lang])
        assert manifest["languages"][lang]["skipped"] == 0
        for record in records[lang]:
            assert set(record) == {"id", "lang", "text", "summary", "source"}
            assert record["lang"] == lang and record["text"]
    assert (tmp_path / "out" / "manifest.json").exists()


def test_pairing_and_numeric_order(tmp_path):
    root = tmp_path / "corpus"
    for n in (10, 2, 1, 11):
        gs_pair(root, "en", n, summary=f"Summary {n}.")
    _, records = run([{"path": str(root), "layout": "multiclinsum"}], tmp_path)
    assert [r["id"] for r in records["en"]] == [f"multiclinsum_gs_en_{n}" for n in (1, 2, 10, 11)]
    assert [r["summary"] for r in records["en"]] == [f"Summary {n}." for n in (1, 2, 10, 11)]
    assert records["en"][0]["text"] == "Report en 1."


def test_test_layout_has_language_after_number(tmp_path):
    root = tmp_path / "corpus"
    write(root / "multiclinsum_test_fr" / "fulltext" / "multiclinsum_test_7_fr.txt", "Rapport de test.")
    _, records = run([{"path": str(root), "layout": "multiclinsum"}], tmp_path)
    assert records["fr"] == [
        {
            "id": "multiclinsum_test_7_fr",
            "lang": "fr",
            "text": "Rapport de test.",
            "summary": None,
            "source": str(root / "multiclinsum_test_fr" / "fulltext" / "multiclinsum_test_7_fr.txt"),
        }
    ]


def test_zip_with_doubled_folder_and_stray_nested_zip(tmp_path):
    staging = tmp_path / "staging"
    gs_pair(staging, "es", 1)
    gs_pair(staging, "es", 3)
    inner_staging = tmp_path / "inner"
    gs_pair(inner_staging, "pt", 2, subset="ls")
    inner_zip = tmp_path / "multiclinsum_ls_train_pt.zip"
    zip_folder(inner_staging / "multiclinsum_ls_train_pt", inner_zip)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    outer = corpus / "multiclinsum_gs_train_es.zip"
    zip_folder(staging / "multiclinsum_gs_train_es", outer, doubled=True)
    with zipfile.ZipFile(outer, "a") as archive:
        archive.write(inner_zip, "multiclinsum_gs_train_es/multiclinsum_ls_train_pt.zip")
        archive.writestr("multiclinsum_gs_train_es/README.txt", "not a document")
    manifest, records = run([{"path": str(corpus), "layout": "multiclinsum"}], tmp_path)
    assert [r["id"] for r in records["es"]] == ["multiclinsum_gs_es_1", "multiclinsum_gs_es_3"]
    assert [r["id"] for r in records["pt"]] == ["multiclinsum_ls_pt_2"]
    assert "!" in records["pt"][0]["source"]  # read from inside the nested zip
    assert manifest["totals"] == {"read": 3, "written": 3, "skipped": 0, "ignored_files": 1}


def trap_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    gs_pair(root, "en", 1)  # good
    gs_pair(root, "en", 2, report="   \n")  # empty report
    gs_pair(root, "en", 3, summary=None)  # report without its summary
    gs_pair(root, "fr", 1, report="Patiente de 67 ans, dyspnée.".encode("latin-1"))  # not UTF-8
    gs_pair(root, "de", 1)  # unknown language
    write(root / "multiclinsum_gs_train_pt" / "summaries" / "multiclinsum_gs_pt_9_sum.txt", "Orphan.")
    gs_pair(root, "es", 1)
    # the same document again, in a zip beside the folder: a duplicate id
    zip_folder(root / "multiclinsum_gs_train_es", root / "copy.zip")
    write(root / "broken.zip", b"PK\x03\x04 this is not really a zip")
    return root


EXPECTED_SKIPS = {
    ("en", "empty report"),
    ("en", "report without its summary"),
    ("fr", "not UTF-8"),
    ("unknown", "unknown language 'de'"),
    ("pt", "summary without its report"),
    ("es", "duplicate id multiclinsum_gs_es_1"),
    ("unknown", "unreadable zip"),
}


def test_every_bad_input_is_skipped_counted_and_explained(tmp_path):
    manifest, records = run([{"path": str(trap_corpus(tmp_path)), "layout": "multiclinsum"}], tmp_path)
    skips = {(s["lang"] or "unknown", s["reason"].split(" (")[0]) for s in manifest["skipped"]}
    assert skips == EXPECTED_SKIPS
    assert [r["id"] for r in records["en"]] == ["multiclinsum_gs_en_1"]
    assert [r["id"] for r in records["es"]] == ["multiclinsum_gs_es_1"]
    assert records["fr"] == [] and records["pt"] == []
    for lang, counts in manifest["languages"].items():
        assert counts["read"] == counts["written"] + counts["skipped"], lang
    assert manifest["languages"]["en"] == {
        "read": 3,
        "written": 1,
        "skipped": 2,
        "skipped_by_reason": {"empty report": 1, "report without its summary": 1},
    }
    assert manifest["totals"]["read"] == manifest["totals"]["written"] + manifest["totals"]["skipped"]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["languages"] == manifest["languages"]


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda root: gs_pair(root, "en", 5, report=""), "multiclinsum_gs_en_5.txt: empty report"),
        (lambda root: gs_pair(root, "en", 6, summary=None), "multiclinsum_gs_en_6.txt: report without its summary"),
        (lambda root: gs_pair(root, "en", 7, report=b"\xff\xfe caf\xe9"), "multiclinsum_gs_en_7.txt: not UTF-8"),
        (lambda root: gs_pair(root, "xx", 1), "multiclinsum_gs_xx_1.txt: unknown language 'xx'"),
        (lambda root: write(root / "bad.zip", b"garbage"), "bad.zip: unreadable zip"),
    ],
)
def test_error_mode_stops_naming_file_and_problem(tmp_path, make_bad, message):
    root = tmp_path / "corpus"
    gs_pair(root, "en", 1)
    make_bad(root)
    with pytest.raises(ClinsumError, match=message.replace(".", r"\.").replace("(", r"\(")):
        run([{"path": str(root), "layout": "multiclinsum"}], tmp_path, on_bad_input="error")
    assert not (tmp_path / "out" / "en.jsonl").exists()  # nothing half-written


def test_jsonl_layout(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"id": "a1", "lang": "en", "text": "Report one.", "summary": "One."}),
        json.dumps({"id": "a2", "lang": "pt", "text": "Relato dois."}),  # no summary: a test document
        json.dumps({"id": "a3", "lang": "en", "text": "", "summary": "x"}),
        "{not json",
        json.dumps({"id": "a1", "lang": "en", "text": "Again.", "summary": "Again."}),
        json.dumps({"id": "a4", "lang": "it", "text": "Referto.", "summary": "R."}),
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "a5", "lang": "en", "text": "caf\xe9"}\n')
    manifest, records = run([{"path": str(path), "layout": "jsonl"}], tmp_path)
    assert [r["id"] for r in records["en"]] == ["a1"]
    assert records["pt"][0]["summary"] is None
    reasons = sorted(s["reason"].split(" (")[0] for s in manifest["skipped"])
    assert reasons == sorted(
        ["empty report", "invalid JSON", "duplicate id a1", "unknown language 'it'", "not UTF-8"]
    )
    assert manifest["totals"]["read"] == 7 == manifest["totals"]["written"] + manifest["totals"]["skipped"]


def test_listing_reads_names_only(tmp_path):
    """The first pass must not read document bodies (large-scale corpora stream)."""
    root = tmp_path / "corpus"
    gs_pair(root, "en", 1)
    names = [name for name, _ in list_files(root, Manifest(LANGS))]
    assert sorted(names) == ["multiclinsum_gs_en_1.txt", "multiclinsum_gs_en_1_sum.txt"]
