"""Stage 1 (teacher): prompts, shard assignment, resume after a kill, gather checks, top-k sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clinsum import teacher
from clinsum.chat import build_messages, encode_prompt
from clinsum.generation import Completion, TransformersGenerator
from clinsum.io import ClinsumError, read_jsonl, write_json, write_jsonl
from clinsum.records import load_documents

EXTRACT = "Extract the key information from clinical text"


def make_corpus(root: Path, n: int = 10, lang: str = "en") -> tuple[Path, Path, list[str]]:
    """A corpus of n documents, all in train/valid (plus one test document the teacher must skip)."""
    ids = [f"doc{i}" for i in range(n)]
    records = [
        {"id": d, "lang": lang, "text": f"Patient {i}: " + "fever and cough. " * (i % 4 + 1), "summary": "s", "source": "x"}
        for i, d in enumerate(ids)
    ]
    records.append({"id": "test0", "lang": lang, "text": "held out", "summary": None, "source": "x"})
    corpus = root / "corpus.jsonl"
    write_jsonl(corpus, records)
    split = root / "split.json"
    write_json(split, {"lang": lang, "seed": 42, "train": ids[:-2], "valid": ids[-2:], "test": ["test0"]})
    return corpus, split, ids


def settings(**teacher_overrides) -> dict:
    section = {
        "model": "fake-teacher",
        "backend": "transformers",
        "max_new_tokens": 4,
        "temperature": 0.0,
        "top_logprobs": 0,
        "on_truncated": "keep",
        "retry_max_new_tokens": 8,
        "batch_size": 3,
        "dtype": "float32",
        "max_prompt_tokens": 2048,
    }
    section.update(teacher_overrides)
    return {"teacher": section, "prompts": {"extract": EXTRACT, "role": "system"}}


class FakeGenerator:
    """Deterministic completions from the prompt; counts calls and prompts; can 'die' after some calls."""

    def __init__(self, tag: str, die_after_calls: int | None = None, truncate: bool = False):
        self.tag = tag
        self.die_after_calls = die_after_calls
        self.truncate = truncate
        self.calls: list[tuple[int, int]] = []  # (number of prompts, max_new_tokens)

    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, top_logprobs=0, seed=0, repetition_penalty=1.0,
                 top_k=0):
        if self.die_after_calls is not None and len(self.calls) >= self.die_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append((len(prompts), max_new_tokens))
        out = []
        for prompt in prompts:
            n = 3 if not self.truncate else max_new_tokens
            ids = [int(prompt[-5] + j) for j in range(n)]
            top_ids = top_values = None
            if top_logprobs:
                top_ids = np.array([[t + c for c in range(top_logprobs)] for t in ids], dtype=np.int32)
                top_values = -np.arange(n * top_logprobs, dtype=np.float32).reshape(n, top_logprobs) / len(prompt)
            finish = "length" if self.truncate and max_new_tokens < 8 else "stop"
            out.append(Completion(f"{self.tag} {len(prompt)}", ids, finish, len(prompt), top_ids, top_values))
        return out

    def close(self):
        pass


# --- prompt format --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["system", "user"])
def test_prompt_matches_chat_template(tokenizer, role):
    report = "A 60-year-old woman with dyspnea."
    prompts = teacher.build_prompts(tokenizer, {"d": report}, EXTRACT, role)
    if role == "system":
        messages = [{"role": "system", "content": EXTRACT}, {"role": "user", "content": report}]
    else:
        messages = [{"role": "user", "content": f"{EXTRACT}:\n{report}"}]
    expected = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert prompts["d"] == expected
    text = tokenizer.decode(prompts["d"])
    assert text.endswith("<|im_start|>assistant\n")
    if role == "system":
        assert f"<|im_start|>system\n{EXTRACT}<|im_end|>" in text
        assert f"<|im_start|>user\n{report}<|im_end|>" in text
    else:
        assert f"<|im_start|>user\n{EXTRACT}:\n{report}<|im_end|>" in text
        assert f"<|im_start|>system\n{EXTRACT}" not in text


# --- shards ---------------------------------------------------------------------------------


def test_shard_assignment_partitions_ids_and_is_stable():
    ids = [f"multiclinsum_gs_en_{i}" for i in range(200)]
    shards = [teacher.shard_ids(ids, index, 4) for index in range(4)]
    assert sorted(sum(shards, [])) == sorted(ids)  # every id in exactly one shard
    assert all(len(s) > 20 for s in shards)  # a hash, not a block split
    more = ids + [f"multiclinsum_ls_en_{i}" for i in range(100)]
    for index in range(4):
        assert set(teacher.shard_ids(more, index, 4)) & set(ids) == set(shards[index])
    assert teacher.shard_of("doc", 1) == 0
    assert teacher.shard_of("multiclinsum_gs_en_7", 4) == teacher.shard_of("multiclinsum_gs_en_7", 4)
    with pytest.raises(ClinsumError):
        teacher.shard_of("doc", 0)


def test_shard_position_is_checked(tmp_path, tiny_dir):
    corpus, split, _ = make_corpus(tmp_path, n=2)
    for index, count in ((0, 2), (3, 2)):
        with pytest.raises(ClinsumError, match=f"shard {index} of {count}: the index must lie between 1 and the count"):
            teacher.run_shard(corpus, split, tiny_dir, settings(), index, count, tmp_path / "o.jsonl",
                              generator=FakeGenerator("x"))


# --- one shard, resume ----------------------------------------------------------------------


def test_shard_writes_one_record_per_document(tmp_path, tiny_dir):
    corpus, split, ids = make_corpus(tmp_path)
    outs = []
    for index in (1, 2):
        out = tmp_path / "teacher" / "en" / f"{index}-of-2.jsonl"
        counts = teacher.run_shard(corpus, split, tiny_dir, settings(), index, 2, out, generator=FakeGenerator("a"))
        assert counts["generated"] == counts["documents"]
        assert not teacher.partial_paths(out)["records"].exists()
        outs.append(out)
    records = [r for out in outs for r in read_jsonl(out)]
    assert sorted(r["id"] for r in records) == sorted(ids)
    first = records[0]
    assert set(first) >= {"id", "lang", "key_info", "token_ids", "finish_reason", "prompt_tokens",
                          "completion_tokens", "model", "seconds"}
    assert first["lang"] == "en" and first["model"] == "fake-teacher" and first["completion_tokens"] == 3


def test_killed_shard_resumes_without_regenerating(tmp_path, tiny_dir):
    corpus, split, ids = make_corpus(tmp_path)
    out = tmp_path / "teacher" / "en" / "1-of-1.jsonl"
    topk_out = tmp_path / "teacher" / "en" / "1-of-1.topk.safetensors"
    config = settings(top_logprobs=2)
    with pytest.raises(KeyboardInterrupt):
        teacher.run_shard(corpus, split, tiny_dir, config, 1, 1, out, topk_out,
                          generator=FakeGenerator("first", die_after_calls=2))
    partial = teacher.partial_paths(out)
    assert not out.exists()
    lines = partial["records"].read_bytes().splitlines(keepends=True)
    assert len(lines) == 6  # two batches of 3
    # a kill in the middle of writing the 6th record: half a line, and its top-k bytes already there
    partial["records"].write_bytes(b"".join(lines[:5]) + lines[5][: len(lines[5]) // 2])
    kept = [json.loads(line) for line in lines[:5]]

    again = FakeGenerator("second")
    counts = teacher.run_shard(corpus, split, tiny_dir, config, 1, 1, out, topk_out, generator=again)
    assert counts == {"documents": 10, "kept": 5, "generated": 5, "retried": 0, "prompt_cropped": 0}
    assert sum(n for n, _ in again.calls) == 5  # only the missing documents were generated
    records = list(read_jsonl(out))
    assert sorted(r["id"] for r in records) == sorted(ids)  # every id exactly once
    by_id = {r["id"]: r for r in records}
    for record in kept:
        assert by_id[record["id"]] == record  # kept, not regenerated
    assert sum(r["key_info"].startswith("second") for r in records) == 5
    assert not any(p.exists() for p in partial.values())

    from safetensors.numpy import load_file

    tensors = load_file(topk_out)
    assert len(tensors) == 2 * len(ids)
    for record in records:
        ids_k, values_k = tensors[f"{record['id']}/ids"], tensors[f"{record['id']}/logprobs"]
        n = len(record["token_ids"])
        assert ids_k.shape == values_k.shape == (n, 2) and ids_k.dtype == np.int32
        assert ids_k[:, 0].tolist() == record["token_ids"]  # the fake's top-1 is the generated token
        expected = -np.arange(n * 2, dtype=np.float32).reshape(n, 2) / record["prompt_tokens"]
        np.testing.assert_allclose(values_k, expected)


def test_partial_with_other_settings_is_discarded(tmp_path, tiny_dir):
    corpus, split, ids = make_corpus(tmp_path)
    out = tmp_path / "1-of-1.jsonl"
    with pytest.raises(KeyboardInterrupt):
        teacher.run_shard(corpus, split, tiny_dir, settings(), 1, 1, out, generator=FakeGenerator("a", 1))
    changed = settings()
    changed["prompts"]["extract"] = "List the diagnoses"
    again = FakeGenerator("b")
    counts = teacher.run_shard(corpus, split, tiny_dir, changed, 1, 1, out, generator=again)
    assert counts["kept"] == 0 and sum(n for n, _ in again.calls) == len(ids)
    # resources alone do not discard finished work
    fingerprint = teacher.output_fingerprint(teacher.read_settings(settings()), tiny_dir)
    tuned = settings(resources={"gpu": 4})
    assert teacher.output_fingerprint(teacher.read_settings(tuned), tiny_dir) == fingerprint


def test_truncated_outputs_retried_once(tmp_path, tiny_dir):
    corpus, split, ids = make_corpus(tmp_path, n=4)
    out = tmp_path / "1-of-1.jsonl"
    fake = FakeGenerator("t", truncate=True)
    counts = teacher.run_shard(
        corpus, split, tiny_dir, settings(on_truncated="retry", batch_size=4), 1, 1, out, generator=fake
    )
    assert fake.calls == [(4, 4), (4, 8)]
    assert counts["retried"] == 4
    records = list(read_jsonl(out))
    assert all(r["retried"] and r["completion_tokens"] == 8 and r["finish_reason"] == "stop" for r in records)

    kept = FakeGenerator("t", truncate=True)
    teacher.run_shard(corpus, split, tiny_dir, settings(batch_size=4), 1, 1, tmp_path / "k.jsonl", generator=kept)
    assert kept.calls == [(4, 4)]
    summary = teacher.summarize([tmp_path / "k.jsonl"])
    assert summary["en"]["length"] == 4 and summary["en"]["retried"] == 0 and summary["en"]["records"] == 4


def long_report_corpus(root: Path) -> tuple[Path, Path]:
    """Three short reports and one of about 1,500 tokens."""
    records = [{"id": f"doc{i}", "lang": "en", "text": "Fever and cough. " * 3, "summary": "s"} for i in range(3)]
    records.append({"id": "long", "lang": "en", "text": "A long history of fever and cough. " * 200, "summary": "s"})
    write_jsonl(root / "corpus.jsonl", records)
    write_json(root / "split.json", {"lang": "en", "train": [r["id"] for r in records], "valid": [], "test": []})
    return root / "corpus.jsonl", root / "split.json"


def test_over_long_report_is_cropped_and_counted(tmp_path, tiny_dir, tokenizer):
    corpus, split = long_report_corpus(tmp_path)
    out = tmp_path / "1-of-1.jsonl"
    counts = teacher.run_shard(corpus, split, tiny_dir, settings(max_prompt_tokens=300), 1, 1, out,
                               generator=FakeGenerator("c"))
    assert counts["prompt_cropped"] == 1
    records = {r["id"]: r for r in read_jsonl(out)}
    assert records["long"]["prompt_cropped"] and records["long"]["prompt_tokens"] <= 300
    assert records["long"]["prompt_tokens"] > 280  # cropped to the budget, not far below it
    assert not any(records[f"doc{i}"]["prompt_cropped"] for i in range(3))
    summary = teacher.summarize([out])
    assert summary["en"]["prompt_cropped"] == 1 and summary["en"]["records"] == 4


def test_over_long_report_stops_at_start_naming_it(tmp_path, tiny_dir):
    corpus, split = long_report_corpus(tmp_path)
    fake = FakeGenerator("e")
    with pytest.raises(ClinsumError, match=r"1 teacher prompts exceed teacher.max_prompt_tokens \(300\): long \(\d+ tokens\)"):
        teacher.run_shard(corpus, split, tiny_dir, settings(max_prompt_tokens=300, on_long_prompt="error"), 1, 1,
                          tmp_path / "1-of-1.jsonl", generator=fake)
    assert fake.calls == []


def test_context_checked_before_any_engine(tmp_path, tiny_dir):
    """The model's own context (8,192 positions for the SmolLM2-shaped tiny model) and an explicit vLLM context
    must hold the longest prompt plus the longest answer (the retry's, when outputs are retried)."""
    normalized = teacher.read_settings(settings(max_prompt_tokens=8000, max_new_tokens=64))["teacher"]
    assert teacher.check_context(tiny_dir, normalized) == 8064
    too_long = teacher.read_settings(settings(max_prompt_tokens=8000, on_truncated="retry", retry_max_new_tokens=400))
    with pytest.raises(ClinsumError, match="8400 tokens exceeds the model's context .*max_position_embeddings 8192"):
        teacher.check_context(tiny_dir, too_long["teacher"])
    engine = teacher.read_settings(settings(backend="vllm", max_prompt_tokens=4094, vllm={"max_model_len": 4096}))
    with pytest.raises(ClinsumError, match=r"teacher.vllm.max_model_len \(4096\) cannot hold .* \(4098\)"):
        teacher.check_context(tiny_dir, engine["teacher"])
    corpus, split = long_report_corpus(tmp_path)
    fake = FakeGenerator("x")
    with pytest.raises(ClinsumError, match="exceeds the model's context"):
        teacher.run_shard(corpus, split, tiny_dir, settings(max_prompt_tokens=9000), 1, 1, tmp_path / "o.jsonl",
                          generator=fake)
    assert fake.calls == []


def test_split_id_missing_from_corpus_is_named(tmp_path, tiny_dir):
    corpus, split, ids = make_corpus(tmp_path)
    write_json(split, {"lang": "en", "train": ids + ["ghost"], "valid": [], "test": []})
    with pytest.raises(ClinsumError, match="ghost"):
        teacher.run_shard(corpus, split, tiny_dir, settings(), 1, 1, tmp_path / "o.jsonl",
                          generator=FakeGenerator("a"))


# --- gather ---------------------------------------------------------------------------------


def _record(doc_id):
    return {"id": doc_id, "lang": "en", "key_info": f"info {doc_id}", "token_ids": [5, 2], "finish_reason": "stop"}


def test_gather_orders_records_and_names_missing_and_duplicate_ids(tmp_path):
    _, split, ids = make_corpus(tmp_path, n=6)
    write_jsonl(tmp_path / "a.jsonl", [_record(d) for d in ids[3:]])
    write_jsonl(tmp_path / "b.jsonl", [_record(d) for d in ids[:3]])
    count = teacher.gather(split, [tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "en.jsonl")
    assert count == 6
    assert [r["id"] for r in read_jsonl(tmp_path / "en.jsonl")] == ids

    write_jsonl(tmp_path / "b.jsonl", [_record(d) for d in ids[:2]] + [_record(ids[4])])
    with pytest.raises(ClinsumError) as error:
        teacher.gather(split, [tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "bad.jsonl")
    message = str(error.value)
    assert "1 ids missing: doc2" in message and "1 ids with more than one record: doc4" in message
    assert "a.jsonl" in message and not (tmp_path / "bad.jsonl").exists()

    write_jsonl(tmp_path / "b.jsonl", [_record(d) for d in ids[:3]] + [_record("test0")])
    with pytest.raises(ClinsumError, match="not in the train/valid split: test0"):
        teacher.gather(split, [tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "bad.jsonl")


def test_gather_cli_reports_error(tmp_path, capsys):
    from clinsum.cli import main

    _, split, ids = make_corpus(tmp_path, n=3)
    write_jsonl(tmp_path / "a.jsonl", [_record(d) for d in ids[:2]])
    code = main(["teacher", "gather", "--split", str(split), "--inputs", str(tmp_path / "a.jsonl"),
                 "--out", str(tmp_path / "en.jsonl")])
    assert code == 1
    assert "clinsum teacher: error:" in capsys.readouterr().err


# --- top-k sidecar against a direct forward ---------------------------------------------------


@pytest.mark.slow
def test_topk_sidecar_matches_direct_forward(tmp_path, tiny_dir):
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus, split, ids = make_corpus(tmp_path, n=5)
    k = 4
    config = settings(top_logprobs=k, max_new_tokens=6, batch_size=2)
    generator = TransformersGenerator(tiny_dir, dtype="float32", batch_size=2)
    outs, topks = [], []
    for index in (1, 2):
        outs.append(tmp_path / f"{index}-of-2.jsonl")
        topks.append(tmp_path / f"{index}-of-2.topk.safetensors")
        teacher.run_shard(corpus, split, tiny_dir, config, index, 2, outs[-1], topks[-1], generator=generator)
    teacher.gather(split, outs, tmp_path / "en.jsonl", topks, tmp_path / "en.topk.safetensors")
    tensors = load_file(tmp_path / "en.topk.safetensors")
    records = list(read_jsonl(tmp_path / "en.jsonl"))
    assert len(tensors) == 2 * len(records) == 2 * len(ids)

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    texts = {r["id"]: r["text"] for r in read_jsonl(corpus)}
    for record in records:
        prompt = encode_prompt(tokenizer, build_messages(EXTRACT, texts[record["id"]]))
        assert record["prompt_tokens"] == len(prompt)
        n = len(record["token_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([prompt + record["token_ids"]])).logits[0]
        # position t predicts token t+1: the generated tokens are predicted from len(prompt)-1 on
        expected = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + n].float(), dim=-1).topk(k)
        top_ids, top_values = tensors[f"{record['id']}/ids"], tensors[f"{record['id']}/logprobs"]
        assert top_ids.shape == top_values.shape == (n, k)
        assert top_ids.dtype == np.int32 and top_values.dtype == np.float32
        np.testing.assert_allclose(top_values, expected.values.numpy(), atol=1e-4)
        assert (top_ids == expected.indices.numpy()).mean() > 0.95  # near-ties may swap order
        assert top_ids[:, 0].tolist() == record["token_ids"]  # greedy: the generated token is the top-1


# --- summary and Table 2 ----------------------------------------------------------------------


def test_summary_and_table2(tmp_path):
    records = [
        {"id": "a", "lang": "fr", "key_info": "abcd", "finish_reason": "stop", "retried": False, "completion_tokens": 3},
        {"id": "b", "lang": "fr", "key_info": "", "finish_reason": "length", "retried": True, "completion_tokens": 9},
        {"id": "c", "lang": "fr", "key_info": "abcdefgh", "finish_reason": "stop", "completion_tokens": 4},
    ]
    write_jsonl(tmp_path / "fr.jsonl", records)
    summary = teacher.summarize([tmp_path / "fr.jsonl"])
    assert summary["fr"]["records"] == 3 and summary["fr"]["empty"] == 1
    assert summary["fr"]["length"] == 1 and summary["fr"]["retried"] == 1 and summary["fr"]["completion_tokens"] == 16
    from clinsum.crop import table2_markdown

    table = table2_markdown([tmp_path / "fr.jsonl"])
    assert "| fr | 3 | 4 | 0 | 8 |" in table and table.startswith("## Table 2")


# --- at scale: what a shard reads, the load's spread over shards, a streaming gather ------------------


def test_shard_parses_only_its_own_lines(tmp_path):
    lines = [
        json.dumps({"id": "mine", "lang": "en", "text": "my report", "summary": "s"}),
        '{"id": "other", "text": "not even JSON',  # another shard's line: recognized by its id, never parsed
        json.dumps({"lang": "en", "id": "late id", "text": "id not first: parsed whole", "summary": "s"}),
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    texts = {doc_id: document.text for doc_id, document in load_documents(corpus, ["mine", "late id"]).items()}
    assert texts == {"mine": "my report", "late id": "id not first: parsed whole"}
    with pytest.raises(ClinsumError, match="corpus.jsonl:2: invalid JSON"):
        load_documents(corpus, ["other"])


def test_build_prompts_in_batches_equals_encode_prompt(tokenizer, monkeypatch):
    monkeypatch.setattr(teacher, "PROMPTS_PER_CALL", 3)
    texts = {f"d{i}": f"Report {i}: " + "fever, cough and dyspnea. " * i for i in range(8)}
    prompts = teacher.build_prompts(tokenizer, texts, EXTRACT, "system")
    assert list(prompts) == list(texts)
    for doc_id, text in texts.items():
        assert prompts[doc_id] == encode_prompt(tokenizer, build_messages(EXTRACT, text))


def test_records_name_their_shard_and_the_summary_gives_the_spread(tmp_path, tiny_dir, caplog):
    corpus, split, ids = make_corpus(tmp_path, n=10)
    outs = []
    with caplog.at_level("INFO", logger="clinsum.teacher"):
        for index in (1, 2, 3):
            outs.append(tmp_path / f"{index}-of-3.jsonl")
            teacher.run_shard(corpus, split, tiny_dir, settings(), index, 3, outs[-1], generator=FakeGenerator("a"))
        teacher.gather(split, outs, tmp_path / "en.jsonl")
    per_shard = [list(read_jsonl(out)) for out in outs]
    assert all((r["shard_index"], r["shard_count"]) == (index, 3) for index, records in zip((1, 2, 3), per_shard) for r in records)
    loads = [(len(records), sum(r["prompt_tokens"] for r in records)) for records in per_shard]
    summary = teacher.summarize([tmp_path / "en.jsonl"])["en"]["shards"]
    assert summary["count"] == 3
    assert summary["documents"]["min"] == min(n for n, _ in loads) and summary["documents"]["max"] == max(n for n, _ in loads)
    assert summary["documents"]["mean"] == round(10 / 3, 1)
    assert summary["prompt_tokens"]["max"] == max(p for _, p in loads)
    assert summary["prompt_tokens"]["max_over_mean"] == round(max(p for _, p in loads) / (sum(p for _, p in loads) / 3), 3)
    # the shard's log and the gather's log give each shard's load
    documents, prompt_tokens = loads[1]
    assert f"shard 2 of 3 done: {documents} documents, {prompt_tokens} prompt tokens" in caplog.text
    assert f"2-of-3.jsonl: {documents} documents, {prompt_tokens} prompt tokens" in caplog.text
    assert "spread over 3 shards" in caplog.text


def test_spread_counts_empty_shards_and_records_without_a_shard():
    assert teacher.spread([(2, 100), (0, 0), (4, 200)]) == {
        "documents": {"min": 0, "max": 4, "mean": 2.0, "max_over_mean": 2.0},
        "prompt_tokens": {"min": 0, "max": 200, "mean": 100.0, "max_over_mean": 2.0},
    }
    assert teacher._shard_spread({(1, 3): [2, 100], (3, 3): [4, 200]})["documents"]["min"] == 0
    assert teacher._shard_spread({(None, None): [3, 10]}) is None


def test_gather_names_a_record_repeated_within_a_shard(tmp_path):
    _, split, ids = make_corpus(tmp_path, n=3)
    write_jsonl(tmp_path / "a.jsonl", [_record(d) for d in ids] + [_record(ids[1])])
    with pytest.raises(ClinsumError, match=r"a.jsonl:4: document 'doc1' appears more than once"):
        teacher.gather(split, [tmp_path / "a.jsonl"], tmp_path / "en.jsonl")
    assert not (tmp_path / "en.jsonl").exists()
