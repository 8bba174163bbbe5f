"""The LLM judge: strict parsing of its JSON answers (hand-made), one retry then counted, prompt cropping,
and a real run with the tiny random model, whose garbage answers must all be counted as malformed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from clinsum import judge
from clinsum.generation import Completion
from clinsum.io import ClinsumError, read_json, write_jsonl
from conftest import REPO, copy_checkout

GOOD = {"faithfulness": 0.9, "completeness": {"patient": 1, "diagnosis": 0.5, "intervention": 0.5, "outcome": 1.0, "follow_up": 0},
        "fluency": 0.75}
PROMPTS = {
    "system": "You check summaries.",
    "user": "Report:\n{report}\n\nSummary:\n{summary}\n\nAnswer with JSON.",
    "retry": "Your answer could not be read ({error}).",
    "consistency": "A ({lang_a}):\n{summary_a}\nB ({lang_b}):\n{summary_b}\nAnswer with JSON.",
}
SETTINGS = {"backend": "transformers", "dtype": "float32", "batch_size": 4, "max_input_tokens": 4096,
            "max_new_tokens": 16, "temperature": 0.0, "prompts": PROMPTS}


@pytest.mark.parametrize(
    "answer",
    [
        json.dumps(GOOD),
        "  " + json.dumps(GOOD, indent=2) + "\n",
        "```json\n" + json.dumps(GOOD) + "\n```",
        "```\n" + json.dumps(GOOD) + "\n```",
    ],
)
def test_well_formed_answers(answer):
    parsed = judge.parse_judgement(answer)
    assert parsed["judge_faithfulness"] == 0.9
    assert parsed["judge_completeness"] == pytest.approx((1 + 0.5 + 0.5 + 1 + 0) / 5)
    assert parsed["judge_fluency"] == 0.75
    assert parsed["completeness_items"] == {"patient": 1.0, "diagnosis": 0.5, "intervention": 0.5, "outcome": 1.0, "follow_up": 0.0}


def with_items(**items):
    return json.dumps({"faithfulness": 0.5, "completeness": {**GOOD["completeness"], **items}, "fluency": 1})


def with_top(**top):
    return json.dumps({**GOOD, **top})


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("", "empty answer"),
        ("The summary is faithful.", "not one JSON object"),
        ("Here is my answer: " + json.dumps(GOOD), "not one JSON object"),
        (json.dumps(GOOD) + " I hope this helps.", "not one JSON object"),
        (json.dumps(GOOD) + "\n" + json.dumps(GOOD), "invalid JSON"),
        ('{"faithfulness": 0.9, "completeness": {"patient": 1', "not one JSON object"),
        ('{"faithfulness": 0.9,}', "invalid JSON"),
        ("[0.9, 0.8]", "not one JSON object"),
        (json.dumps({"faithfulness": 0.9}), "the answer: missing completeness, fluency"),
        (with_top(coherence=1), "the answer: unexpected coherence"),
        (json.dumps({key: value for key, value in GOOD.items() if key != "fluency"}), "the answer: missing fluency"),
        (with_top(fluency=1.5), "fluency must be from 0 to 1, got 1.5"),
        (with_items(follow_up=None), "completeness.follow_up must be a number from 0 to 1, got null"),
        (with_top(faithfulness="high"), "faithfulness must be a number"),
        (with_top(faithfulness=True), "faithfulness must be a number"),
        (with_top(faithfulness=9), "faithfulness must be from 0 to 1, got 9"),
        (with_items(outcome=-0.1), "completeness.outcome must be from 0 to 1"),
        ('{"faithfulness": NaN, "completeness": {}, "fluency": 1}', "NaN is not a score"),
        (with_top(completeness=0.5), "completeness must be a JSON object"),
        ('{"faithfulness": 0.5, "faithfulness": 0.6, "completeness": {}, "fluency": 1}', "duplicate key(s) faithfulness"),
        (with_top(completeness={"patient": 1}), "missing diagnosis, intervention"),
    ],
)
def test_malformed_answers_are_refused_not_guessed(answer, reason):
    with pytest.raises(judge.MalformedAnswer) as error:
        judge.parse_judgement(answer)
    assert reason in str(error.value)


class CharTokenizer:
    """One token per character; the chat template joins the turns (enough for prompt building and cropping)."""

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return [ord(c) for c in text]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class ScriptedGenerator:
    """Answers from a script per document (keyed by the summary text in the prompt), recording the prompts."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = {key: list(values) for key, values in answers.items()}
        self.prompts = []

    def generate(self, prompts, max_new_tokens, temperature=0.0):
        completions = []
        for ids in prompts:
            text = "".join(chr(i) for i in ids)
            self.prompts.append(text)
            key = next(key for key in self.answers if f"Summary:\n{key}" in text)
            completions.append(Completion(self.answers[key].pop(0), [1], "stop", len(ids)))
        return completions

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_a_malformed_answer_is_retried_once_with_the_reason_then_counted():
    items = [{"id": f"d{i}", "report": f"Report {i}.", "summary": f"S{i}"} for i in range(3)]
    generator = ScriptedGenerator({
        "S0": [json.dumps(GOOD)],
        "S1": ["Sure! The summary is good.", json.dumps(GOOD)],
        "S2": ["{broken", "Still not JSON"],
    })
    results = judge.judge_items(generator, CharTokenizer(), items, SETTINGS)
    assert len(generator.prompts) == 5  # 3 first answers, 2 retries
    assert [r["attempts"] for r in results] == [1, 2, 2]
    assert [r["malformed"] for r in results] == [False, False, True]
    assert results[1]["judge_faithfulness"] == 0.9 and results[1]["error"] is None and "answer" not in results[1]
    assert results[2]["answer"] == "Still not JSON" and "not one JSON object" in results[2]["error"]
    assert "judge_faithfulness" not in results[2]  # nothing guessed
    retry = [p for p in generator.prompts if "Summary:\nS1" in p][1]
    assert "Your answer could not be read (the answer is not one JSON object" in retry
    summary = judge.summarize(results)
    assert summary["n"] == 3 and summary["n_judged"] == 2 and summary["n_malformed"] == 1 and summary["n_retried"] == 2
    assert summary["means"]["judge_faithfulness"] == pytest.approx(0.9)
    assert summary["means"]["completeness_patient"] == 1.0


