"""The paper's code on request (config/paper-code.yaml): its split, its character cropping, its prompts, its loss
over the prompt, its evaluation steps and decoding; each difference named in docs/paper-differences.md and in
the report's header."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

import pytest
import yaml

from clinsum import fidelity
from clinsum.batching import collate
from clinsum.steps import is_evaluation_step, step_plan
from clinsum.chat import build_messages, example_ids, prompt_ids
from clinsum.cli import main
from clinsum.crop import crop_corpus
from clinsum.crop import crop_settings as crop_stage_settings
from clinsum.io import ClinsumError, read_jsonl, write_jsonl
from clinsum.losses import TASK_ID, batch_loss
from clinsum.settings import merge, parse_config
from clinsum.split import paper_code_split, split_language, split_sizes
from conftest import REPO, copy_checkout

FRACTIONS = {"train": 0.8, "valid": 0.01, "test": 0.19}
REPORT = "Paciente de 58 años con fiebre de 39,2 °C y tos productiva. Consolidación en el lóbulo inferior derecho."


def code_training_text(instruction: str, text: str, answer: str) -> str:
    """The paper's code's training string (distil_ft_qwen25.py, `assistant_prompt`), written out here."""
    return f"<|im_start|>user\n{instruction}:\n{text}\n<|im_end|>\n<|im_start|>assistant\n{answer}\n<|im_end|>"


def configuration(*files: str) -> dict:
    config: dict = {}
    for name in ("config.yaml", *files):
        config = merge(config, yaml.safe_load((REPO / "config" / name).read_text()))
    return parse_config(config, "test")


# ---------------------------------------------------------------- prompts


def test_paper_code_training_sequence_is_the_codes_string_token_for_token(qwen_dir):
    from clinsum.model_files import load_tokenizer

    tokenizer = load_tokenizer(qwen_dir)
    prompt, answer = example_ids(tokenizer, "Summarize clinical text", REPORT, "Neumonía por Legionella.", "paper_code")
    text = code_training_text("Summarize clinical text", REPORT, "Neumonía por Legionella.")
    assert prompt + answer == tokenizer(text)["input_ids"]
    # the prompt ends at the assistant header, as the code's label mask did
    cut = text.index("<|im_start|>assistant") + len("<|im_start|>assistant\n")
    assert prompt == tokenizer(text[:cut])["input_ids"]
    assert "You are Qwen" not in tokenizer.decode(prompt + answer)  # no system turn in training


def test_paper_code_teacher_and_inference_prompt_is_one_user_turn_after_the_default_system_prompt(qwen_dir):
    from clinsum.model_files import load_tokenizer

    tokenizer = load_tokenizer(qwen_dir)
    ids = prompt_ids(tokenizer, "Resumir el texto clínico", REPORT, "paper_code")
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Resumir el texto clínico: {REPORT}"}], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(ids) == expected
    assert expected.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    # the paper's text puts the instruction in the system turn instead
    system = tokenizer.decode(prompt_ids(tokenizer, "Resumir el texto clínico", REPORT, "system"))
    assert system.startswith("<|im_start|>system\nResumir el texto clínico<|im_end|>")
    assert build_messages("I", "R", role="paper_code") == [{"role": "user", "content": "I: R"}]
    assert build_messages("I", "R", "A", role="paper_code", training=True)[0]["content"] == "I:\nR"


# ---------------------------------------------------------------- split


def _documents(n: int, lang: str = "en", tests: int = 3) -> list[tuple[str, bool]]:
    # in corpus order, as ingest writes them: by number; then the test-layout reports
    return [(f"multiclinsum_gs_{lang}_{i}", True) for i in range(1, n + 1)] + [
        (f"multiclinsum_test_{i}_{lang}", False) for i in range(1, tests + 1)
    ]


def test_paper_code_split_is_the_codes_shuffle_and_cuts():
    documents = _documents(592)
    result = paper_code_split(documents, FRACTIONS, 42, "number")
    assert [len(result[name]) for name in ("train", "valid", "test")] == [473, 5, 114 + 3]
    # the code: random.Random(42).shuffle of the list, then data[:int(n*0.8)], the next int(n*0.01), the rest
    data = [doc_id for doc_id, paired in documents if paired]
    random.Random(42).shuffle(data)
    assert result["train"] == data[:473] and result["valid"] == data[473:478] and result["test"][:114] == data[478:]
    assert result["test"][114:] == [f"multiclinsum_test_{i}_en" for i in (1, 2, 3)]  # test-layout reports: test
    # the same whatever order the corpus lists them in, for a given `order`
    assert paper_code_split(list(reversed(documents)), FRACTIONS, 42, "number") == result
    # `order: name` shuffles the ids as a sorted file listing gives them (1, 10, 100, …): another split
    by_name = paper_code_split(documents, FRACTIONS, 42, "name")
    names = sorted(doc_id for doc_id, paired in documents if paired)
    random.Random(42).shuffle(names)
    assert by_name["train"] == names[:473] and by_name["valid"] == names[473:478] and by_name != result
    assert split_sizes(592, FRACTIONS, "paper_code") == {"train": 473, "valid": 5, "test": 114}


def test_paper_code_split_refuses_a_corpus_too_small_for_its_cuts(tmp_path):
    with pytest.raises(ClinsumError, match=r"14 documents with a reference into 11 train, 0 valid and 3 test: valid"):
        paper_code_split(_documents(14), FRACTIONS, 42, "number")
    corpus = tmp_path / "en.jsonl"
    write_jsonl(corpus, [{"id": f"d{i}", "lang": "en", "text": "r", "summary": "s"} for i in range(200)])
    result = split_language(corpus, tmp_path / "en.json", "en", FRACTIONS, 42, "paper_code", "number")
    assert [len(result[name]) for name in ("train", "valid", "test")] == [160, 2, 38]
    assert json.loads((tmp_path / "en.json").read_text())["valid"] == result["valid"]


# ---------------------------------------------------------------- crop by characters


def test_character_cropping_as_the_code_with_tokens_counted_as_training_renders_them(tmp_path, qwen_dir):
    from clinsum.model_files import load_tokenizer

    corpus, split, teacher = tmp_path / "corpus", tmp_path / "split", tmp_path / "teacher"
    long_report, long_summary = "Informe clínico. " * 400, "Resumen del caso clínico. " * 60
    documents = [
        {"id": "long", "lang": "es", "text": long_report.strip(), "summary": long_summary.strip()},
        {"id": "short", "lang": "es", "text": REPORT, "summary": "Neumonía."},
        {"id": "other", "lang": "es", "text": REPORT + " Alta al sexto día.", "summary": "Neumonía curada."},
    ]
    write_jsonl(corpus / "es.jsonl", documents)
    (split).mkdir()
    (split / "es.json").write_text(json.dumps({"lang": "es", "train": ["long", "short"], "valid": ["other"], "test": []}))
    write_jsonl(teacher / "es.jsonl", [{"id": d["id"], "lang": "es", "key_info": "Información clave: fiebre. " * 40}
                                        for d in documents])
    settings = crop_stage_settings({
        "crop": {"unit": "characters", "prompt_tokens": 2566, "answer_tokens": 512},
        "prompts": {"role": "paper_code", "extract": "Extract the key information from clinical text",
                    "summarize": {"es": "Resumir el texto clínico"}},
    })
    stats = crop_corpus(corpus, split, ["es"], qwen_dir, settings, tmp_path / "data", teacher)
    records = list(read_jsonl(tmp_path / "data" / "train.jsonl")) + list(read_jsonl(tmp_path / "data" / "valid.jsonl"))
    assert len(records) == 6 and stats["over_sequence_limit"] == 0
    tokenizer = load_tokenizer(qwen_dir)
    for record in records:
        user, answer = record["messages"][0]["content"], record["messages"][-1]["content"]
        instruction, report = user.split(":\n", 1)
        source = next(d for d in documents if d["id"] == record["id"])
        assert report == source["text"][:2560] and len(report) <= 2560
        assert len(answer) <= 512 and record["chat_template"] == "paper_code"
        prompt, answer_ids = example_ids(tokenizer, instruction, report, answer, "paper_code")
        assert (record["prompt_tokens"], record["answer_tokens"]) == (len(prompt), len(answer_ids))
    long = {r["task"]: r for r in records if r["id"] == "long"}
    assert long["summarize"]["report_cropped"] and long["summarize"]["answer_cropped"]
    assert long["summarize"]["messages"][-1]["content"] == long_summary.strip()[:512]
    assert long["extract"]["messages"][-1]["content"] == ("Información clave: fiebre. " * 40).strip()[:512]
    table = (tmp_path / "data" / "stats.md").read_text()
    assert "after cropping to 2560 report / 512 answer characters (the paper's code); 0 examples over 3078 tokens" in table


# ---------------------------------------------------------------- loss over the prompt, evaluation steps


def test_loss_on_prompt_is_the_models_own_loss_over_the_whole_sequence(tiny_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from clinsum.model_files import load_tokenizer

    tokenizer = load_tokenizer(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    prompt, answer = example_ids(tokenizer, "Summarize clinical text", REPORT, "Neumonía.", "paper_code")
    example = {"input_ids": prompt + answer, "prompt_len": len(prompt), "task": TASK_ID["summarize"]}
    whole = collate([example], tokenizer.pad_token_id, loss_on_prompt=True)
    assert (whole["labels"] == whole["input_ids"]).all()
    ours, _ = batch_loss(model, whole, gamma=1.0)
    ids = torch.tensor([prompt + answer])
    expected = model(input_ids=ids, labels=ids).loss  # the code: labels rebuilt from the input ids
    assert ours.item() == pytest.approx(expected.item(), abs=1e-5)
    answer_only, _ = batch_loss(model, collate([example], tokenizer.pad_token_id), gamma=1.0)
    assert answer_only.item() != pytest.approx(ours.item(), abs=1e-3)


def test_eval_last_step_off_evaluates_as_transformers_trainer():
    steps = [s for s in range(1, 5677) if is_evaluation_step(s, 5676, 250, eval_last_step=False, evaluated=s > 250)]
    assert steps == list(range(250, 5676, 250)) and len(steps) == 22
    assert is_evaluation_step(5676, 5676, 250, eval_last_step=True, evaluated=True)
    # a run shorter than eval_every still ends with one evaluation (its only checkpoint)
    assert is_evaluation_step(9, 9, 250, eval_last_step=False, evaluated=False)
    assert len(step_plan(1892, 1, 3, 250, 0.03, eval_last_step=False).evaluation_steps) == 22
    assert len(step_plan(1892, 1, 3, 250, 0.03).evaluation_steps) == 23
    assert len(step_plan(5, 1, 1, 250, 0.03, eval_last_step=False).evaluation_steps) == 1


# ---------------------------------------------------------------- the plan, the mode, the docs


def test_plan_prints_the_codes_split_and_steps(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    args = ["plan", "--configfile", "config/paper.yaml", "config/paper-code.yaml", "--pairs-per-language", "592",
            "--results", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    for lang in ("en", "es", "fr", "pt"):
        assert f"| {lang} | 473 | 5 | 114 | exact, 592 pairs |" in out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out.splitlines()
            if line.startswith(("| standard", "| distil"))}
    assert rows["distil"][:5] == ["1892", "1", "1892", "5676", "22"]  # no evaluation at the last step
    assert rows["standard"][:5] == ["1892", "2", "946", "2838", "11"]


def test_fidelity_mode_of_each_shipped_configuration():
    assert fidelity.code_aspects(configuration("paper.yaml")) == []
    assert fidelity.mode(configuration("paper.yaml")).startswith("Fidelity mode: the paper's text")
    code = configuration("paper.yaml", "paper-code.yaml")
    assert fidelity.code_aspects(code) == [d.aspect for d in fidelity.DIFFERENCES]
    assert fidelity.mode(code).startswith("Fidelity mode: the paper's code")
    mixed = parse_config(merge(configuration("paper.yaml"), {"split": {"method": "paper_code"}}), "test")
    assert fidelity.mode(mixed) == (
        "Fidelity mode: mixed; as the paper's code: split; the other aspects as the paper's text (docs/paper-differences.md)."
    )
    # every key it reads is in the schema, and paper-code.yaml sets exactly those keys
    paper_code = yaml.safe_load((REPO / "config" / "paper-code.yaml").read_text())
    set_keys = {f"{s}.{k}" for s, section in paper_code.items() for k in section}
    assert set(fidelity.KEYS) <= set_keys and set_keys - set(fidelity.KEYS) == {"infer.seed", "split.order"}


def test_the_differences_table_names_every_aspect_and_its_keys():
    text = (REPO / "docs" / "paper-differences.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    for difference in fidelity.DIFFERENCES:
        row = next((line for line in table if line.startswith(f"| {difference.aspect} |")), None)
        assert row is not None, f"docs/paper-differences.md has no row for {difference.aspect}"
        for key in difference.code:
            assert f"`{key}" in row, (difference.aspect, key)
    for aspect in ("batch semantics", "checkpoint selection", "teacher prompt and decoding", "inference precision"):
        assert any(line.startswith(f"| {aspect} |") for line in table), aspect
    assert "docs/paper-differences.md" in (REPO / "README.md").read_text()


def test_the_report_header_names_the_mode(tmp_path):
    from test_report import eval_json

    from clinsum.io import write_json
    from clinsum.report import build_report

    paths = []
    for model in ("base", "standard"):
        path = tmp_path / model / "en.json"
        write_json(path, eval_json(model, "en", {"rougeLsum_f": [0.2, 0.3], "bertscore_f1": [0.8, 0.7]}))
        paths.append(path)
    mode = fidelity.mode(configuration("paper.yaml", "paper-code.yaml"))
    build_report(paths, {}, ["base", "standard"], ["en"], tmp_path / "out", samples=50, fidelity=mode)
    assert (tmp_path / "out" / "table4.md").read_text().splitlines()[0] == mode
    assert mode in (tmp_path / "out" / "index.html").read_text().replace("&#x27;", "'")


# ---------------------------------------------------------------- the rehearsal with the code's settings


@pytest.mark.slow
def test_rehearsal_with_paper_code_splits_and_crops_as_the_code(tmp_path):
    """config/paper-rehearsal.yaml with config/paper-code.yaml merged, up to the crop: the synthetic corpus of 592
    gold pairs a language splits 473/5/114 (1,892 training documents) and every example is cut to 2,560 report and
    512 summary characters. The teacher is left out (variants: standard) to stay in a test's time."""
    workdir = copy_checkout(tmp_path)
    (workdir / "config" / "summaries-only.yaml").write_text("train: {variants: [standard]}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "results/data/train.jsonl", "--configfile",
         "config/paper-rehearsal.yaml", "config/paper-code.yaml", "config/summaries-only.yaml"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    results = workdir / "results"
    for lang in ("en", "es", "fr", "pt"):
        split = json.loads((results / "split" / f"{lang}.json").read_text())
        paired = [i for i in split["test"] if "_test_" not in i]
        assert (len(split["train"]), len(split["valid"]), len(paired)) == (473, 5, 114), lang
    train = list(read_jsonl(results / "data" / "train.jsonl"))
    valid = list(read_jsonl(results / "data" / "valid.jsonl"))
    assert (len(train), len(valid)) == (1892, 20)
    reports = [r["messages"][0]["content"].split(":\n", 1)[1] for r in train + valid]
    assert max(map(len, reports)) == 2560 and max(len(r["messages"][-1]["content"]) for r in train + valid) == 512
    assert all(r["chat_template"] == "paper_code" for r in train)
    stats = (results / "data" / "stats.md").read_text()
    assert re.search(r"\| all \| 1892 \| 20 \| \d+ \|", stats)
