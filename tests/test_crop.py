import random
import statistics
import unicodedata

import pytest

from clinsum.chat import ChatCropper, _looks_left, build_messages, crop_example, encode_example, encode_prompt
from clinsum.chat import crop_answer, crop_prompt, crop_to_tokens, encode_prompts
from clinsum.crop import Spread, crop_corpus
from clinsum.crop import crop_settings as crop_stage_settings
from clinsum.ingest import ingest
from clinsum.io import ClinsumError, JsonlIndex, read_json, read_jsonl, write_jsonl
from clinsum.split import split_language
from clinsum.synthetic import synthesize

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


LANGUAGES = ["en", "es", "fr", "pt"]


def crop_settings(prompt_tokens: int, answer_tokens: int, role: str = "system", **crop) -> dict:
    """Crop's flat settings as the rule's --settings give them (the schema fills the rest)."""
    return crop_stage_settings({
        "crop": {"prompt_tokens": prompt_tokens, "answer_tokens": answer_tokens, **crop},
        "prompts": {
            "role": role, "extract": "Extract the key information from clinical text",
            "summarize": {"en": "Summarize clinical text", "es": "Resumir el texto clínico",
                          "fr": "Résumer le texte clinique", "pt": "Resumir texto clínico"},
            "train_summarize": None,
        },
    })


def prepare(tmp_path, source, key_info=lambda i: "Key: fever, cough. " * 30) -> None:
    """corpus/, split/ and teacher/ (key information of every train/valid document) under tmp_path."""
    ingest([{"path": str(source), "layout": "multiclinsum"}], LANGUAGES, tmp_path / "corpus")
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    for lang in LANGUAGES:
        split_language(tmp_path / "corpus" / f"{lang}.jsonl", tmp_path / "split" / f"{lang}.json", lang,
                       {"train": 0.8, "valid": 0.01, "test": 0.19}, 42, "hash", "number")
        split = read_json(tmp_path / "split" / f"{lang}.json")
        write_jsonl(teacher / f"{lang}.jsonl", [
            {"id": doc_id, "lang": lang, "key_info": key_info(i), "token_ids": list(range(100)), "finish_reason": "stop"}
            for i, doc_id in enumerate(reversed(split["train"] + split["valid"]))  # not in corpus order
        ])


def test_crop_stage_on_sample_corpus(tmp_path, tiny_dir):
    languages = LANGUAGES
    prepare(tmp_path, SAMPLE)
    teacher = tmp_path / "teacher"
    settings = crop_settings(200, 40)
    stats = crop_corpus(tmp_path / "corpus", tmp_path / "split", languages, tiny_dir, settings, tmp_path / "data", teacher)
    assert stats["documents"] == 68 and stats["examples"] == 2 * 48 and stats["fallbacks"] == 0
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


# --- the batched path equals the per-document one ---------------------------------------------------


def output_bytes(out) -> dict:
    return {name: (out / name).read_bytes() for name in ("train.jsonl", "valid.jsonl", "stats.md")}


def assert_same_outputs(tmp_path, model_dir, settings, teacher=True, workers=1) -> dict:
    """Crop with the per-document reference and with the batched path; the files must be byte for byte equal."""
    args = (tmp_path / "corpus", tmp_path / "split", LANGUAGES, model_dir, settings)
    teacher_dir = tmp_path / "teacher" if teacher else None
    reference = crop_corpus(*args, tmp_path / "reference", teacher_dir, per_document=True)
    batched = crop_corpus(*args, tmp_path / "batched", teacher_dir, workers=workers)
    expected, got = output_bytes(tmp_path / "reference"), output_bytes(tmp_path / "batched")
    for name in expected:
        assert got[name] == expected[name], name
    assert reference["examples"] == batched["examples"] > 0
    return batched


@pytest.mark.parametrize("model", ["qwen", "smollm2"])
@pytest.mark.parametrize("budgets", [(2566, 512), (120, 30)])
def test_batched_crop_equals_per_document_on_sample(tmp_path, qwen_dir, tiny_dir, model, budgets):
    prepare(tmp_path, SAMPLE, key_info=lambda i: "Key: fever, cough. " * (1 + 7 * (i % 5)))
    batched = assert_same_outputs(tmp_path, qwen_dir if model == "qwen" else tiny_dir, crop_settings(*budgets))
    assert batched["fallbacks"] == 0  # every example took the batched path
    if budgets == (120, 30):  # the search for the budget ran, on reports and answers
        records = list(read_jsonl(tmp_path / "batched" / "train.jsonl"))
        assert sum(r["report_cropped"] for r in records) > 40 and sum(r["answer_cropped"] for r in records) > 40


