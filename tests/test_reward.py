"""The reward-tuned variant: each reward term on tiny inputs, the stage through TRL's GRPOTrainer on a tiny model
(resumed after a kill), and the grpo variant in the DAG."""

from __future__ import annotations


import pytest

from clinsum import reward, rewards
from clinsum.io import ClinsumError, read_json, write_json, write_jsonl
from clinsum.settings import parse_settings

REPORT = "A 58-year-old man had fever of 39.2 °C; CRP 187 mg/L. Levofloxacin 750 mg daily for 10 days."
REFERENCE = "A 58-year-old man with Legionella pneumonia was treated with levofloxacin 750 mg for 10 days."


def test_rouge_lsum_is_the_2026_scorers():
    from rouge_score import rouge_scorer

    summary = "Man of 58 with pneumonia.\nTreated with levofloxacin."
    expected = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=False).score(REFERENCE, summary)["rougeLsum"].fmeasure
    assert rewards.rouge_lsum(summary, REFERENCE) == pytest.approx(expected)
    assert rewards.rouge_lsum(REFERENCE, REFERENCE) == pytest.approx(1.0)
    assert rewards.rouge_lsum("", REFERENCE) == 0.0


def test_faithfulness_is_the_share_of_supported_numbers():
    assert rewards.faithfulness("Fever 39.2 °C, levofloxacin 750 mg.", REPORT, "en") == 1.0
    assert rewards.faithfulness("Fever 39.2 °C, levofloxacin 750 g.", REPORT, "en") == 0.5  # a dose in grams
    assert rewards.faithfulness("Levofloxacin 500 mg for 7 days, CRP 187 mg/L.", REPORT, "en") == pytest.approx(1 / 3)
    assert rewards.faithfulness("A man with pneumonia.", REPORT, "en") == 1.0  # no number, nothing unsupported


def test_degeneration_penalty_and_length():
    assert rewards.degeneration("A man with pneumonia treated with levofloxacin.") == 0.0
    assert rewards.degeneration("la necesidad de la necesidad de la necesidad de la necesidad de la necesidad de") == -1.0
    assert rewards.degeneration("") == -1.0
    assert rewards.degeneration("A man with pneumonia", "length") == -1.0  # cut at the token limit
    assert rewards.length("x" * 50, "y" * 100) == 0.5 == rewards.length("x" * 200, "y" * 100)
    assert rewards.length("x" * 100, "y" * 100) == 1.0 and rewards.length("", "y") == 0.0


def test_the_weighted_reward_and_the_trl_functions():
    values = rewards.term_values("Fever 39.2 °C, levofloxacin 750 g.", REPORT, REFERENCE, "en")
    weights = {"rouge": 1.0, "bertscore": 0.0, "faithfulness": 2.0, "degeneration": 1.0, "length": 0.5}
    assert rewards.weighted(values, weights) == pytest.approx(values["rouge"] + 2 * 0.5 + 0 + 0.5 * values["length"])
    functions, kept = rewards.trl_reward_functions(weights, None, max_new_tokens=4)
    assert [f.__name__ for f in functions] == ["reward_rouge", "reward_faithfulness", "reward_degeneration", "reward_length"]
    assert kept == [1.0, 2.0, 1.0, 0.5]
    completions = [[{"role": "assistant", "content": "Fever 39.2 °C, levofloxacin 750 g."}], "A man."]
    columns = {"report": [REPORT, REPORT], "reference": [REFERENCE, REFERENCE], "lang": ["en", "en"]}
    assert functions[1](completions, **columns) == [0.5, 1.0]
    # the second completion used all 4 new tokens: cut at the limit, a degenerate summary
    assert functions[2](completions, completion_ids=[[1, 2, 3], [1, 2, 3, 4]], **columns) == [0.0, -1.0]
    with pytest.raises(ClinsumError, match="needs the evaluation's encoder"):
        reward._bertscore_scorer({"weights": {"bertscore": 1.0}}, None, None, "cpu")
    assert reward._bertscore_scorer({"weights": {"bertscore": 0.0}}, None, None, "cpu") is None
    assert reward.passes_per_step({"prompts_per_step": 2, "group_size": 4, "summaries_per_batch": 4}) == 2
    with pytest.raises(ClinsumError, match=r"summaries_per_batch \(3\) does not divide a step's 8 summaries"):
        reward.passes_per_step({"prompts_per_step": 2, "group_size": 4, "summaries_per_batch": 3})


