"""Inference stage: localized prompts, input cropping, the degenerate-output detector, the float32
guard, and the predictions file (complete, in test-split order, resumable)."""

from __future__ import annotations

import json
import os

import pytest

from clinsum import chat, cli, infer
from clinsum.generation import Completion, Generator
from clinsum.io import ClinsumError, read_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = {
    "en": "Summarize clinical text",
    "es": "Resumir el texto clínico",
    "fr": "Résumer le texte clinique",
    "pt": "Resumir texto clínico",
}
FIELDS = {
    "id",
    "lang",
    "prediction",
    "reference",
    "test_set",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "input_truncated",
    "fp32_fallback",
    "seconds",
}


# --- fixtures: smol_dir, tiny_dir and tokenizer (SmolLM2's) come from conftest.py ---


@pytest.fixture(scope="session")
def nan16_dir(tiny_dir, tmp_path_factory):
    """The tiny model with its final norm's weight at 1e5: float32 only rescales the logits (same
    argmax), float16 turns it into inf and every logit into NaN, as an overflowing model would."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("infer_models") / "nan16"
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.fill_(1.0e5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(out)
    return out


def make_inputs(tmp_path, lang="en", n_docs=5, long_doc_words=0):
    """A corpus whose order differs from the split's, with non-test documents mixed in."""
    docs = [
        {
            "id": f"{lang}_{i}",
            "lang": lang,
            "text": f"Patient {i}: a {30 + i}-year-old with fever and cough; chest X-ray showed pneumonia.",
            "summary": f"Pneumonia in patient {i}.",
            "source": "test",
        }
        for i in range(n_docs + 3)
    ]
    if long_doc_words:
        docs[1]["text"] = " ".join(["Síndrome febril com évolution défavorable"] * long_doc_words)
    docs[2]["summary"] = None  # a test-layout document has no reference
    test_ids = [f"{lang}_{i}" for i in (4, 1, 2, 0, 6)][:n_docs]
    corpus = tmp_path / f"{lang}.jsonl"
    corpus.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    split = tmp_path / f"{lang}.json"
    train = [d["id"] for d in docs if d["id"] not in test_ids]
    split.write_text(json.dumps({"lang": lang, "seed": 42, "train": train, "valid": [], "test": test_ids}))
    return corpus, split, test_ids


class FakeGenerator(Generator):
    """A generator whose outputs are scripted per prompt; it records what it was asked."""

    def __init__(self, dtype, respond, log):
        self.dtype, self.respond, self.log = dtype, respond, log
        self.closed = False

    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, top_logprobs=0, seed=0, repetition_penalty=1.0,
                 top_k=0):
        assert not self.closed
        self.log.append((self.dtype, len(prompts)))
        return [self.respond(self.dtype, prompt) for prompt in prompts]

    def close(self):
        self.closed = True


def completion(text, token_ids=None, finish_reason="stop", prompt=()):
    return Completion(text, list(token_ids or [5, 6, 7]), finish_reason, len(prompt))


# --- degenerate detector ---


@pytest.mark.parametrize(
    "text, token_ids, finish, expected",
    [
        ("", [0] * 64, "length", "empty output"),
        ("   \n", [198] * 3, "length", "empty output"),
        ("!" * 40, [0] * 40, "length", "run of 40"),
        ("Fever. " + "!" * 32, list(range(10)) + [0] * 32, "length", "run of 32"),
        ("|", [108] + [0] * 39, "length", "1-gram"),
        ("ab" * 20, [11, 12] * 20 + list(range(100, 110)), "length", "2-gram"),
        ("\ufffd" * 8, list(range(8)), "stop", "U+FFFD"),
        ("a\ufffd\ufffd", [1, 2, 3], "stop", "U+FFFD"),
    ],
)
def test_degenerate_outputs_are_detected(text, token_ids, finish, expected):
    reason = infer.degenerate_reason(text, token_ids, finish)
    assert reason is not None and expected in reason


@pytest.mark.parametrize(
    "text, token_ids, finish",
    [
        ("", [2], "stop"),  # the model chose to stop at once: not a numeric failure
        ("A 45-year-old man with chest pain; troponin was raised.", list(range(40)), "length"),
        ("!" * 31, list(range(31)), "stop"),  # one short of the run length
        ("Table:\n| a | b |\n|---|---|", list(range(12)), "stop"),
        ("ends in a cut character \ufffd", list(range(10)), "length"),  # one broken character at the limit
        ("x", [7] * 31, "length"),  # repetitive but shorter than PERIOD_MIN_TOKENS
    ],
)
def test_normal_outputs_pass(text, token_ids, finish):
    assert infer.degenerate_reason(text, token_ids, finish) is None