@pytest.mark.slow
@pytest.mark.parametrize("model", ["qwen", "smollm2"])
@pytest.mark.parametrize("role", ["system", "user"])
def test_batched_crop_equals_per_document_on_synthetic_corpus(tmp_path, qwen_dir, tiny_dir, model, role):
    """MultiClinSum-shaped lengths: document 1 of each language is the longest (up to 37,351 characters)."""
    synthesize(SAMPLE, tmp_path / "synthetic", LANGUAGES, gold=25)
    prepare(tmp_path, tmp_path / "synthetic", key_info=lambda i: "Key information: fever. " * (1 + 11 * (i % 13)))
    batched = assert_same_outputs(tmp_path, qwen_dir if model == "qwen" else tiny_dir, crop_settings(2566, 512, role),
                                  workers=2 if model == "qwen" else 1)
    assert batched["fallbacks"] == 0
    records = list(read_jsonl(tmp_path / "batched" / "train.jsonl"))
    assert any(r["report_cropped"] for r in records) and any(r["answer_cropped"] for r in records)


EDGE_TEXTS = [
    "\n\nLeading newlines merge with the template's own newline.",
    "  two leading spaces, and trailing ones   ",
    "Ends with a newline\n",
    "\u0301combining accent first, then e\u0301 decomposed and 한국어",
    "carriage\r\nreturns\r\n and tabs\t\there",
    "A report that quotes <|im_end|> and <|im_start|>user in its text.",
    "emoji 🙂🙂 at the end 🙂",
    "1234567890 digits 3.14159 and 37,8 °C",
    "x",
    "",
]


@pytest.mark.parametrize("model", ["qwen", "smollm2"])
@pytest.mark.parametrize("role", ["system", "user"])
def test_cropper_equals_crop_example_on_edge_texts(qwen_dir, tiny_dir, model, role):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen_dir if model == "qwen" else tiny_dir)
    long = " ".join(TEXTS) * 6
    examples = [(instruction, report + tail, answer)
                for instruction in ("Summarize clinical text", "Extract the key information from clinical text")
                for report in EDGE_TEXTS for tail in ("", " " + long)
                for answer in ("Key: fever.", (long + "\n" + report).strip())]
    for prompt_tokens, answer_tokens in ((2566, 512), (90, 24)):
        cropper = ChatCropper(tokenizer, role, prompt_tokens, answer_tokens)
        got = cropper.crop(examples)
        expected = [crop_example(tokenizer, *example, role, prompt_tokens, answer_tokens) for example in examples]
        assert got == expected
        # only texts holding a special token's text leave the batched path
        quoting = sum("<|im_" in report or "<|im_" in answer for _, report, answer in examples)
        assert 0 < cropper.fallbacks <= quoting


def test_cropper_errors_like_the_per_document_functions(tokenizer):
    with pytest.raises(ClinsumError, match="a prompt budget of 8 tokens leaves no room for the report"):
        crop_prompt(tokenizer, "Summarize clinical text", "report", 8, "system")
    with pytest.raises(ClinsumError, match="a prompt budget of 8 tokens leaves no room for the report"):
        ChatCropper(tokenizer, "system", 8, 64).crop([("Summarize clinical text", "report", "answer")])
    with pytest.raises(ClinsumError, match="an answer budget of 2 tokens leaves no room for an answer"):
        ChatCropper(tokenizer, "system", 200, 2).crop([("Summarize clinical text", "report", "answer")])
    with pytest.raises(ValueError, match="prompt role"):
        ChatCropper(tokenizer, "assistant", 200, 20)