def test_a_long_report_is_cropped_to_the_input_budget():
    tokenizer = CharTokenizer()
    report, summary = "x" * 500, "A short summary."
    ids, cropped = judge.encode(tokenizer, PROMPTS, report, summary, 200)
    assert cropped and len(ids) == 200
    text = tokenizer.decode(ids)
    assert summary in text and "Answer with JSON." in text  # the summary and the instructions stay whole
    ids, cropped = judge.encode(tokenizer, PROMPTS, "short", summary, 200)
    assert not cropped
    with pytest.raises(ClinsumError, match="leaves no room for the report"):
        judge.encode(tokenizer, PROMPTS, report, summary, 40)


def test_prompts_must_carry_their_placeholders():
    judge.check_prompts(PROMPTS)
    with pytest.raises(ClinsumError, match="judge.prompts.user must contain {summary}"):
        judge.check_prompts({**PROMPTS, "user": "{report}"})
    with pytest.raises(ClinsumError, match="judge.prompts.retry is missing or empty"):
        judge.check_prompts({**PROMPTS, "retry": ""})


def test_braces_in_a_report_are_kept():
    assert judge.user_turn(PROMPTS, "value {x} and {summary}", "S") == (
        "Report:\nvalue {x} and {summary}\n\nSummary:\nS\n\nAnswer with JSON."
    )


