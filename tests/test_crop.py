import json

import pytest

from clinsum.chat import build_messages, encode_example, encode_prompt
from clinsum.chat import crop_answer, crop_prompt, crop_to_tokens
from clinsum.crop import crop_corpus
from clinsum.ingest import ingest
from clinsum.io import read_json, read_jsonl
from clinsum.split import split_language

from conftest import SAMPLE

TEXTS = [
    "Paciente de 54 años con dolor torácico opresivo; troponina elevada (2,4 ng/mL). Se realizó angioplastia.",
    "Relatamos o caso de uma mulher de 38 anos com cefaleia, febre e rigidez de nuca; punção lombar: pleocitose.",
    "Nous rapportons le cas d'une patiente âgée présentant une dyspnée brutale — TDM : embolie pulmonaire.",
    "🙂 emoji, ñ, ç, ã, é: mixed scripts 日本語 テキスト and numbers 37.8 °C " * 3,
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("limit", [1, 5, 17, 40])
def test_crop_to_tokens_is_a_prefix_within_bounds(tokenizer, text, limit):
    cropped = crop_to_tokens(tokenizer, text, limit)
    assert text.startswith(cropped)
    assert "\ufffd" not in cropped
    assert len(tokenizer(cropped, add_special_tokens=False)["input_ids"]) <= limit
    full = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if full <= limit:
        assert cropped == text
    else:
        # as long as possible: one more token of the original would not fit
        assert len(cropped) > 0 or limit < 3


@pytest.mark.parametrize("role", ["system", "user"])
@pytest.mark.parametrize("budget", [40, 64, 100])
def test_prompt_and_answer_budgets_with_chat_template(tokenizer, role, budget):
    text = " ".join(TEXTS) * 4
    report = crop_prompt(tokenizer, "Summarize clinical text", text, budget, role)
    assert text.startswith(report) and report
    prompt_ids = encode_prompt(tokenizer, build_messages("Summarize clinical text", report, role=role))
    assert len(prompt_ids) <= budget
    # one more word would not fit: the budget is used, not wasted
    longer = text[: len(report) + 12]
    longer_ids = encode_prompt(tokenizer, build_messages("Summarize clinical text", longer, role=role))
    assert len(longer_ids) > budget
    answer = crop_answer(tokenizer, text, 24, role)
    _, answer_ids = encode_example(tokenizer, build_messages("x", "x", answer, role=role))
    assert len(answer_ids) <= 24 and text.startswith(answer)
    assert tokenizer.decode(answer_ids[-2:]) == "<|im_end|>\n"


def test_crop_stage_on_sample_corpus(tmp_path, tiny_dir):
    languages = ["en", "es", "fr", "pt"]
    ingest([{"path": str(SAMPLE), "layout": "multiclinsum"}], languages, tmp_path / "corpus")
    for lang in languages:
        split_language(tmp_path / "corpus" / f"{lang}.jsonl", tmp_path / "split" / f"{lang}.json", lang,
                       {"train": 0.8, "valid": 0.01, "test": 0.19}, 42)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for lang in languages:
        split = read_json(tmp_path / "split" / f"{lang}.json")
        with open(teacher / f"{lang}.jsonl", "w") as handle:
            for doc_id in split["train"] + split["valid"]:
                handle.write(json.dumps({"id": doc_id, "lang": lang, "key_info": "Key: fever, cough. " * 30,
                                         "token_ids": list(range(100)), "finish_reason": "stop"}) + "\n")
    settings = {
        "prompt_tokens": 200, "answer_tokens": 40, "role": "system",
        "extract": "Extract the key information from clinical text",
        "summarize": {"en": "Summarize clinical text", "es": "Resumir el texto clínico",
                      "fr": "Résumer le texte clinique", "pt": "Resumir texto clínico"},
        "train_summarize": None,
    }
    crop_corpus(tmp_path / "corpus", tmp_path / "split", languages, tiny_dir, settings, tmp_path / "data", teacher)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    corpus = {r["id"]: r for lang in languages for r in read_jsonl(tmp_path / "corpus" / f"{lang}.jsonl")}
    for name in ("train", "valid"):
        records = list(read_jsonl(tmp_path / "data" / f"{name}.jsonl"))
        expected = sum(len(read_json(tmp_path / "split" / f"{lang}.json")[name]) for lang in languages)
        assert len(records) == 2 * expected  # both tasks for every document
        for record in records:
            prompt_ids, answer_ids = encode_example(tokenizer, record["messages"])
            assert len(prompt_ids) == record["prompt_tokens"] <= 200
            assert len(answer_ids) == record["answer_tokens"] <= 40
            source = corpus[record["id"]]
            assert source["text"].startswith(record["messages"][1]["content"])
            if record["task"] == "summarize":
                assert source["summary"].startswith(record["messages"][2]["content"])
                assert record["messages"][0]["content"] == settings["summarize"][record["lang"]]
            else:
                assert record["messages"][0]["content"] == settings["extract"]
                assert record["teacher_token_ids"] == list(range(40))
    stats = (tmp_path / "data" / "stats.md").read_text()
    assert "| all | 44 | 4 | 20 | 68 |" in stats
    assert "Table 2" in stats and "Table 3" in stats
