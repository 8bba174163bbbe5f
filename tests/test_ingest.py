import json
import zipfile
from pathlib import Path

import pytest

from clinsum.ingest import ingest, list_files, Manifest
from clinsum.io import ClinsumError, read_jsonl
from clinsum.sources import Archives

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


def run(sources, tmp_path, on_bad_input="skip", **kwargs):
    out = tmp_path / "out"
    manifest = ingest(sources, LANGS, out, on_bad_input, **kwargs)
    records = {lang: list(read_jsonl(out / f"{lang}.jsonl")) for lang in LANGS}
    for lang, counts in manifest["languages"].items():
        assert counts["read"] == counts["written"] + counts["skipped"], (lang, counts)
    return manifest, records


def folder(root: Path, path: str):
    return {"path": str(root / path) if path else str(root), "layout": "multiclinsum"}


def test_sample_corpus_ingests_completely(tmp_path):
    manifest, records = run([{"path": str(SAMPLE), "layout": "multiclinsum"}], tmp_path)
    for lang in LANGS:
        gs = [r for r in records[lang] if r["summary"] is not None]
        test = [r for r in records[lang] if r["summary"] is None]
        assert len(gs) >= 12 and len(test) >= 1
        assert manifest["languages"][lang]["read"] == len(records[lang])
        assert manifest["languages"][lang]["skipped"] == 0
        for record in records[lang]:
            test_set = {"test_set"} if record["summary"] is None else set()  # test-layout reports: always test
            assert set(record) == {"id", "lang", "text", "summary", "source"} | test_set
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
            "test_set": True,
        }
    ]


def test_multiclinsum2_test_set_with_and_without_its_gold(tmp_path):
    """The 2026 test set as the organisers lay it out: {lang}/multiclinsum2_test_{n}_{lang}.txt, its gold beside it
    once released; both go to the test split (test_set), the gold read when it is there. Training files by the
    test set's pattern or the first edition's names."""
    root = tmp_path / "corpus"
    write(root / "multiclinsum2_test_set" / "ca" / "multiclinsum2_test_1_ca.txt", "Informe 1.")
    write(root / "multiclinsum2_test_set" / "ca" / "multiclinsum2_test_1_ca_sum.txt", "Resum 1.")
    write(root / "multiclinsum2_test_set" / "ca" / "multiclinsum2_test_2_ca.txt", "Informe 2.")
    write(root / "train" / "ca" / "multiclinsum2_train_5_ca.txt", "Informe 5.")
    write(root / "train" / "ca" / "multiclinsum2_train_5_ca_sum.txt", "Resum 5.")
    write(root / "multiclinsum2_gs_train_ca" / "multiclinsum2_gs_ca_9.txt", "Informe 9.")
    write(root / "multiclinsum2_gs_train_ca" / "multiclinsum2_gs_ca_9_sum.txt", "Resum 9.")
    write(root / "train" / "ca" / "multiclinsum2_train_6_es.txt", "Informe en castellano.")  # in the Catalan folder
    manifest = ingest([{"path": str(root), "layout": "multiclinsum2"}], ["ca", "es"], tmp_path / "out", "skip")
    records = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "ca.jsonl")}
    assert sorted(records) == ["multiclinsum2_gs_ca_9", "multiclinsum2_test_1_ca", "multiclinsum2_test_2_ca",
                               "multiclinsum2_train_5_ca"]
    assert records["multiclinsum2_test_1_ca"]["summary"] == "Resum 1." and records["multiclinsum2_test_1_ca"]["test_set"]
    assert records["multiclinsum2_test_2_ca"]["summary"] is None and records["multiclinsum2_test_2_ca"]["test_set"]
    assert "test_set" not in records["multiclinsum2_train_5_ca"] and records["multiclinsum2_gs_ca_9"]["summary"] == "Resum 9."
    assert manifest["languages"]["es"]["skipped_by_reason"] == {"language differs from its folder": 1}


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
    assert manifest["totals"] == {"read": 3, "written": 3, "skipped": 0, "ignored_files": 1, "duplicate_files": 0,
                                  "macos_metadata": 0}