def test_the_tiny_random_model_answers_garbage_counted_as_malformed(tmp_path, tiny_dir):
    """A real judge run through the transformers backend: every answer is retried once and counted."""
    records = [
        {"id": f"multiclinsum_gs_en_{i}", "lang": "en", "prediction": f"A {40 + i}-year-old man with fever.",
         "reference": "Reference.", "finish_reason": "stop"}
        for i in range(3)
    ]
    records.append({"id": "multiclinsum_test_1_en", "lang": "en", "prediction": "No reference.", "reference": None})
    write_jsonl(tmp_path / "en.jsonl", records)
    write_jsonl(tmp_path / "corpus.jsonl", [{"id": r["id"], "lang": "en", "text": f"Report of {r['id']}."} for r in records])
    result = judge.judge_file(
        tmp_path / "en.jsonl", tmp_path / "corpus.jsonl", tiny_dir, {**SETTINGS, "max_new_tokens": 12},
        tmp_path / "judge.json", "base", "en",
    )
    assert result == read_json(tmp_path / "judge.json")
    assert result["n"] == 3  # the document without a reference is not judged, as it is not scored
    assert result["n_malformed"] == 3 and result["n_judged"] == 0 and result["n_retried"] == 3
    assert result["means"] == {}
    assert all(doc["malformed"] and doc["attempts"] == 2 and doc["error"] for doc in result["documents"])


def test_the_judge_rule_runs_only_when_switched_on(tmp_path):
    """A dry run of config/tiny.yaml: no judge job; with config/judge.yaml, one per model and language, and the
    report waits for them."""
    workdir = copy_checkout(tmp_path)
    tiny = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    models = ["base", *tiny["train"]["variants"]]

    def planned(*configfiles):
        done = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--configfile", *configfiles],
            cwd=workdir, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "rule judge:" not in planned("config/tiny.yaml")
    plan = planned("config/tiny.yaml", "config/judge.yaml")
    judged = {line.strip() for line in plan.splitlines() if line.strip().startswith("output: results/judge/")}
    assert judged == {f"output: results/judge/{m}/{lang}.json" for m in models for lang in tiny["languages"]} | {
        f"output: results/judge/{m}/consistency.json" for m in models}
    report_block = plan.split("rule report:")[1].split("\n\n")[0]
    assert "results/judge/base/en.json" in report_block and "results/judge/distil/consistency.json" in report_block


# ---------------------------------------------------------------- consistency across languages


def _case(lang, n, numbers, summary):
    return {"report": f"Report ({lang}): " + ", ".join(numbers) + ".", "summary": summary}


def test_cases_pair_by_their_id_and_are_confirmed_by_their_numbers():
    documents = {
        "en": {"multiclinsum2_test_1_en": _case("en", 1, ["58", "39.2", "187", "16,400"], "Legionella pneumonia."),
               "multiclinsum2_test_2_en": _case("en", 2, ["67", "38.4", "78"], "Knee infection."),
               "multiclinsum2_test_3_en": _case("en", 3, ["81"], "Diverticulitis.")},
        "es": {"multiclinsum2_test_1_es": _case("es", 1, ["58", "39,2", "187", "16.400"], "Neumonía."),
               "multiclinsum2_test_2_es": _case("es", 2, ["12", "4", "5"], "Otro caso."),  # the same number, another case
               "multiclinsum2_test_3_es": _case("es", 3, ["81"], "Diverticulitis.")},
        "el": {"multiclinsum2_test_1_el": _case("el", 1, ["58", "39,2", "187"], "Πνευμονία.")},
        "fr": {"multiclinsum_gs_fr_1": _case("fr", 1, ["58", "39,2", "187"], "no MultiClinSum-2 id: not paired")},
    }
    pairs, unconfirmed = judge.paired_cases(documents, ["en", "es", "el", "fr"])
    assert [p["id"] for p in pairs] == ["multiclinsum2_test_1:en-es", "multiclinsum2_test_1:en-el"]
    # digit runs: 58 39 2 187 16 400 in both (decimal and thousands marks differ, the digits do not)
    assert pairs[0]["ids"] == ["multiclinsum2_test_1_en", "multiclinsum2_test_1_es"] and pairs[0]["numbers_shared"] == 6
    assert pairs[1]["numbers_shared"] == 4 and pairs[1]["number_overlap"] == pytest.approx(4 / 6, abs=1e-4)
    # case 2: different reports behind the same number (one digit run shared by chance); case 3: too few to tell
    assert [(p["id"], p["numbers_shared"]) for p in unconfirmed] == [("multiclinsum2_test_2:en-es", 1),
                                                                     ("multiclinsum2_test_3:en-es", 1)]
    assert judge.case_of("multiclinsum_gs_fr_12", "fr") == "multiclinsum_gs_12"
    assert judge.case_of("multiclinsum2_test_12_ca", "es") is None