def test_period_share_threshold():
    # 24 of the 39 positions repeat the token before them (62%): under the 75% share
    ids = list(range(100, 116)) + [0] * 24
    assert infer.degenerate_reason("some words", ids, "length") is None
    ids = list(range(100, 108)) + [0] * 32  # 31 of 39 (79%)
    assert "1-gram [0]" in infer.degenerate_reason("some words", ids, "length")


# --- prompts and cropping with the real tokenizer ---


@pytest.mark.parametrize("lang", sorted(PROMPTS))
def test_localized_prompt_in_system_turn(tokenizer, lang):
    report = "Paciente de 45 anos com dor torácica."
    ids, truncated = chat.encode_cropped_prompt(tokenizer, PROMPTS[lang], report, "system", 16384, "infer.max_input_tokens")
    assert not truncated
    formatted = tokenizer.decode(ids)
    system_turn = formatted.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]
    assert system_turn == PROMPTS[lang]
    assert f"<|im_start|>user\n{report}<|im_end|>" in formatted
    assert formatted.endswith("<|im_start|>assistant\n")
    assert ids == chat.encode_prompt(tokenizer, chat.build_messages(PROMPTS[lang], report, role="system"))


def test_localized_prompt_in_user_turn(tokenizer):
    ids, _ = chat.encode_cropped_prompt(tokenizer, PROMPTS["fr"], "Rapport.", "user", 16384, "infer.max_input_tokens")
    assert "<|im_start|>user\nRésumer le texte clinique:\nRapport.<|im_end|>" in tokenizer.decode(ids)


@pytest.mark.parametrize("max_input_tokens", [40, 57, 100])
def test_long_report_is_cropped_to_fit(tokenizer, max_input_tokens):
    # accented words split into several byte-level tokens: a careless cut leaves a broken character
    report = "Síndrome febril com évolution défavorable, ñandú über æøå — " * 60
    ids, truncated = chat.encode_cropped_prompt(tokenizer, PROMPTS["pt"], report, "system", max_input_tokens, "infer.max_input_tokens")
    assert truncated
    assert max_input_tokens - 4 <= len(ids) <= max_input_tokens  # fits, and little of the budget is wasted
    formatted = tokenizer.decode(ids)
    cropped = formatted.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert cropped and report.startswith(cropped)
    assert "\ufffd" not in formatted
    assert PROMPTS["pt"] in formatted


def test_short_report_is_kept_whole(tokenizer):
    report = "Short report."
    ids, truncated = chat.encode_cropped_prompt(tokenizer, PROMPTS["en"], report, "system", 64, "infer.max_input_tokens")
    assert not truncated and report in tokenizer.decode(ids)


def test_budget_below_template_is_an_error(tokenizer):
    with pytest.raises(ClinsumError, match="max_input_tokens=16 leaves no room"):
        chat.encode_cropped_prompt(tokenizer, PROMPTS["en"], "A report. " * 20, "system", 16, "infer.max_input_tokens")


# --- inputs ---


def test_test_documents_in_split_order(tmp_path):
    corpus, split, test_ids = make_inputs(tmp_path)
    docs = infer.load_test_documents(corpus, split, "en")
    assert [d.id for d in docs] == test_ids
    assert docs[2].summary is None and docs[0].summary == "Pneumonia in patient 4."


def test_missing_test_id_is_an_error(tmp_path):
    corpus, split, _ = make_inputs(tmp_path)
    data = json.loads(split.read_text())
    data["test"].append("en_404")
    split.write_text(json.dumps(data))
    with pytest.raises(ClinsumError, match=r"en\.jsonl: 1 document\(s\) asked for are not in the corpus: en_404"):
        infer.load_test_documents(corpus, split, "en")


def test_split_of_another_language_is_an_error(tmp_path):
    corpus, split, _ = make_inputs(tmp_path)
    with pytest.raises(ClinsumError, match="split of language 'en', expected 'fr'"):
        infer.load_test_documents(corpus, split, "fr")


# --- the guard, with scripted generators ---


def run_predict(tmp_path, tokenizer, respond, settings=None, **kwargs):
    corpus, split, test_ids = make_inputs(tmp_path, long_doc_words=kwargs.pop("long_doc_words", 0))
    calls = []
    docs = infer.load_test_documents(corpus, split, "en")
    out = tmp_path / "pred" / "en.jsonl"
    counts = infer.predict(
        docs,
        tokenizer,
        lambda dtype: FakeGenerator(dtype, respond, calls),
        {"backend": "transformers", "dtype": "float16", "max_new_tokens": 40, **(settings or {})},
        PROMPTS["en"],
        "system",
        "en",
        out,
        **kwargs,
    )
    return list(read_jsonl(out)), counts, calls, test_ids, out


