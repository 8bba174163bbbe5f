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

GOOD = {"faithfulness": 0.9, "completeness": {"patient": 1, "diagnosis": 0.5, "intervention": 0.5, "outcome": 1.0, "follow_up": 0}}
PROMPTS = {
    "system": "You check summaries.",
    "user": "Report:\n{report}\n\nSummary:\n{summary}\n\nAnswer with JSON.",
    "retry": "Your answer could not be read ({error}).",
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
    assert parsed["completeness_items"] == {"patient": 1.0, "diagnosis": 0.5, "intervention": 0.5, "outcome": 1.0, "follow_up": 0.0}


def with_items(**items):
    return json.dumps({"faithfulness": 0.5, "completeness": {**GOOD["completeness"], **items}})


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
        (json.dumps({"faithfulness": 0.9}), "the answer: missing completeness"),
        (json.dumps({**GOOD, "fluency": 1}), "the answer: unexpected fluency"),
        (with_items(follow_up=None), "completeness.follow_up must be a number from 0 to 1, got null"),
        (json.dumps({"faithfulness": "high", "completeness": GOOD["completeness"]}), "faithfulness must be a number"),
        (json.dumps({"faithfulness": True, "completeness": GOOD["completeness"]}), "faithfulness must be a number"),
        (json.dumps({"faithfulness": 9, "completeness": GOOD["completeness"]}), "faithfulness must be from 0 to 1, got 9"),
        (with_items(outcome=-0.1), "completeness.outcome must be from 0 to 1"),
        ('{"faithfulness": NaN, "completeness": {}}', "NaN is not a score"),
        (json.dumps({"faithfulness": 0.5, "completeness": 0.5}), "completeness must be a JSON object"),
        ('{"faithfulness": 0.5, "faithfulness": 0.6, "completeness": {}}', "duplicate key(s) faithfulness"),
        (json.dumps({"faithfulness": 0.5, "completeness": {"patient": 1}}), "missing diagnosis, intervention"),
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
    assert judged == {f"output: results/judge/{m}/{lang}.json" for m in models for lang in tiny["languages"]}
    report_block = plan.split("rule report:")[1].split("\n\n")[0]
    assert "results/judge/base/en.json" in report_block