def test_the_bertscore_term_scores_each_language_as_its_evaluation(bertscore_encoder_dir):
    from clinsum.metrics import bertscore

    settings = {"en": {"model": "all-minilm-l6-v2", "num_layers": 6, "batch_size": 16, "max_tokens": None, "clamp": False},
                "fr": {"model": "all-minilm-l6-v2", "num_layers": 3, "batch_size": 2, "max_tokens": 8, "clamp": True}}
    encoders = {"en": str(bertscore_encoder_dir), "fr": str(bertscore_encoder_dir)}
    score = reward._bertscore_scorer({"weights": {"bertscore": 1.0}}, settings, encoders, "cpu")
    summaries = ["A man with pneumonia.", "Un homme avec une pneumonie traitée par lévofloxacine.", "Levofloxacin 750 mg."]
    references = [REFERENCE, "Homme de 58 ans, pneumonie à Legionella, lévofloxacine 750 mg pendant 10 jours.", REFERENCE]
    values = score(summaries, references, ["en", "fr", "en"])
    en = bertscore([summaries[0], summaries[2]], [references[0], references[2]], str(bertscore_encoder_dir), 6, 16)
    fr = bertscore([summaries[1]], [references[1]], str(bertscore_encoder_dir), 3, 2, max_tokens=8, clamp=True)
    assert values == pytest.approx([en[0]["bertscore_f"], fr[0]["bertscore_f"], en[1]["bertscore_f"]])
    assert values[0] != pytest.approx(values[2])
    with pytest.raises(ClinsumError, match="no encoder for language pt"):
        score(["x"], ["y"], ["pt"])
    functions, _ = rewards.trl_reward_functions({"bertscore": 1.0}, score)
    assert functions[0](["A man with pneumonia."], report=[REPORT], reference=[REFERENCE], lang=["en"]) == pytest.approx(
        [en[0]["bertscore_f"]])


def _settings(**reward_changes):
    return parse_settings({"reward": {"steps": 3, "prompts_per_step": 1, "group_size": 2, "summaries_per_batch": 2,
                                      "max_new_tokens": 8, "save_every": 1, **reward_changes},
                           "prompts": {"summarize": {"en": "Summarize clinical text"}, "role": "system", "extract": "x"}})


def _corpus(tmp_path):
    docs = [{"id": f"d{i}", "lang": "en", "text": REPORT.replace("58", str(50 + i)), "summary": REFERENCE} for i in range(4)]
    docs.append({"id": "t1", "lang": "en", "text": REPORT, "summary": None, "test_set": True})
    write_jsonl(tmp_path / "en.jsonl", docs)
    write_json(tmp_path / "en.json", {"lang": "en", "train": [d["id"] for d in docs[:3]], "valid": ["d3"], "test": ["t1"]})
    return {"en": str(tmp_path / "en.jsonl")}, {"en": str(tmp_path / "en.json")}


def test_training_prompts_are_the_inference_prompts_of_the_train_split(tmp_path, tiny_student_dir):
    from clinsum.chat import build_messages
    from clinsum.model_files import load_tokenizer

    corpus, split = _corpus(tmp_path)
    tokenizer = load_tokenizer(tiny_student_dir)
    settings = _settings()
    rows = reward.training_prompts(corpus, split, tokenizer, settings["prompts"], 4096)
    assert [row["id"] for row in rows] == ["d0", "d1", "d2"]  # train only: not valid, not the test set
    assert rows[0]["prompt"] == build_messages("Summarize clinical text", rows[0]["report"], role="system")
    cropped = reward.training_prompts(corpus, split, tokenizer, settings["prompts"], 40)
    texts = {row["id"]: row["report"] for row in rows}
    assert all(0 < len(row["report"]) < len(texts[row["id"]]) and texts[row["id"]].startswith(row["report"]) for row in cropped)


class StopAt:
    """A TRL callback that kills the run after a step (as a SIGKILL would, once that step's checkpoint is saved)."""

    def __init__(self, step):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt(f"killed after step {step}")

        self.callback = Callback()


@pytest.mark.slow
def test_grpo_tunes_a_tiny_model_and_resumes_after_a_kill(tmp_path, tiny_student_dir):
    corpus, split = _corpus(tmp_path)
    settings = _settings()
    out, checkpoints = tmp_path / "grpo", tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        reward.tune(tiny_student_dir, corpus, split, settings["reward"], settings["prompts"], out, checkpoints,
                    callbacks=[StopAt(2).callback])
    assert (checkpoints / "checkpoint-2").is_dir() and not out.exists()
    summary = reward.tune(tiny_student_dir, corpus, split, settings["reward"], settings["prompts"], out, checkpoints)
    assert summary["steps"] == 3 and summary["resumed_from"].endswith("checkpoint-2") and summary["reports"] == 3
    assert read_json(out / "reward.json")["steps"] == 3 and not checkpoints.exists()
    log = (out / "train_log.csv").read_text().splitlines()
    header = log[0].split(",")
    assert {"reward", "reward_rouge", "reward_faithfulness", "reward_degeneration", "reward_length", "kl"} <= set(header)
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3"]  # the log resumes with the checkpoint
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0
    # other settings: the checkpoint folder of a killed run is not resumed
    with pytest.raises(KeyboardInterrupt):
        reward.tune(tiny_student_dir, corpus, split, settings["reward"], settings["prompts"], out, checkpoints,
                    callbacks=[StopAt(1).callback])
    changed = _settings(lr=2e-6)
    summary = reward.tune(tiny_student_dir, corpus, split, changed["reward"], changed["prompts"], out, checkpoints)
    assert summary["resumed_from"] is None and summary["steps"] == 3