def test_consistency_answers_are_parsed_strictly():
    assert judge.parse_consistency('{"consistency": 0.8}') == {"judge_consistency": 0.8}
    for answer, reason in (('{"consistency": 2}', "must be from 0 to 1"), ('{"score": 1}', "missing consistency"),
                           ("Very consistent.", "not one JSON object")):
        with pytest.raises(judge.MalformedAnswer, match=reason):
            judge.parse_consistency(answer)


class PairGenerator:
    """Answers each consistency prompt by the pair of summaries it holds; records the prompts."""

    def __init__(self, answers):
        self.answers, self.prompts = answers, []

    def generate(self, prompts, max_new_tokens, temperature=0.0):
        out = []
        for ids in prompts:
            text = "".join(chr(i) for i in ids)
            self.prompts.append(text)
            key = next(key for key in self.answers if key in text)
            out.append(Completion(self.answers[key].pop(0), [1], "stop", len(ids)))
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_judge_consistency_writes_pairs_means_and_what_it_could_not_pair(tmp_path, monkeypatch):
    predictions, corpus = {}, {}
    for lang, summary in (("en", "Pneumonia, levofloxacin."), ("es", "Neumonía, levofloxacino."), ("ru", "Пневмония.")):
        ids = [f"multiclinsum2_test_{n}_{lang}" for n in (1, 2)]
        numbers = {1: "58, 39.2, 187, 750", 2: "67, 38.4, 78" if lang != "ru" else "1, 2"}
        write_jsonl(tmp_path / f"{lang}.jsonl", [{"id": i, "lang": lang, "prediction": f"{summary} {i}", "reference": None,
                                                 "test_set": True} for i in ids])
        write_jsonl(tmp_path / f"c{lang}.jsonl", [{"id": i, "lang": lang, "text": f"Report {numbers[n]}."} for n, i in zip((1, 2), ids)])
        predictions[lang], corpus[lang] = str(tmp_path / f"{lang}.jsonl"), str(tmp_path / f"c{lang}.jsonl")
    import clinsum.model_files

    monkeypatch.setattr(clinsum.model_files, "load_tokenizer", lambda path: CharTokenizer())
    generator = PairGenerator({"levofloxacino. multiclinsum2_test_1": ['{"consistency": 0.9}'],
                               "levofloxacino. multiclinsum2_test_2": ["no idea", '{"consistency": 0.5}'],
                               "Пневмония. multiclinsum2_test_1": ['{"consistency": 0.2}']})
    result = judge.judge_consistency(predictions, corpus, tmp_path, {**SETTINGS, "prompts": PROMPTS}, tmp_path / "c.json",
                                     "distil", make_generator=lambda s, p: generator)
    assert result == read_json(tmp_path / "c.json")
    assert [p["id"] for p in result["pairs"]] == ["multiclinsum2_test_1:en-es", "multiclinsum2_test_1:en-ru",
                                                  "multiclinsum2_test_2:en-es"]
    assert [p["id"] for p in result["unconfirmed"]] == ["multiclinsum2_test_2:en-ru"]
    assert result["means"]["judge_consistency"] == pytest.approx((0.9 + 0.2 + 0.5) / 3)
    assert result["means"]["by_languages"] == {"en-es": pytest.approx(0.7), "en-ru": pytest.approx(0.2)}
    assert result["n_judged"] == 3 and result["n_malformed"] == 0 and result["n_unconfirmed"] == 1
    assert result["pairs"][2]["attempts"] == 2  # "no idea" was asked again once
    assert any("A (English):" in p and "B (Spanish):" in p for p in generator.prompts)