def nan_on_second_prompt(tokenizer):
    """float16 outputs `!!!!` for the document en_1; float32 outputs are fine."""

    def respond(dtype, prompt):
        text = tokenizer.decode(prompt)
        if dtype == "float16" and "Patient 1:" in text:
            return completion("!" * 40, [0] * 40, "length", prompt)
        return completion(f"{dtype} summary", [11, 12, 2], "stop", prompt)

    return respond


def test_guard_redoes_degenerate_documents_in_float32(tmp_path, tokenizer, caplog):
    caplog.set_level("INFO", logger="clinsum.infer")
    records, counts, calls, test_ids, _ = run_predict(tmp_path, tokenizer, nan_on_second_prompt(tokenizer))
    by_id = {r["id"]: r for r in records}
    assert by_id["en_1"]["fp32_fallback"] is True and by_id["en_1"]["prediction"] == "float32 summary"
    assert all(not r["fp32_fallback"] and r["prediction"] == "float16 summary" for r in records if r["id"] != "en_1")
    assert counts["fp32_fallback"] == 1
    assert calls == [("float16", 5), ("float32", 1)]  # only the degenerate document is redone
    assert "fp32 fallback: 1 of 5 documents" in caplog.text
    assert [r["id"] for r in records] == test_ids


def test_guard_loads_no_float32_model_when_nothing_degenerates(tmp_path, tokenizer):
    respond = lambda dtype, prompt: completion("Pneumonia.", [11, 2], "stop", prompt)  # noqa: E731
    records, counts, calls, _, _ = run_predict(tmp_path, tokenizer, respond)
    assert calls == [("float16", 5)] and counts["fp32_fallback"] == 0
    assert not any(r["fp32_fallback"] for r in records)


@pytest.mark.parametrize("settings", [{"guard": False}, {"dtype": "float32"}])
def test_guard_idle_when_off_or_already_float32(tmp_path, tokenizer, settings):
    records, counts, calls, _, _ = run_predict(tmp_path, tokenizer, nan_on_second_prompt(tokenizer), settings)
    assert len(calls) == 1 and counts["fp32_fallback"] == 0
    assert counts["degenerate_kept"] == (1 if settings.get("guard") is False else 0)


def test_guard_redoes_a_batch_whose_sampling_hit_nan(tmp_path, tokenizer):
    def respond(dtype, prompt):
        if dtype == "float16" and "Patient 1:" in tokenizer.decode(prompt):
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        return completion(f"{dtype} summary", [11, 2], "stop", prompt)

    records, counts, calls, _, _ = run_predict(tmp_path, tokenizer, respond, chunk_size=2)
    # the chunk (en_4, en_1) failed as a whole and was redone; the other chunks were not
    assert [r["id"] for r in records if r["fp32_fallback"]] == ["en_4", "en_1"]
    assert counts["fp32_fallback"] == 2 and calls[-1] == ("float32", 2)


def test_other_errors_are_not_swallowed(tmp_path, tokenizer):
    def respond(dtype, prompt):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        run_predict(tmp_path, tokenizer, respond)


# --- the predictions file ---


def test_records_complete_and_in_split_order(tmp_path, tokenizer):
    respond = lambda dtype, prompt: completion(" Pneumonia. \n", [11, 12, 2], "stop", prompt)  # noqa: E731
    records, counts, _, test_ids, out = run_predict(
        tmp_path, tokenizer, respond, {"max_input_tokens": 48}, long_doc_words=40
    )
    assert [r["id"] for r in records] == test_ids and counts["documents"] == len(test_ids)
    for record in records:
        assert set(record) == FIELDS
        assert record["lang"] == "en" and record["prediction"] == "Pneumonia."
        assert record["completion_tokens"] == 3 and record["finish_reason"] == "stop"
        assert 0 < record["prompt_tokens"] <= 48 and record["seconds"] >= 0
    assert [r["input_truncated"] for r in records] == [False, True, False, False, False]
    assert records[1]["prompt_tokens"] >= 44
    assert records[2]["reference"] is None and records[0]["reference"] == "Pneumonia in patient 4."
    assert not out.with_name("en.jsonl.partial").exists()


