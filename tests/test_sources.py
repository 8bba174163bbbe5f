"""clinsum.sources: the content fingerprint of corpus sources, folder walks and zip access."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from clinsum.io import ClinsumError
from clinsum.sources import Archives, Location, WalkNotes, fingerprint_sources, layouts_from_config, preset_layouts, walk_folder

LAYOUTS = layouts_from_config(preset_layouts())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_corpus(root: Path) -> Path:
    for n in (1, 2):
        write(root / "multiclinsum_gs_train_en" / "fulltext" / f"multiclinsum_gs_en_{n}.txt", f"Report {n}.")
        write(root / "multiclinsum_gs_train_en" / "summaries" / f"multiclinsum_gs_en_{n}_sum.txt", f"Summary {n}.")
    with zipfile.ZipFile(root / "multiclinsum_ls_train_fr.zip", "w") as archive:
        archive.writestr("multiclinsum_ls_train_fr/fulltext/multiclinsum_ls_fr_1.txt", "Rapport.")
    return root


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "corpus")


def fingerprint(corpus: Path, cache: Path, layout="multiclinsum"):
    return fingerprint_sources([{"path": str(corpus), "layout": layout}], LAYOUTS, cache)


def touch_later(path: Path):
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 5_000_000_000))


def test_touching_files_keeps_the_fingerprint_and_an_unchanged_corpus_is_not_read_again(corpus, tmp_path):
    cache = tmp_path / "cache" / "fingerprints.json"
    first, hashed_cold = fingerprint(corpus, cache)
    assert hashed_cold == 5 and cache.exists()
    assert fingerprint(corpus, cache) == (first, 0)  # warm: stat only
    touch_later(corpus / "multiclinsum_gs_train_en" / "summaries" / "multiclinsum_gs_en_1_sum.txt")
    touch_later(corpus / "multiclinsum_ls_train_fr.zip")
    digest, hashed = fingerprint(corpus, cache)
    assert digest == first
    assert hashed == 2 + 1  # the touched summary's folder (2 files) and the zip's folder (1 file)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: write(c / "multiclinsum_gs_train_en" / "summaries" / "multiclinsum_gs_en_2_sum.txt", "Edited."),
        lambda c: write(c / "multiclinsum_gs_train_en" / "fulltext" / "multiclinsum_gs_en_3.txt", "Added."),
        lambda c: (c / "multiclinsum_gs_train_en" / "fulltext" / "multiclinsum_gs_en_1.txt").unlink(),
        lambda c: _append_to_zip(c / "multiclinsum_ls_train_fr.zip"),
        lambda c: write(c / "extra" / "multiclinsum_test_1_fr.txt", "A new test report in a new folder."),
    ],
    ids=["edited", "added", "removed", "zip-content", "new-folder"],
)
def test_a_changed_document_changes_the_fingerprint(corpus, tmp_path, change):
    cache = tmp_path / "fingerprints.json"
    before, _ = fingerprint(corpus, cache)
    change(corpus)
    after, _ = fingerprint(corpus, cache)
    assert after != before
    assert fingerprint(corpus, tmp_path / "cold.json")[0] == after  # the cache never hides a change


def _append_to_zip(path: Path):
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("multiclinsum_ls_train_fr/fulltext/multiclinsum_ls_fr_2.txt", "Encore.")


def test_files_that_hold_no_document_do_not_count(corpus, tmp_path):
    cache = tmp_path / "fingerprints.json"
    before, _ = fingerprint(corpus, cache)
    write(corpus / "README.txt", "Downloaded on Monday.")
    write(corpus / "multiclinsum_gs_train_en" / ".DS_Store", "Bud1")
    write(corpus / "__MACOSX" / "multiclinsum_gs_train_en" / "._multiclinsum_gs_en_1.txt", "x")
    assert fingerprint(corpus, cache)[0] == before


def test_jsonl_sources_count_their_jsonl_files(tmp_path):
    folder = tmp_path / "jsonl"
    write(folder / "a.jsonl", '{"id": "1"}\n')
    cache = tmp_path / "fingerprints.json"
    before, _ = fingerprint(folder, cache, layout="jsonl")
    write(folder / "notes.md", "not read")
    assert fingerprint(folder, cache, layout="jsonl")[0] == before
    write(folder / "sub" / "b.JSONL", '{"id": "2"}\n')
    assert fingerprint(folder, cache, layout="jsonl")[0] != before


def test_a_missing_source_or_unknown_layout_is_named(tmp_path):
    with pytest.raises(ClinsumError, match=r"corpus\.sources\[0\]: .*/nowhere does not exist"):
        fingerprint(tmp_path / "nowhere", tmp_path / "cache.json")
    with pytest.raises(ClinsumError, match=r"corpus\.sources\[0\]: layout 'mcs' is neither jsonl nor a name under"):
        fingerprint(tmp_path, tmp_path / "cache.json", layout="mcs")


def test_an_unreadable_cache_is_rebuilt(corpus, tmp_path):
    cache = write(tmp_path / "fingerprints.json", "{not json")
    digest, hashed = fingerprint(corpus, cache)
    assert hashed == 5 and fingerprint(corpus, cache) == (digest, 0)


def test_walk_follows_links_and_reads_a_folder_reached_twice_once(tmp_path):
    shared = tmp_path / "shared"
    write(shared / "a.txt", "a")
    root = tmp_path / "root"
    write(root / "b.txt", "b")
    (root / "link1").symlink_to(shared, target_is_directory=True)
    (root / "link2").symlink_to(shared, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    notes = WalkNotes()
    files = [relative for relative, _ in walk_folder(root, notes)]
    assert files == ["b.txt", "link1/a.txt"]
    assert notes.folders_reached_twice == [str(root / "link2"), str(root / "loop")]


def entries(archives: Archives, path: Path, chain=()) -> dict[str, Location]:
    return {name: Location(str(path), (*chain, name), entry) for name, entry in archives.members(str(path), chain)}


def test_archives_read_nested_zips_and_cache_few_handles(tmp_path):
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("doc.txt", "inside")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as archive:
        archive.write(inner, "nested/inner.zip")
        archive.writestr("top.txt", "top")
    paths = [tmp_path / f"z{n}.zip" for n in range(3)]
    for path in paths:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.txt", path.name)
    with Archives(keep_open=2) as archives:
        assert set(entries(archives, outer)) == {"nested/inner.zip", "top.txt"}
        nested = entries(archives, outer, ("nested/inner.zip",))
        assert archives.read(nested["doc.txt"]) == b"inside"
        assert archives.read(entries(archives, outer)["top.txt"]) == b"top"
        for path in paths:
            assert archives.read(entries(archives, path)["x.txt"]) == path.name.encode()
        assert len(archives._handles) == 2 and len(archives._spills) == 1
        # without an entry (not listed), the zip library reads it
        assert archives.read(Location(str(outer), ("nested/inner.zip", "doc.txt"))) == b"inside"
    assert archives._handles == {} and archives._spills == {}


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_archives_read_members_as_zipfile_does(tmp_path, method):
    path = tmp_path / "a.zip"
    texts = {f"dir/doc_{n}.txt": ("Überweisung %d. " % n * 50 * n).encode() for n in range(1, 6)}
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("dir/extra.txt", b"x", compress_type=zipfile.ZIP_STORED)  # a longer local header
        for name, data in texts.items():
            archive.writestr(name, data)
    with Archives() as archives, zipfile.ZipFile(path) as reference:
        listed = entries(archives, path)
        for name in reversed(list(texts)):
            assert archives.read(listed[name]) == texts[name] == reference.read(name)


def test_a_corrupted_member_is_an_error_not_wrong_text(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("doc.txt", b"the original text")
    data = path.read_bytes()
    path.write_bytes(data.replace(b"original", b"ORIGINAL", 1))
    with Archives() as archives, pytest.raises(zipfile.BadZipFile, match="bad CRC-32 or size for doc.txt"):
        archives.read(entries(archives, path)["doc.txt"])
