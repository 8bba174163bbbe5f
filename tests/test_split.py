import pytest

from clinsum.io import ClinsumError
from clinsum.split import SPLITS, assign_split, split_documents, unit_hash

FRACTIONS = {"train": 0.80, "valid": 0.01, "test": 0.19}


def docs(n, prefix="doc", reference=True):
    return [(f"{prefix}_{i}", reference) for i in range(n)]


def test_fractions_are_close_on_a_large_corpus():
    result = split_documents(docs(20000), FRACTIONS, seed=42)
    sizes = {name: len(ids) for name, ids in result.items()}
    assert sum(sizes.values()) == 20000
    assert abs(sizes["train"] / 20000 - 0.80) < 0.01
    assert abs(sizes["valid"] / 20000 - 0.01) < 0.003
    assert abs(sizes["test"] / 20000 - 0.19) < 0.01


def test_every_document_in_exactly_one_split_and_deterministic():
    documents = docs(500)
    first = split_documents(documents, FRACTIONS, seed=42)
    again = split_documents(list(reversed(documents)), FRACTIONS, seed=42)
    all_ids = [i for name in SPLITS for i in first[name]]
    assert sorted(all_ids) == sorted(d for d, _ in documents)
    assert {n: set(v) for n, v in first.items()} == {n: set(v) for n, v in again.items()}


def test_adding_documents_never_moves_an_existing_one():
    before = split_documents(docs(600), FRACTIONS, seed=42)
    after = split_documents(docs(600) + docs(400, prefix="new"), FRACTIONS, seed=42)
    assert all(before[name] and after[name] for name in SPLITS)  # natural members in every split
    for name in SPLITS:
        assert set(before[name]) <= set(after[name])


def test_seed_changes_the_split():
    a = split_documents(docs(300), FRACTIONS, seed=1)
    b = split_documents(docs(300), FRACTIONS, seed=2)
    assert a["train"] != b["train"]
    assert unit_hash("x", 1) != unit_hash("x", 2)
    assert 0 <= unit_hash("x", 1) < 1


@pytest.mark.parametrize("n", [3, 4, 5, 12, 17])
def test_small_languages_get_every_split(n):
    for seed in range(20):
        result = split_documents(docs(n), FRACTIONS, seed=seed)
        assert all(len(result[name]) >= 1 for name in SPLITS), (n, seed, result)
        assert sum(len(v) for v in result.values()) == n


def test_two_documents_cannot_fill_three_splits():
    result = split_documents(docs(2), FRACTIONS, seed=42)
    assert sum(len(v) for v in result.values()) == 2


def test_test_layout_documents_always_go_to_test():
    documents = docs(50) + docs(10, prefix="multiclinsum_test", reference=False)
    result = split_documents(documents, FRACTIONS, seed=42)
    for doc_id, has_reference in documents:
        if not has_reference:
            assert doc_id in result["test"]
    assert all(result[name] for name in SPLITS)


def test_fractions_must_sum_to_one():
    with pytest.raises(ClinsumError, match="sum to 1"):
        assign_split("a", 42, {"train": 0.8, "valid": 0.1, "test": 0.2})


def test_a_test_set_report_goes_to_test_with_its_gold_or_without(tmp_path):
    from clinsum.io import write_jsonl
    from clinsum.split import split_language

    corpus = tmp_path / "ca.jsonl"
    documents = [{"id": f"multiclinsum2_train_{n}_ca", "lang": "ca", "text": "r", "summary": "s"} for n in range(1, 120)]
    documents += [{"id": f"multiclinsum2_test_{n}_ca", "lang": "ca", "text": "r", "summary": "gold" if n < 3 else None,
                   "test_set": True} for n in range(1, 5)]
    write_jsonl(corpus, documents)
    for method in ("hash", "paper_code"):
        result = split_language(corpus, tmp_path / f"{method}.json", "ca", FRACTIONS, 42, method, "number")
        tests = [d for d in result["test"] if "_test_" in d]
        assert sorted(tests) == [f"multiclinsum2_test_{n}_ca" for n in range(1, 5)], method
        assert not any("_test_" in d for d in result["train"] + result["valid"]), method
