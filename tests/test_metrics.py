"""Metric values against direct rouge-score calls on fixed strings; BERTScore's options (bert-score's own
numbers are in tests/test_bertscore_fixtures.py)."""

from __future__ import annotations


import pytest
from rouge_score import rouge_scorer, tokenize

from clinsum import metrics

PREDICTIONS = [
    "The patient presented with fever and cough.\nHe was treated with antibiotics.",
    "A 45-year-old woman had chest pain; the ECG was normal.",
]
REFERENCES = [
    "A patient had fever, cough and dyspnea.\nAntibiotics were given and he recovered.",
    "The ECG of the 45-year-old woman with chest pain was normal.",
]


def test_rouge_matches_rouge_score_default_tokenizer():
    rows = metrics.rouge_scores(PREDICTIONS, REFERENCES)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    assert len(rows) == 2
    for row, prediction, reference in zip(rows, PREDICTIONS, REFERENCES):
        expected = scorer.score(reference, prediction)
        assert set(row) == set(metrics.ROUGE_KEYS)
        for kind in metrics.ROUGE_TYPES:
            assert row[f"{kind}_p"] == pytest.approx(expected[kind].precision, abs=1e-12)
            assert row[f"{kind}_r"] == pytest.approx(expected[kind].recall, abs=1e-12)
            assert row[f"{kind}_f"] == pytest.approx(expected[kind].fmeasure, abs=1e-12)


def test_rouge_lsum_splits_on_newlines():
    row = metrics.rouge_scores(PREDICTIONS[:1], REFERENCES[:1])[0]
    # Two lines each: the summary-level LCS differs from the single-sequence LCS.
    assert row["rougeLsum_f"] != pytest.approx(row["rougeL_f"])
    joined = metrics.rouge_scores([PREDICTIONS[0].replace("\n", " ")], [REFERENCES[0].replace("\n", " ")])[0]
    assert joined["rougeLsum_f"] == pytest.approx(joined["rougeL_f"])


def test_rouge_hand_computed_values():
    row = metrics.rouge_scores(["the cat sat"], ["the cat sat on the mat"])[0]
    assert row["rouge1_p"] == 1.0
    assert row["rouge1_r"] == pytest.approx(3 / 6)
    assert row["rouge1_f"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert row["rouge2_p"] == 1.0 and row["rouge2_r"] == pytest.approx(2 / 5)


def test_default_tokenizer_drops_accented_letters_multilingual_keeps_them():
    text = "El niño tenía fiebre"
    assert tokenize.tokenize(text, None) == ["el", "ni", "o", "ten", "a", "fiebre"]
    assert metrics.MultilingualTokenizer().tokenize(text) == ["el", "niño", "tenía", "fiebre"]
    # "niño" and "niña" share the fragment "ni" under the default tokenizer: a spurious match.
    default = metrics.rouge_scores(["niño"], ["niña"], tokenizer="default")[0]
    multilingual = metrics.rouge_scores(["niño"], ["niña"], tokenizer="multilingual")[0]
    assert default["rouge1_f"] == pytest.approx(0.5)
    assert multilingual["rouge1_f"] == 0.0


def test_multilingual_matches_rouge_score_with_that_tokenizer():
    prediction, reference = "Diagnóstico: neumonía adquirida.", "Se confirmó el diagnóstico de neumonía."
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], tokenizer=metrics.MultilingualTokenizer())
    expected = scorer.score(reference, prediction)
    row = metrics.rouge_scores([prediction], [reference], tokenizer="multilingual")[0]
    assert row["rouge1_f"] == pytest.approx(expected["rouge1"].fmeasure)
    assert row["rougeL_f"] == pytest.approx(expected["rougeL"].fmeasure)
    assert row["rouge1_p"] == pytest.approx(2 / 3)  # diagnóstico, neumonía of 3 tokens