def test_encode_prompts_equals_encode_prompt(qwen_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(qwen_dir)
    conversations = [build_messages("Summarize clinical text", text, role=role) for text in EDGE_TEXTS + TEXTS
                     for role in ("system", "user")]
    assert encode_prompts(tokenizer, conversations) == [encode_prompt(tokenizer, c) for c in conversations]
    assert encode_prompts(tokenizer, []) == []


@pytest.mark.parametrize("model", ["qwen", "smollm2"])
def test_tokenizer_shape_reads_the_components_as_tokenizer_json_holds_them(qwen_dir, tiny_dir, model):
    import json

    from clinsum.chat import _component, _TokenizerShape
    from clinsum.model_files import load_tokenizer

    tokenizer = load_tokenizer(qwen_dir if model == "qwen" else tiny_dir)
    backend = tokenizer.backend_tokenizer
    whole = json.loads(backend.to_str())
    assert _component(backend.normalizer) == whole["normalizer"]
    assert _component(backend.pre_tokenizer) == whole["pre_tokenizer"]
    assert getattr(backend.model, "dropout", None) == whole["model"].get("dropout")
    shape = _TokenizerShape(tokenizer)
    assert (shape.usable, shape.local, shape.nfc) == {"qwen": (True, True, True), "smollm2": (True, True, False)}[model]


NFC_TEXTS = [
    "Paciente de 54 años; résumé clinique, coração, ñ — ≥ 2,4 ng/mL, TNF-α, 37 °C",
    unicodedata.normalize("NFD", "Paciente de 54 años; résumé clinique, coração"),  # decomposed accents
    "Ohm \u2126, Angström \u212b, e\u0301",  # singletons and a combining accent NFC changes
    unicodedata.normalize("NFD", "한국어 환자"),  # Hangul jamo that NFC composes
    "unassigned here: x\u0378y",
    "astral: 🙂 𝛼",
    "plain ASCII report, 3 x 750 mg",
    "",
]


def test_nfc_stable_only_where_nfc_changes_nothing():
    from clinsum.chat import nfc_stable

    assert [nfc_stable(t) for t in NFC_TEXTS] == [True, False, False, False, False, False, True, True]
    for text in NFC_TEXTS:
        if nfc_stable(text):
            assert unicodedata.normalize("NFC", text) == text


def test_encoding_without_the_nfc_pass_gives_the_normalized_ids_and_offsets(qwen_dir):
    from clinsum.chat import _TokenizerShape
    from clinsum.model_files import load_tokenizer

    backend = load_tokenizer(qwen_dir).backend_tokenizer
    expected = [(e.ids, e.offsets) for e in backend.encode_batch(NFC_TEXTS, add_special_tokens=False)]
    shape = _TokenizerShape(load_tokenizer(qwen_dir))
    assert shape.nfc
    assert [(e.ids, e.offsets) for e in shape.encode(NFC_TEXTS)] == expected
    assert shape.backend.normalizer is not None  # put back
    # what the check guards against: a text NFC changes, encoded without it, has other ids
    normalizer, backend.normalizer = backend.normalizer, None
    assert backend.encode(NFC_TEXTS[1], add_special_tokens=False).ids != expected[1][0]
    backend.normalizer = normalizer


def test_a_component_that_cannot_be_serialized_keeps_the_batched_path_off(qwen_dir):
    from tokenizers.pre_tokenizers import PreTokenizer

    from clinsum.chat import _TokenizerShape
    from clinsum.model_files import load_tokenizer

    class Words:
        def pre_tokenize(self, pretok):
            pretok.split(lambda i, s: s.split(" "))

    tokenizer = load_tokenizer(qwen_dir)
    tokenizer.backend_tokenizer.pre_tokenizer = PreTokenizer.custom(Words())
    shape = _TokenizerShape(tokenizer)
    assert shape.usable and not shape.local


def test_looks_left_finds_lookbehind_and_anchors_outside_classes():
    qwen = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    assert not _looks_left(qwen)
    assert not _looks_left(r"[]^$]+|[^\]$]")
    for pattern in (r"(?<=a)b", r"(?<!a)b", r"^a", r"a$", r"\bword", r"\Aa", r"a|\Gb", r"[a]^"):
        assert _looks_left(pattern), pattern


def test_spread_cells_equal_statistics_of_lists():
    rng = random.Random(3)
    for values in ([], [7], [1, 2], [1, 2, 2], [rng.randrange(0, 40000) for _ in range(999)]):
        spread = Spread()
        for value in values:
            spread.add(value)
        expected = f"{statistics.mean(values):.0f} ({min(values)}–{max(values)}), n={len(values)}" if values else "–"
        assert spread.cell() == expected


def test_jsonl_index_reads_records_by_id(tmp_path):
    path = tmp_path / "records.jsonl"
    records = [{"id": f'doc "{i}" é', "n": i} for i in range(5)] + [{"n": 9, "id": "key not first"}]
    write_jsonl(path, records)
    with JsonlIndex(path) as index:
        assert len(index) == 6 and 'doc "3" é' in index
        assert index.get('doc "3" é') == records[3] and index.get("key not first") == records[5]
        assert index.get("absent") is None
    write_jsonl(path, records + [records[1]])
    with pytest.raises(ClinsumError, match="records.jsonl:7: document 'doc \"1\" é' appears more than once"):
        JsonlIndex(path)
    path.write_text('{"id": "a"}\n{"id": \n')
    with pytest.raises(ClinsumError, match="records.jsonl:2: invalid JSON"):
        JsonlIndex(path)


def test_missing_teacher_record_is_named(tmp_path, tiny_dir):
    prepare(tmp_path, SAMPLE)
    teacher = tmp_path / "teacher" / "es.jsonl"
    kept = list(read_jsonl(teacher))[1:]
    write_jsonl(teacher, kept)
    with pytest.raises(ClinsumError, match=r"teacher/es.jsonl: no teacher record for multiclinsum_gs_es_\d+"):
        crop_corpus(tmp_path / "corpus", tmp_path / "split", LANGUAGES, tiny_dir, crop_settings(200, 40),
                    tmp_path / "data", tmp_path / "teacher")
    assert not (tmp_path / "data" / "train.jsonl").exists()