def trap_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    gs_pair(root, "en", 1)  # good
    gs_pair(root, "en", 2, report="   \n")  # empty report
    gs_pair(root, "en", 3, summary=None)  # report without its summary
    gs_pair(root, "fr", 1, report="Patiente de 67 ans, dyspnée.".encode("latin-1"))  # not UTF-8
    gs_pair(root, "de", 1)  # unknown language
    write(root / "multiclinsum_gs_train_pt" / "summaries" / "multiclinsum_gs_pt_9_sum.txt", "Orphan.")
    gs_pair(root, "es", 1)
    # the same document's files again, in a zip beside the folder: one document, listed with its extra files
    zip_folder(root / "multiclinsum_gs_train_es", root / "copy.zip")
    write(root / "broken.zip", b"PK\x03\x04 this is not really a zip")
    return root


EXPECTED_SKIPS = {
    ("en", "empty report"),
    ("en", "report without its summary"),
    ("fr", "not UTF-8"),
    ("unknown", "unknown language 'de'"),
    ("pt", "summary without its report"),
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
    # the Spanish document counts once, read from copy.zip (listed first), its folder's two files listed under it
    assert manifest["languages"]["es"] == {"read": 1, "written": 1, "skipped": 0, "skipped_by_reason": {}}
    [duplicate] = manifest["duplicate_files"]
    assert duplicate["id"] == "multiclinsum_gs_es_1" and len(duplicate["read"]) == len(duplicate["not_read"]) == 2
    assert all("copy.zip!" in path for path in duplicate["read"])
    assert not any("copy.zip" in path for path in duplicate["not_read"]) and manifest["totals"]["duplicate_files"] == 2
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
    with Archives() as archives:
        names = [name for name, _ in list_files(root, Manifest(LANGS, "skip"), archives)]
    assert sorted(names) == [
        "multiclinsum_gs_train_en/fulltext/multiclinsum_gs_en_1.txt",
        "multiclinsum_gs_train_en/summaries/multiclinsum_gs_en_1_sum.txt",
    ]


# ---------------------------------------------------------------- issue 16: the traps, each a test


def corpus_zip(zip_path: Path, lang: str, numbers, subset="ls"):
    """A large-scale set as shipped: one zip holding its folder, reports and summaries."""
    top = f"multiclinsum_{subset}_train_{lang}"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for n in numbers:
            archive.writestr(f"{top}/fulltext/multiclinsum_{subset}_{lang}_{n}.txt", f"Report {lang} {n}.")
            archive.writestr(f"{top}/summaries/multiclinsum_{subset}_{lang}_{n}_sum.txt", f"Summary {n}.")


def test_each_zip_is_opened_once_per_pass_not_once_per_member(tmp_path, monkeypatch):
    """Zips were quadratic: every member read re-opened the archive and parsed its central directory."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    corpus_zip(corpus / "multiclinsum_ls_train_en.zip", "en", range(1, 41))
    opened = []

    class CountingZipFile(zipfile.ZipFile):
        def __init__(self, file, *args, **kwargs):
            opened.append(str(file))
            super().__init__(file, *args, **kwargs)

    monkeypatch.setattr(zipfile, "ZipFile", CountingZipFile)
    manifest, records = run([folder(corpus, "")], tmp_path)
    assert [r["id"] for r in records["en"]] == [f"multiclinsum_ls_en_{n}" for n in range(1, 41)]
    assert records["en"][39]["summary"] == "Summary 40."
    assert len(opened) <= 2, f"the zip was opened {len(opened)} times for 80 members"


def test_symlinked_set_folder_is_read(tmp_path):
    """A set folder that is a link (e.g. to a shared data disk) lost all its documents, silently."""
    elsewhere = tmp_path / "shared-disk"
    gs_pair(elsewhere, "en", 1)
    gs_pair(elsewhere, "en", 2)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "multiclinsum_gs_train_en").symlink_to(elsewhere / "multiclinsum_gs_train_en", target_is_directory=True)
    manifest, records = run([folder(corpus, "")], tmp_path)
    assert [r["id"] for r in records["en"]] == ["multiclinsum_gs_en_1", "multiclinsum_gs_en_2"]
    assert manifest["languages"]["en"]["read"] == 2


def test_link_loop_is_read_once_and_recorded(tmp_path):
    corpus = tmp_path / "corpus"
    gs_pair(corpus, "en", 1)
    (corpus / "multiclinsum_gs_train_en" / "again").symlink_to(corpus, target_is_directory=True)
    manifest, records = run([folder(corpus, "")], tmp_path)
    assert [r["id"] for r in records["en"]] == ["multiclinsum_gs_en_1"]
    assert manifest["totals"]["skipped"] == 0  # not a duplicate of itself
    assert manifest["folders_reached_twice"] == [str(corpus / "multiclinsum_gs_train_en" / "again")]


def test_file_whose_language_differs_from_its_folder_is_a_counted_skip(tmp_path):
    """A report named _en_ inside the Spanish folder was written as English."""
    corpus = tmp_path / "corpus"
    gs_pair(corpus, "es", 1)
    spanish = corpus / "multiclinsum_gs_train_es"
    write(spanish / "fulltext" / "multiclinsum_gs_en_5.txt", "Informe en español.")
    write(spanish / "summaries" / "multiclinsum_gs_en_5_sum.txt", "Resumen.")
    manifest, records = run([folder(corpus, "")], tmp_path)
    assert records["en"] == []
    assert [r["id"] for r in records["es"]] == ["multiclinsum_gs_es_1"]
    # one document (its report and its summary), counted once, both files named
    assert manifest["languages"]["en"]["skipped_by_reason"] == {"language differs from its folder": 1}
    assert manifest["languages"]["en"]["read"] == 1 and "multiclinsum_gs_en_5_sum.txt" in manifest["skipped"][0]["path"]
    reasons = [s["reason"] for s in manifest["skipped"]]
    assert reasons[0] == "language differs from its folder ('en' in its name, 'es' in multiclinsum_gs_train_es)"


def test_file_whose_language_differs_from_its_folder_stops_under_error(tmp_path):
    corpus = tmp_path / "corpus"
    gs_pair(corpus, "es", 1)
    write(corpus / "multiclinsum_test_es" / "fulltext" / "multiclinsum_test_3_fr.txt", "Rapport.")
    with pytest.raises(ClinsumError, match=r"multiclinsum_test_3_fr\.txt: language differs from its folder"):
        run([folder(corpus, "")], tmp_path, on_bad_input="error")


def test_language_of_a_zipped_set_comes_from_the_zip_name(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with zipfile.ZipFile(corpus / "multiclinsum_gs_train_pt.zip", "w") as archive:  # no folder inside
        archive.writestr("multiclinsum_gs_pt_1.txt", "Relato.")
        archive.writestr("multiclinsum_gs_pt_1_sum.txt", "Resumo.")
        archive.writestr("multiclinsum_gs_es_2.txt", "Informe.")
        archive.writestr("multiclinsum_gs_es_2_sum.txt", "Resumen.")
    manifest, records = run([folder(corpus, "")], tmp_path)
    assert [r["id"] for r in records["pt"]] == ["multiclinsum_gs_pt_1"]
    assert records["es"] == []
    assert manifest["languages"]["es"]["skipped_by_reason"] == {"language differs from its folder": 1}


def test_extensions_match_case_insensitively(tmp_path):
    """Upper-case .TXT/.ZIP were ignored, and a .Txt summary made a misleading 'report without its summary'."""
    corpus = tmp_path / "corpus"
    write(corpus / "multiclinsum_gs_train_en" / "fulltext" / "multiclinsum_gs_en_1.TXT", "Report one.")
    write(corpus / "multiclinsum_gs_train_en" / "summaries" / "multiclinsum_gs_en_1_sum.TXT", "Summary one.")
    write(corpus / "multiclinsum_gs_train_en" / "fulltext" / "multiclinsum_gs_en_2.txt", "Report two.")
    write(corpus / "multiclinsum_gs_train_en" / "summaries" / "multiclinsum_gs_en_2_sum.Txt", "Summary two.")
    corpus_zip(corpus / "MULTICLINSUM_LS_TRAIN_FR.ZIP", "fr", [7])
    manifest, records = run([folder(corpus, "")], tmp_path)
    assert [(r["id"], r["summary"]) for r in records["en"]] == [
        ("multiclinsum_gs_en_1", "Summary one."),
        ("multiclinsum_gs_en_2", "Summary two."),
    ]
    assert [r["id"] for r in records["fr"]] == ["multiclinsum_ls_fr_7"]
    assert manifest["totals"]["skipped"] == 0 and manifest["totals"]["ignored_files"] == 0


def test_crlf_line_ends_are_normalized(tmp_path):
    corpus = tmp_path / "corpus"
    gs_pair(corpus, "en", 1, report="First line.\r\nSecond line.\rThird.\r\n", summary="Sum\r\nmary.\r\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"id": "j1", "lang": "fr", "text": "Un.\r\nDeux.", "summary": "R\r\n"}) + "\n")
    manifest, records = run([folder(corpus, ""), {"path": str(jsonl), "layout": "jsonl"}], tmp_path)
    assert records["en"][0]["text"] == "First line.\nSecond line.\nThird."
    assert records["en"][0]["summary"] == "Sum\nmary."
    assert (records["fr"][0]["text"], records["fr"][0]["summary"]) == ("Un.\nDeux.", "R")
    on_disk = (tmp_path / "out" / "en.jsonl").read_bytes()
    assert b"\\r" not in on_disk


def test_macos_metadata_is_ignored_before_anything_else(tmp_path):
    """A zip made on macOS stopped an `error` run on its harmless __MACOSX/._*.zip AppleDouble entry."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    zip_path = corpus / "multiclinsum_ls_train_en.zip"
    corpus_zip(zip_path, "en", [1, 2])
    with zipfile.ZipFile(zip_path, "a") as archive:
        archive.writestr("__MACOSX/._multiclinsum_ls_train_en.zip", b"\x00\x05\x16\x07 AppleDouble")
        archive.writestr("__MACOSX/multiclinsum_ls_train_en/fulltext/._multiclinsum_ls_en_1.txt", b"\x00\x05\x16\x07")
        archive.writestr("multiclinsum_ls_train_en/.DS_Store", b"\x00\x00\x00\x01Bud1")
    write(corpus / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    write(corpus / "._multiclinsum_ls_train_en.zip", b"\x00\x05\x16\x07")
    write(corpus / "multiclinsum_gs_train_fr" / "fulltext" / "._multiclinsum_gs_fr_1.txt", b"\x00\x05\x16\x07")
    gs_pair(corpus, "fr", 1)
    manifest, records = run([folder(corpus, "")], tmp_path, on_bad_input="error")
    assert [r["id"] for r in records["en"]] == ["multiclinsum_ls_en_1", "multiclinsum_ls_en_2"]
    assert [r["id"] for r in records["fr"]] == ["multiclinsum_gs_fr_1"]
    assert manifest["totals"]["macos_metadata"] == 6
    assert manifest["totals"]["ignored_files"] == 0 and manifest["totals"]["skipped"] == 0


CASES_LAYOUT = {
    "cases": {
        "files": [r"(?:^|/)(?P<lang>[a-z]{2})/(?:reports|(?P<kind>summaries))/case_(?P<n>\d+)\.txt$"],
        "id": "case_{lang}_{n}",
    }
}


def test_a_layout_from_config_reads_a_corpus_laid_out_differently(tmp_path):
    corpus = tmp_path / "cases"
    for lang in ("en", "pt"):
        write(corpus / lang / "reports" / "case_3.txt", f"Report {lang}.")
        write(corpus / lang / "summaries" / "case_3.txt", f"Summary {lang}.")
    write(corpus / "pt" / "reports" / "case_4.txt", "Sem resumo.")
    manifest, records = run([{"path": str(corpus), "layout": "cases"}], tmp_path, layouts=CASES_LAYOUT)
    assert [(r["id"], r["text"], r["summary"]) for r in records["en"]] == [("case_en_3", "Report en.", "Summary en.")]
    assert [r["id"] for r in records["pt"]] == ["case_pt_3"]
    assert manifest["languages"]["pt"]["skipped_by_reason"] == {"report without its summary": 1}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"files": ["(?P<lang>[a-z]{2})_(?P<n>\\d+"]}, r"corpus\.layouts\.bad\.files: .* is not a regular expression"),
        ({"files": ["(?P<lang>[a-z]{2})\\.txt"]}, r"must have the named groups \['lang', 'n'\]"),
        ({"files": ["(?P<lang>..)_(?P<n>\\d+)(?P<part>a)"]}, r"and no others than"),
        ({"files": ["(?P<lang>..)_(?P<n>\\d+)"], "folders": ["set_(?P<n>\\d)"]}, r"\.folders: .*named groups \['lang'\]"),
        ({"files": ["(?P<lang>..)_(?P<n>\\d+)"], "id": "{number}"}, r"corpus\.layouts\.bad\.id: '\{number\}' is not a format"),
    ],
)
def test_a_bad_layout_is_named_with_its_config_key(tmp_path, spec, message):
    with pytest.raises(ClinsumError, match=message):
        run([{"path": str(tmp_path), "layout": "bad"}], tmp_path, layouts={"bad": spec})


def test_an_unknown_layout_name_is_named(tmp_path):
    with pytest.raises(ClinsumError, match=r"layout 'multiclinsum3' is neither jsonl nor one of \['multiclinsum', 'multiclinsum2'\]"):
        run([{"path": str(tmp_path), "layout": "multiclinsum3"}], tmp_path)
