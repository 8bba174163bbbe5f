"""clinsum's BERTScore equals bert-score 0.3.13 on transformers 4.57, recorded in tests/fixtures/bertscore/.

The fixture holds bert-score's own P/R/F1 for multilingual pairs (accents, Cyrillic, Greek, empty and blank
predictions, an identical pair, texts over 512 tokens) under each protocol's options (layer, max_tokens
truncation, clamp, batch size), with the embedded default's encoder (all-MiniLM-L6-v2) and two encoders of
random weights rebuilt from a seed (a DeBERTa-v2 with a SentencePiece tokenizer, shaped as mDeBERTa-v3; a
BERT). `record.py` beside it recorded them; this test recomputes them with whatever transformers is installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from clinsum import metrics

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bertscore"
sys.path.insert(0, str(FIXTURES))
import encoders  # noqa: E402

EXPECTED = json.loads((FIXTURES / "expected.json").read_text("utf-8"))
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def encoder_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bertscore-encoders")


def test_the_fixture_was_recorded_with_bert_score_itself():
    assert EXPECTED["recorded_with"]["bert_score"] == "0.3.13"
    assert EXPECTED["recorded_with"]["transformers"].startswith("4.")
    assert set(EXPECTED["cases"]) == set(encoders.CASES)
    for name, case in EXPECTED["cases"].items():
        assert len(case["rows"]) == len(encoders.PAIRS), name


@pytest.mark.parametrize("name", sorted(encoders.CASES))
def test_bertscore_equals_bert_score_0_3_13(name, encoder_root):
    case = EXPECTED["cases"][name]
    model_dir = encoders.encoder_dir(case["encoder"], encoder_root)
    rows = metrics.bertscore(
        [p for p, _ in encoders.PAIRS], [r for _, r in encoders.PAIRS], str(model_dir), case["num_layers"],
        case["batch_size"], "cpu", max_tokens=case["max_tokens"], clamp=case["clamp"],
    )
    assert len(rows) == len(case["rows"])
    for index, (row, expected) in enumerate(zip(rows, case["rows"])):
        for key, part in (("bertscore_p", "p"), ("bertscore_r", "r"), ("bertscore_f", "f")):
            assert abs(row[key] - expected[part]) <= TOLERANCE, (name, index, key, row[key], expected[part])
    if "organisers_f" in case:
        # MultiClinSum-2's scorer (its patched bert-score call) gave the same F1 for every non-empty prediction
        for row, theirs, (prediction, _) in zip(rows, case["organisers_f"], encoders.PAIRS):
            if prediction.strip():
                assert abs(row["bertscore_f"] - theirs) <= TOLERANCE


def test_truncation_is_what_makes_the_long_texts_score_alike():
    """The fixture can tell truncation apart: the two long texts differ only after their first 512 tokens."""
    long_a, long_b = (index for index, (p, _) in enumerate(encoders.PAIRS) if p in (encoders.LONG_A, encoders.LONG_B))
    for name, case in EXPECTED["cases"].items():
        rows = case["rows"]
        assert rows[long_a]["f"] == pytest.approx(rows[long_b]["f"], abs=1e-7), name
    # and the texts are indeed long: more than 512 pieces for every encoder's tokenizer
    assert len(encoders.LONG_A.split()) > 600
