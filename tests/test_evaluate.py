"""`clinsum evaluate`: per-document scores under a scoring protocol, faithfulness fields, means and counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clinsum import evaluate, faithfulness, metrics
from clinsum.io import ClinsumError, read_json, write_jsonl

REPO = Path(__file__).resolve().parents[1]
# The paper's protocol with the offline encoder in place of distilbert-base-uncased (an override).
SETTINGS = {"protocol": "paper", "bertscore": {"model": "all-minilm-l6-v2", "num_layers": 6, "batch_size": 4}}


def prediction(doc_id, text, reference, lang="es", finish_reason="stop", **extra):
    return {"id": doc_id, "lang": lang, "prediction": text, "reference": reference, "finish_reason": finish_reason, **extra}


# the embedded default's Spanish `distil` loop
LOOP = "Paciente de 70 años. La necesidad" + " de la necesidad" * 12
RECORDS = [
    # a planted unsupported dose: the report gives 500 mg, the summary 750 mg (and 2.5 mg as the report's 2,5 mg)
    prediction("multiclinsum_gs_es_1", "El paciente tenía fiebre y tos; recibió 750 mg de amoxicilina y 2.5 mg de warfarina.",
               "Paciente con fiebre, tos y disnea."),
    prediction("multiclinsum_gs_es_2", "", "Mujer de 45 años con dolor torácico.", input_truncated=True),
    prediction("multiclinsum_gs_es_3", "Dolor torácico.\nECG normal.", "Dolor torácico con ECG normal.", fp32_fallback=True),
    prediction("multiclinsum_gs_es_4", LOOP, "Paciente de 70 años con neumonía.", finish_reason="length"),
    prediction("multiclinsum_test_1_es", "Resumen sin referencia.", None),
    prediction("multiclinsum_test_2_es", "Otro resumen.", None),
]
REPORTS = {
    "multiclinsum_gs_es_1": "Varón con fiebre y tos. Recibió amoxicilina 500 mg cada 8 horas y warfarina 2,5 mg.",
    "multiclinsum_gs_es_2": "Mujer de 45 años con dolor torácico de 2 horas de evolución.",
    "multiclinsum_gs_es_3": "Dolor torácico opresivo. El ECG fue normal.",
    "multiclinsum_gs_es_4": "Paciente de 70 años con neumonía adquirida en la comunidad.",
    "multiclinsum_test_1_es": "Informe de prueba.",
    "multiclinsum_test_2_es": "Otro informe.",
}


def write_inputs(directory: Path, records=RECORDS, reports=REPORTS, lang="es") -> tuple[Path, Path]:
    write_jsonl(directory / f"{lang}.jsonl", records)
    write_jsonl(directory / "corpus.jsonl", [{"id": i, "lang": lang, "text": t} for i, t in reports.items()])
    return directory / f"{lang}.jsonl", directory / "corpus.jsonl"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, bertscore_encoder_dir):
    tmp = tmp_path_factory.mktemp("eval")
    predictions, corpus = write_inputs(tmp)
    out = tmp / "eval" / "standard" / "es.json"
    evaluate.evaluate_file(predictions, corpus, out, SETTINGS, bertscore_encoder_dir, "standard", "es", device="cpu")
    return read_json(out)


def test_counts_and_provenance(evaluated, bertscore_encoder_dir):
    assert evaluated["model"] == "standard" and evaluated["lang"] == "es"
    assert evaluated["n"] == 4
    assert evaluated["n_unscored"] == 2
    assert evaluated["unscored_ids"] == ["multiclinsum_test_1_es", "multiclinsum_test_2_es"]
    assert evaluated["n_empty_predictions"] == 1
    assert evaluated["n_input_truncated"] == 1 and evaluated["n_fp32_fallback"] == 1
    assert evaluated["rouge"] == {"tokenizer": "default", "use_stemmer": False, "lsum_sentences": "newline-separated lines"}
    assert evaluated["bertscore"]["model"] == "all-minilm-l6-v2"
    assert evaluated["bertscore"]["path"] == str(bertscore_encoder_dir)
    assert evaluated["bertscore"]["num_layers"] == 6
    assert evaluated["bertscore"]["rescale_with_baseline"] is False
    assert evaluated["bertscore"]["max_tokens"] is None and evaluated["bertscore"]["clamp_f1"] is False
    protocol = evaluated["protocol"]
    assert protocol["name"] == "paper" and protocol["headline"] == "rougeLsum_f"
    assert protocol["overrides"] == [
        {"part": "bertscore.model", "value": "all-minilm-l6-v2", "protocol": "distilbert/distilbert-base-uncased"},
        {"part": "bertscore.num_layers", "value": 6, "protocol": 5},
    ]


def test_per_document_scores_and_means(evaluated):
    documents = evaluated["documents"]
    assert [doc["id"] for doc in documents] == [f"multiclinsum_gs_es_{i}" for i in range(1, 5)]
    scored = RECORDS[:4]
    rouge = metrics.rouge_scores([r["prediction"] for r in scored], [r["reference"] for r in scored])
    for doc, expected in zip(documents, rouge):
        assert set(doc) == {"id", *metrics.ROUGE_KEYS, *metrics.BERTSCORE_KEYS, *faithfulness.FIELDS}
        for key, value in expected.items():
            assert doc[key] == pytest.approx(value)
    empty = documents[1]
    assert all(empty[key] == 0.0 for key in (*metrics.ROUGE_KEYS, *metrics.BERTSCORE_KEYS))
    assert 0.5 < documents[0]["bertscore_f"] < 1.0
    for key in (*metrics.ROUGE_KEYS, *metrics.BERTSCORE_KEYS, "novel_bigram_rate", "compression"):
        assert evaluated["means"][key] == pytest.approx(sum(doc[key] for doc in documents) / 4)


def test_planted_unsupported_dose_is_counted(evaluated):
    first = evaluated["documents"][0]
    # 750 mg is not in the report; 2.5 mg is the report's "2,5 mg"
    assert first["n_numbers"] == 2 and first["n_unsupported_numbers"] == 1
    assert first["unsupported_numbers"] == ["750 mg"]
    assert evaluated["documents"][2]["n_numbers"] == 0
    # 1 unsupported of 3 numbers (750, 2.5, and the loop's 70, which its report has)
    assert evaluated["means"]["unsupported_number_rate"] == pytest.approx(1 / 3)
    assert evaluated["means"]["n_unsupported_numbers"] == pytest.approx(1 / 4)


def test_degenerate_summaries_are_flagged_and_counted(evaluated):
    flags = [(doc["degenerate"], doc["degenerate_reason"]) for doc in evaluated["documents"]]
    assert flags[0] == (False, None) and flags[2] == (False, None)
    assert flags[1] == (True, "empty output")
    assert flags[3][0] and flags[3][1].startswith("loop: 'la necesidad de'")
    assert evaluated["n_degenerate"] == 2
    assert evaluated["degenerate_kinds"] == {"empty": 1, "characters": 0, "loop": 1, "cut": 0}
    assert evaluated["means"]["degenerate"] == pytest.approx(0.5)


def test_best_and_worst_examples(evaluated):
    examples = evaluated["examples"]
    assert examples["metric"] == "rougeLsum_f"
    scores = {doc["id"]: doc["rougeLsum_f"] for doc in evaluated["documents"]}
    assert examples["best"]["id"] == max(scores, key=scores.get)
    assert examples["worst"]["id"] == "multiclinsum_gs_es_2"  # the empty prediction scores 0
    assert examples["worst"]["degenerate_reason"] == "empty output"
    best = next(r for r in RECORDS if r["id"] == examples["best"]["id"])
    assert examples["best"]["prediction"] == best["prediction"] and examples["best"]["reference"] == best["reference"]


def test_tied_scores_still_give_two_examples():
    documents = [{"id": f"d{i}", "rougeLsum_f": 0.0, "degenerate_reason": None, "unsupported_numbers": []} for i in range(3)]
    records = [{"id": f"d{i}", "prediction": "", "reference": "r"} for i in range(3)]
    examples = evaluate.best_and_worst(records, documents, "rougeLsum_f")
    assert (examples["best"]["id"], examples["worst"]["id"]) == ("d0", "d2")
    one = evaluate.best_and_worst(records[:1], documents[:1], "rougeLsum_f")
    assert one["best"]["id"] == one["worst"]["id"] == "d0"


def test_multiclinsum2026_equals_the_organisers_settings(tmp_path, bertscore_encoder_dir):
    """The organisers' ROUGE (rouge-score, ROUGE-1/2/Lsum F1, no stemmer, default tokenizer, per document,
    averaged) and BERTScore (the same encoder and layer, no rescaling, inputs cut at 512 tokens, F1 clamped)."""
    from rouge_score import rouge_scorer

    predictions, corpus = write_inputs(tmp_path)
    settings = {"protocol": "multiclinsum2026", "bertscore": {"model": "all-minilm-l6-v2", "batch_size": 4}}
    result = evaluate.evaluate_file(
        predictions, corpus, tmp_path / "out.json", settings, bertscore_encoder_dir, "distil", "es", device="cpu"
    )
    scored = [r for r in RECORDS if r["reference"] is not None]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=False)
    direct = [scorer.score(target=r["reference"], prediction=r["prediction"]) for r in scored]
    for kind in ("rouge1", "rouge2", "rougeLsum"):
        expected = sum(pair[kind].fmeasure for pair in direct) / len(direct)
        assert abs(result["means"][f"{kind}_f"] - expected) < 1e-6
    # the organisers' call: their encoder and layers (here the override's), inputs cut at 512, F1 clamped;
    # metrics.bertscore equals bert-score's own numbers (tests/test_bertscore_fixtures.py)
    rows = metrics.bertscore(
        [r["prediction"] for r in scored], [r["reference"] for r in scored], str(bertscore_encoder_dir),
        num_layers=6, max_tokens=512, clamp=True,
    )
    for doc, row in zip(result["documents"], rows):
        assert abs(doc["bertscore_f"] - row["bertscore_f"]) < 1e-6
        assert 0.0 <= doc["bertscore_f"] <= 1.0
    assert result["bertscore"]["num_layers"] == 6  # the override's own layer count, not the protocol's 12
    assert result["bertscore"]["max_tokens"] == 512 and result["bertscore"]["clamp_f1"] is True
    assert [item["part"] for item in result["protocol"]["overrides"]] == ["bertscore.model", "bertscore.num_layers"]
    assert result["protocol"]["official"] == ["rouge1_f", "rouge2_f", "rougeLsum_f", "bertscore_f"]


def test_only_unscored_documents(tmp_path, bertscore_encoder_dir):
    predictions, corpus = write_inputs(
        tmp_path, [prediction("multiclinsum_test_1_en", "A summary.", None, lang="en")], {}, lang="en"
    )
    result = evaluate.evaluate_file(
        predictions, corpus, tmp_path / "out.json", SETTINGS, bertscore_encoder_dir, "base", "en", device="cpu"
    )
    assert result["n"] == 0 and result["n_unscored"] == 1 and result["means"] == {} and result["documents"] == []
    assert result["examples"] is None and result["n_degenerate"] == 0


def test_a_predicted_document_missing_from_the_corpus_is_named(tmp_path, bertscore_encoder_dir):
    predictions, corpus = write_inputs(tmp_path, RECORDS[:2], {"multiclinsum_gs_es_1": "Informe."})
    with pytest.raises(ClinsumError, match=r"corpus.jsonl: 1 document\(s\) asked for are not in the corpus"):
        evaluate.evaluate_file(predictions, corpus, tmp_path / "o.json", SETTINGS, bertscore_encoder_dir, "m", "es")


@pytest.mark.parametrize(
    "records, message",
    [
        ([prediction("a", "x", "y"), prediction("a", "x", "y")], "document a: duplicate id"),
        ([prediction("a", None, "y")], '"prediction" must be a string'),
        ([{"id": "a", "lang": "es", "prediction": "x"}], '"reference" must be a string or null'),
        ([prediction("a", "x", "y", lang="en")], "lang 'en' in a file for 'es'"),
        ([{"lang": "es", "prediction": "x", "reference": "y"}], 'record 1: missing or non-string "id"'),
    ],
)
def test_bad_predictions_name_the_file(tmp_path, records, message):
    path = tmp_path / "es.jsonl"
    write_jsonl(path, records)
    with pytest.raises(ClinsumError, match=message) as error:
        evaluate.load_predictions(path, "es")
    assert str(path) in str(error.value)


def test_num_layers_resolution(tmp_path, bertscore_encoder_dir):
    assert metrics.resolve_num_layers("anything", bertscore_encoder_dir, 3) == 3
    # bert-score's own choice for the paper's model, as `evaluate`'s bertscore used it.
    assert metrics.resolve_num_layers("distilbert-base-uncased", tmp_path, None) == 5
    assert metrics.resolve_num_layers("all-minilm-l6-v2", bertscore_encoder_dir, None) == 6
    with pytest.raises(ClinsumError, match="config.json"):
        metrics.resolve_num_layers("unknown", tmp_path, None)


def test_bad_settings_and_model_dir(tmp_path, bertscore_encoder_dir):
    predictions, corpus = write_inputs(tmp_path, RECORDS[:1])
    for settings, message in (
        ({**SETTINGS, "rouge_tokenizer": "x"}, "rouge_tokenizer"),
        ({**SETTINGS, "protocol": "rouge2004"}, "'rouge2004' is not one of"),
        ({"protocol": "paper", "bertscore": {"model": "x", "batch_size": 0}}, "batch_size: 0 is less than the minimum of 1"),
    ):
        with pytest.raises(ClinsumError, match=message):
            evaluate.evaluate_file(predictions, corpus, tmp_path / "o.json", settings, bertscore_encoder_dir, "m", "es")
    with pytest.raises(ClinsumError, match="not a model directory"):
        evaluate.evaluate_file(predictions, corpus, tmp_path / "o.json", SETTINGS, tmp_path, "m", "es")
    # what a section leaves out comes from the schema: the paper's protocol, 16 texts a BERTScore batch
    resolved = evaluate.resolve_settings({"bertscore": {"model": "x"}}, "es", bertscore_encoder_dir)
    assert resolved["protocol"] == "paper" and resolved["bertscore"]["batch_size"] == 16


def cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "workflow")}
    return subprocess.run([sys.executable, "-m", "clinsum.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_cli_offline_multilingual(tmp_path, bertscore_encoder_dir):
    write_inputs(tmp_path)
    settings = {**SETTINGS, "rouge_tokenizer": "multilingual"}
    args = ["evaluate", "--predictions", "es.jsonl", "--corpus", "corpus.jsonl", "--model", "distil", "--lang", "es",
            "--settings", json.dumps({"evaluate": settings}), "--bertscore-model", str(bertscore_encoder_dir), "--device", "cpu",
            "--threads", "1", "--out", "out/es.json"]
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = read_json(tmp_path / "out" / "es.json")
    assert result["rouge"]["tokenizer"] == "multilingual" and result["n"] == 4
    assert {"part": "rouge_tokenizer", "value": "multilingual", "protocol": "default"} in result["protocol"]["overrides"]
    expected = metrics.rouge_scores([RECORDS[0]["prediction"]], [RECORDS[0]["reference"]], tokenizer="multilingual")[0]
    assert result["documents"][0]["rouge1_f"] == pytest.approx(expected["rouge1_f"])

    (tmp_path / "bad.jsonl").write_text('{"id": "a", "lang": "es", "prediction": "x", "reference": "y"}\n{not json\n')
    done = cli(*(["evaluate", "--predictions", "bad.jsonl"] + args[3:]), cwd=tmp_path)
    assert done.returncode == 1
    assert "clinsum evaluate: error: bad.jsonl:2: invalid JSON" in done.stderr