def test_killed_run_resumes_where_it_stopped(tmp_path, tokenizer):
    corpus, split, test_ids = make_inputs(tmp_path)
    docs = infer.load_test_documents(corpus, split, "en")
    out = tmp_path / "pred" / "en.jsonl"
    settings = {"backend": "transformers", "dtype": "float32"}
    calls = []

    def dies_after_first_chunk(dtype, prompt):
        if len(calls) > 1:
            raise KeyboardInterrupt  # the job is killed
        return completion("first run", [11, 2], "stop", prompt)

    def make(respond):
        return lambda dtype: FakeGenerator(dtype, respond, calls)

    with pytest.raises(KeyboardInterrupt):
        infer.predict(docs, tokenizer, make(dies_after_first_chunk), settings, "S", "system", "en", out, "k1", 2)
    assert not out.exists() and len(list(read_jsonl(out.with_name("en.jsonl.partial")))) == 3  # header + 2

    calls.clear()
    second = lambda dtype, prompt: completion("second run", [11, 2], "stop", prompt)  # noqa: E731
    infer.predict(docs, tokenizer, make(second), settings, "S", "system", "en", out, "k1", 2)
    records = list(read_jsonl(out))
    assert [r["id"] for r in records] == test_ids
    assert [r["prediction"] for r in records] == ["first run"] * 2 + ["second run"] * 3
    assert calls == [("float32", 2), ("float32", 1)]

    # other settings (another key): the partial file of an older run is not reused
    out.with_name("en.jsonl.partial").write_text(
        json.dumps({"_resume": "k1"}) + "\n" + json.dumps({**records[0], "prediction": "stale"}) + "\n"
    )
    infer.predict(docs, tokenizer, make(second), settings, "S", "system", "en", out, "k2", 2)
    assert [r["prediction"] for r in read_jsonl(out)] == ["second run"] * 5


# --- real models ---


@pytest.mark.slow
def test_forced_nan_in_float16_is_redone_in_float32(tmp_path, tokenizer, nan16_dir):
    """A real model that yields NaN logits in float16: every document comes back from float32."""
    from clinsum.generation import TransformersGenerator

    corpus, split, test_ids = make_inputs(tmp_path, n_docs=2)
    docs = infer.load_test_documents(corpus, split, "en")
    loaded = []

    def make_generator(dtype):
        loaded.append(dtype)
        return TransformersGenerator(nan16_dir, dtype=dtype, batch_size=4)

    settings = {"backend": "transformers", "dtype": "float16", "max_new_tokens": 8, "guard": True}
    out = tmp_path / "pred" / "en.jsonl"
    counts = infer.predict(docs, tokenizer, make_generator, settings, PROMPTS["en"], "system", "en", out)
    records = list(read_jsonl(out))
    assert loaded == ["float16", "float32"]
    assert counts["fp32_fallback"] == 2 and all(r["fp32_fallback"] for r in records)

    # the predictions are exactly float32's
    reference = TransformersGenerator(nan16_dir, dtype="float32", batch_size=4)
    prompts = [chat.encode_cropped_prompt(tokenizer, PROMPTS["en"], d.text, "system", 16384, "infer.max_input_tokens")[0] for d in docs]
    expected = reference.generate(prompts, 8)
    assert [r["prediction"] for r in records] == [c.text.strip() for c in expected]
    assert [r["completion_tokens"] for r in records] == [len(c.token_ids) for c in expected]


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, tiny_dir, caplog, capsys):
    corpus, split, test_ids = make_inputs(tmp_path, lang="pt", n_docs=4)
    out = tmp_path / "predictions" / "base" / "pt.jsonl"
    settings = {"backend": "transformers", "dtype": "float32", "max_new_tokens": 6, "batch_size": 2, "guard": True}
    common = ["infer", "--model-dir", str(tiny_dir), "--corpus", str(corpus), "--split", str(split)]
    caplog.set_level("INFO", logger="clinsum.infer")
    code = cli.main(
        common + ["--lang", "pt", "--settings", json.dumps({"infer": settings}), "--instruction", PROMPTS["pt"],
                  "--role", "system", "--out", str(out), "--threads", "1"]
    )  # fmt: skip
    assert code == 0
    records = list(read_jsonl(out))
    assert [r["id"] for r in records] == test_ids
    assert all(set(r) == FIELDS and r["lang"] == "pt" and 0 < r["completion_tokens"] <= 6 for r in records)
    assert "fp32 fallback: 0 of 4 documents" in caplog.text

    code = cli.main(common + ["--lang", "es", "--settings", json.dumps({"infer": settings}), "--instruction",
                              PROMPTS["es"], "--role", "system", "--out", str(tmp_path / "x.jsonl")])
    assert code == 1
    assert "clinsum infer: error:" in capsys.readouterr().err
