import json
import random
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from clinsum.cli import main
from clinsum.ingest import ingest
from clinsum.io import ClinsumError, read_jsonl
from clinsum.synthetic import TABLE1, SentenceDeck, compose, scale_to_total, synthesize, target_lengths

from conftest import SAMPLE

LANGS = ["en", "es", "fr", "pt"]
# An independent splitter, finer than the generator's: it splits at every sentence end followed by space.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
NUMBER = re.compile(r"_(\d+)(?:_[a-z]{2})?(?:_sum)?\.txt$")


def number_of(name: str) -> int:
    return int(NUMBER.search(name).group(1))


def corpus_files(root: Path) -> dict[str, str]:
    """Name (relative path, or zip!member) -> text of every document of a written corpus."""
    files = {}
    for path in sorted(root.rglob("*.txt")):
        files[str(path.relative_to(root))] = path.read_bytes().decode("utf-8")
    for path in sorted(root.glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                files[f"{path.name}!{member}"] = archive.read(member).decode("utf-8")
    return files


def lengths_by(files: dict[str, str], pattern: str) -> dict[int, int]:
    """Document number -> characters, for the files whose name matches `pattern`."""
    return {number_of(name): len(text) for name, text in files.items() if re.search(pattern, name)}


def describe(lengths) -> dict:
    lengths = list(lengths)
    return {"mean": round(sum(lengths) / len(lengths), 2), "min": min(lengths), "max": max(lengths)}


@pytest.fixture(scope="module")
def full_size(tmp_path_factory) -> Path:
    """The gold set at MultiClinSum's size (592 pairs per language) and 20 test reports per language."""
    out = tmp_path_factory.mktemp("full") / "corpus"
    synthesize(SAMPLE, out, LANGS, gold=592, test=20, seed=42)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small") / "corpus"
    synthesize(SAMPLE, out, LANGS, gold=6, test=3, large_scale=5, seed=42)
    return out


# ---------------------------------------------------------------- lengths


def test_target_lengths_put_the_extremes_first_and_hit_the_mean():
    stats = TABLE1["fr"]["report"]
    lengths = target_lengths(100, stats, np.random.default_rng(0))
    assert len(lengths) == 100 and lengths[:2] == [stats.max, stats.min]
    assert min(lengths) == stats.min and max(lengths) == stats.max
    assert sum(lengths) == round(100 * stats.mean)
    assert len(set(lengths[2:])) > 50  # a spread, not a constant


def test_target_lengths_of_tiny_sets():
    stats = TABLE1["en"]["report"]
    rng = np.random.default_rng(0)
    assert target_lengths(0, stats, rng) == []
    assert target_lengths(1, stats, rng) == [stats.max]
    assert target_lengths(2, stats, rng) == [stats.max, stats.min]
    # 5 en reports cannot average 3,785 with one at 34,071: the others sit at the minimum
    assert target_lengths(5, stats, rng) == [stats.max] + [stats.min] * 4


def test_target_lengths_are_right_skewed():
    stats = TABLE1["en"]["report"]
    lengths = np.array(target_lengths(2000, stats, np.random.default_rng(1)))
    assert np.median(lengths) < lengths.mean()
    assert (lengths > 2 * stats.mean).mean() < 0.2


def test_scale_to_total_is_exact_and_bounded():
    draws = np.random.default_rng(3).lognormal(0, 1, 37)
    for total in (37 * 10, 37 * 10 + 1, 1234, 37 * 100 - 1, 37 * 100):
        lengths = scale_to_total(draws, total, 10, 100)
        assert int(lengths.sum()) == total and lengths.min() >= 10 and lengths.max() <= 100


# ---------------------------------------------------------------- texts


def test_compose_is_exact_and_trimmed():
    sentences = ["Short one.", "A second sentence, a little longer.", "Third: 5 mg/kg daily.", "Yes."]
    rng = random.Random(0)
    deck = SentenceDeck(sentences, rng)
    for target in [1, 2, 3, 9, 10, 11, 12, 13, 47, 48, 100, 1000, 5000]:
        text = compose(target, deck, rng)
        assert len(text) == target and text == text.strip()


def test_compose_ends_without_space_even_from_a_single_sentence():
    rng = random.Random(0)
    deck = SentenceDeck(["a b c d e f."], rng)  # a cut at every even length would end on a space
    for target in range(1, 60):
        text = compose(target, deck, rng)
        assert len(text) == target and not text[-1].isspace()


def sample_sentences(lang: str, kind: str) -> set[str]:
    folder = "summaries" if kind == "summary" else "fulltext"
    sentences = set()
    for path in SAMPLE.glob(f"multiclinsum_*_{lang}/{folder}/*.txt"):
        for paragraph in path.read_text(encoding="utf-8").split("\n"):
            sentences.update(s.strip() for s in SENTENCE_BREAK.split(paragraph) if s.strip())
    return sentences


@pytest.mark.parametrize("lang", LANGS)
def test_texts_are_made_of_the_sample_sentences(full_size, lang):
    files = corpus_files(full_size)
    for kind, pattern in (("report", rf"_{lang}/fulltext/"), ("summary", rf"_{lang}/summaries/")):
        known = sample_sentences(lang, kind)
        texts = [text for name, text in files.items() if re.search(pattern, name)]
        assert len(texts) == (592 + 20 if kind == "report" else 592)
        for text in texts:
            *whole, last = [s for p in text.split("\n\n") for s in SENTENCE_BREAK.split(p)]
            assert all(sentence in known for sentence in whole), text[:200]
            assert any(sentence.startswith(last) for sentence in known) or last.endswith(".")
            assert "\n\n\n" not in text and "  " not in text


# ---------------------------------------------------------------- the corpus on disk


@pytest.mark.parametrize("lang", LANGS)
def test_full_size_lengths_follow_table1(full_size, lang):
    files = corpus_files(full_size)
    for kind, pattern in (("report", rf"gs_train_{lang}/fulltext/"), ("summary", rf"gs_train_{lang}/summaries/")):
        stats = TABLE1[lang][kind]
        lengths = lengths_by(files, pattern)
        assert sorted(lengths) == list(range(1, 593))
        assert min(lengths.values()) == stats.min and max(lengths.values()) == stats.max
        assert lengths[1] == stats.max and lengths[2] == stats.min
        assert abs(sum(lengths.values()) / 592 - stats.mean) <= 0.02 * stats.mean


@pytest.mark.parametrize("lang", LANGS)
def test_test_layout_holds_the_longest_report(full_size, lang):
    files = corpus_files(full_size)
    lengths = lengths_by(files, rf"^multiclinsum_test_{lang}/fulltext/multiclinsum_test_\d+_{lang}\.txt$")
    assert sorted(lengths) == list(range(1, 21))
    assert lengths[1] == TABLE1[lang]["report"].max == max(lengths.values())
    assert min(lengths.values()) == TABLE1[lang]["report"].min
    assert not (full_size / f"multiclinsum_test_{lang}" / "summaries").exists()


def test_synthetic_json_matches_the_files(full_size, small):
    for root, counts in ((full_size, {"gold": 592, "test": 20}), (small, {"gold": 6, "test": 3, "large_scale": 5})):
        files, meta = corpus_files(root), json.loads((root / "synthetic.json").read_text())
        assert meta["arguments"]["seed"] == 42 and meta["arguments"]["languages"] == LANGS
        for lang in LANGS:
            for set_name, count in counts.items():
                prefix = {"gold": f"gs_train_{lang}", "test": f"test_{lang}", "large_scale": f"ls_train_{lang}"}[set_name]
                reports = lengths_by(files, rf"{prefix}.*/fulltext/")
                summaries = lengths_by(files, rf"{prefix}.*/summaries/")
                written = meta["languages"][lang][set_name]
                assert written["count"] == count == len(reports)
                assert written["report_chars"] == describe(reports.values())
                assert written["summary_chars"] == (describe(summaries.values()) if summaries else None)


def test_written_corpus_ingests_completely(small, tmp_path):
    manifest = ingest([{"path": str(small), "layout": "multiclinsum"}], LANGS, tmp_path / "ingested")
    files = corpus_files(small)
    for lang in LANGS:
        counts = manifest["languages"][lang]
        assert counts["read"] == counts["written"] == 6 + 3 + 5 and counts["skipped"] == 0
        records = {r["id"]: r for r in read_jsonl(tmp_path / "ingested" / f"{lang}.jsonl")}
        expected = (
            [f"multiclinsum_gs_{lang}_{n}" for n in range(1, 7)]
            + [f"multiclinsum_ls_{lang}_{n}" for n in range(1, 6)]
            + [f"multiclinsum_test_{n}_{lang}" for n in range(1, 4)]
        )
        assert sorted(records) == sorted(expected)
        gs = records[f"multiclinsum_gs_{lang}_1"]
        assert gs["text"] == files[f"multiclinsum_gs_train_{lang}/fulltext/multiclinsum_gs_{lang}_1.txt"]
        assert gs["summary"] == files[f"multiclinsum_gs_train_{lang}/summaries/multiclinsum_gs_{lang}_1_sum.txt"]
        ls = records[f"multiclinsum_ls_{lang}_3"]
        member = f"multiclinsum_ls_train_{lang}.zip!multiclinsum_ls_train_{lang}"
        assert ls["text"] == files[f"{member}/fulltext/multiclinsum_ls_{lang}_3.txt"]
        assert ls["summary"] == files[f"{member}/summaries/multiclinsum_ls_{lang}_3_sum.txt"]
        assert records[f"multiclinsum_test_1_{lang}"]["summary"] is None
        assert len(records[f"multiclinsum_test_1_{lang}"]["text"]) == TABLE1[lang]["report"].max
    assert manifest["totals"]["skipped"] == 0
    assert manifest["ignored_files"] == [str(small / "synthetic.json")]


def test_large_scale_zip_layout(small):
    with zipfile.ZipFile(small / "multiclinsum_ls_train_pt.zip") as archive:
        names = archive.namelist()
    assert len(names) == 10
    assert "multiclinsum_ls_train_pt/fulltext/multiclinsum_ls_pt_5.txt" in names
    assert "multiclinsum_ls_train_pt/summaries/multiclinsum_ls_pt_5_sum.txt" in names
    lengths = lengths_by(corpus_files(small), r"ls_train_pt/summaries/")
    assert lengths[1] == TABLE1["pt"]["summary"].max and lengths[2] == TABLE1["pt"]["summary"].min


def test_same_seed_same_bytes_other_seed_other_texts(tmp_path):
    def run(name: str, seed: int) -> dict[str, bytes]:
        synthesize(SAMPLE, tmp_path / name, ["es", "pt"], gold=4, test=2, large_scale=3, seed=seed)
        return {str(p.relative_to(tmp_path / name)): p.read_bytes() for p in sorted((tmp_path / name).rglob("*")) if p.is_file()}

    first, again, other = run("a", 42), run("b", 42), run("c", 7)
    assert len(first) == 2 * (4 * 2 + 2 + 1) + 1  # pairs, test reports, zips, synthetic.json
    assert first == again
    assert first.keys() == other.keys()
    differing = [name for name in first if first[name] != other[name]]
    assert len(differing) >= len(first) - 1  # every text differs; synthetic.json differs by its seed


def test_rerun_replaces_an_earlier_corpus(tmp_path):
    out = tmp_path / "corpus"
    synthesize(SAMPLE, out, ["en"], gold=3, test=2)
    assert (out / "multiclinsum_test_en").is_dir()
    synthesize(SAMPLE, out, ["en"], gold=2)
    assert sorted(p.name for p in out.iterdir()) == ["multiclinsum_gs_train_en", "synthetic.json"]
    assert len(list((out / "multiclinsum_gs_train_en" / "fulltext").iterdir())) == 2
    assert not list(tmp_path.glob(".corpus.tmp-*"))


# ---------------------------------------------------------------- errors and the command line


def test_missing_sentences_folder(tmp_path):
    with pytest.raises(ClinsumError, match="nowhere: sentences folder not found"):
        synthesize(tmp_path / "nowhere", tmp_path / "out", ["en"], gold=2)


def test_language_without_sentences(tmp_path):
    sample = tmp_path / "sample"
    shutil.copytree(SAMPLE / "multiclinsum_gs_train_en", sample / "multiclinsum_gs_train_en")
    synthesize(sample, tmp_path / "ok", ["en"], gold=2)
    with pytest.raises(ClinsumError, match=r"no report sentences for language 'es'"):
        synthesize(sample, tmp_path / "out", ["en", "es"], gold=2)
    assert not (tmp_path / "out").exists()


def test_reports_without_summaries_name_the_missing_kind(tmp_path):
    folder = tmp_path / "sample" / "multiclinsum_test_fr" / "fulltext"
    folder.mkdir(parents=True)
    (folder / "multiclinsum_test_1_fr.txt").write_text("Une phrase. Une autre phrase.", encoding="utf-8")
    with pytest.raises(ClinsumError, match=r"no summary sentences for language 'fr'"):
        synthesize(tmp_path / "sample", tmp_path / "out", ["fr"], gold=2)


def test_unknown_language_and_foreign_folder(tmp_path):
    with pytest.raises(ClinsumError, match=r"no Table 1 lengths for language\(s\) \['de'\]"):
        synthesize(SAMPLE, tmp_path / "out", ["en", "de"], gold=2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ClinsumError, match="busy: not empty and holds no synthetic.json"):
        synthesize(SAMPLE, tmp_path / "busy", ["en"], gold=2)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_command_line(tmp_path, capsys):
    out = tmp_path / "corpus"
    code = main(["synthetic", "--sentences", str(SAMPLE), "--out", str(out), "--languages", "fr",
                 "--gold", "3", "--test", "1", "--large-scale", "2", "--seed", "5"])
    assert code == 0
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["arguments"] == {"sentences": str(SAMPLE), "languages": ["fr"], "gold": 3, "test": 1,
                                 "large_scale": 2, "seed": 5}
    assert (out / "multiclinsum_ls_train_fr.zip").is_file()
    assert main(["synthetic", "--sentences", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 1
    assert "none: sentences folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synthetic", "--sentences", str(SAMPLE), "--out", str(out), "--gold", "-1"])
    with pytest.raises(SystemExit):
        main(["synthetic", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--sentences", "--out", "--languages", "--gold", "--test", "--large-scale", "--seed"):
        assert flag in help_text