def test_empty_prediction_scores_zero():
    row = metrics.rouge_scores([""], ["fever and cough"])[0]
    assert all(value == 0.0 for value in row.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.rouge_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unknown ROUGE tokenizer"):
        metrics.rouge_scores(["a"], ["a"], tokenizer="nltk")


def test_mean_scores_skips_non_numeric():
    rows = [{"id": "a", "x": 1.0, "y": 0.0}, {"id": "b", "x": 0.0, "y": 0.5}]
    assert metrics.mean_scores(rows) == {"x": 0.5, "y": 0.25}
    assert metrics.mean_scores([]) == {}


def test_bertscore_with_a_local_model(bertscore_encoder_dir):
    """Per-document rows; equality to bert-score itself is tests/test_bertscore_fixtures.py's."""
    predictions = PREDICTIONS + ["", "El paciente tenía fiebre."]
    references = REFERENCES + ["fever", "El paciente tenía fiebre."]
    rows = metrics.bertscore(predictions, references, str(bertscore_encoder_dir), num_layers=6, batch_size=4)
    assert len(rows) == 4
    for row in rows:
        assert set(row) == set(metrics.BERTSCORE_KEYS)
    # Raw cosine scores (no baseline rescaling): unrelated texts still score well above 0.
    assert 0.3 < rows[0]["bertscore_f"] < 0.99
    assert rows[2] == {"bertscore_p": 0.0, "bertscore_r": 0.0, "bertscore_f": 0.0}
    assert rows[3]["bertscore_f"] == pytest.approx(1.0, abs=1e-5)
    # the batch size changes how texts are padded together, not the scores
    one_by_one = metrics.bertscore(predictions, references, str(bertscore_encoder_dir), num_layers=6, batch_size=1)
    for row, alone in zip(rows, one_by_one):
        for key in metrics.BERTSCORE_KEYS:
            assert row[key] == pytest.approx(alone[key], abs=1e-6)


def test_bertscore_of_nothing_is_empty(bertscore_encoder_dir):
    assert metrics.bertscore([], [], str(bertscore_encoder_dir), num_layers=6) == []


def test_bertscore_truncates_inputs_to_max_tokens(bertscore_encoder_dir):
    """With max_tokens, only the first tokens count: texts that differ after them score the same."""
    head = "The patient presented with fever, cough and dyspnea and was treated with antibiotics. " * 2
    predictions = [head + "She recovered fully.", head + "Metastatic carcinoma was found at autopsy."]
    references = [REFERENCES[0]] * 2
    cut = metrics.bertscore(predictions, references, str(bertscore_encoder_dir), num_layers=6, max_tokens=16)
    assert cut[0] == cut[1]
    whole = metrics.bertscore(predictions, references, str(bertscore_encoder_dir), num_layers=6)
    assert whole[0]["bertscore_f"] != pytest.approx(whole[1]["bertscore_f"], abs=1e-4)
    # a limit above the encoder's own (512) changes nothing
    assert metrics.bertscore(predictions, references, str(bertscore_encoder_dir), num_layers=6, max_tokens=4096) == whole


def test_bertscore_clamps_f1_only_when_asked(monkeypatch):
    """MultiClinSum-2's scorer clips F1 to [0, 1]; raw cosine F1 can leave it (a stub encoder and matcher
    show both sides)."""
    import torch

    class StubEncoder:
        def __init__(self, *args):
            pass

        def embed(self, texts):
            return [(torch.zeros(1, 1), torch.ones(1)) for _ in texts]

    monkeypatch.setattr(metrics, "_Encoder", StubEncoder)
    monkeypatch.setattr(
        metrics, "_greedy_match",
        lambda hyps, refs: (torch.tensor([0.9, 0.1]), torch.tensor([0.9, 0.1]), torch.tensor([1.25, -0.5])),
    )
    raw = metrics.bertscore(["a", "b"], ["a", "b"], "stub", num_layers=1)
    clamped = metrics.bertscore(["a", "b"], ["a", "b"], "stub", num_layers=1, clamp=True)
    assert [row["bertscore_f"] for row in raw] == [1.25, -0.5]
    assert [row["bertscore_f"] for row in clamped] == [1.0, 0.0]
    assert [row["bertscore_p"] for row in clamped] == pytest.approx([0.9, 0.1])
