"""The Stage 2 objective: assistant-only labels, the batched dual loss against the model's own per-sequence
loss, chunked logits only at labelled positions, and the top-k KL with its tail bucket."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from clinsum.batching import collate  # noqa: E402
from clinsum.chat import build_messages, encode_example  # noqa: E402
from clinsum.losses import (  # noqa: E402
    IGNORE_INDEX,
    TASK_ID,
    batch_loss,
    dual_loss,
    example_labels,
    teacher_answer_ids,
    topk_kl_with_tail,
)

REPORTS = [
    "A 45-year-old man presented with chest pain and dyspnea.",
    "Paciente de 62 años con fiebre, tos productiva y consolidación en la radiografía de tórax derecha.",
    "Une femme de 30 ans consulte pour des céphalées. IRM normale. Évolution favorable sous traitement.",
    "Short.",
    "Homem de 70 anos com insuficiência renal crónica, hipertensão e diabetes; internado por edema agudo do pulmão.",
]
ANSWERS = [
    "Chest pain, dyspnea.",
    "Neumonía adquirida en la comunidad en un paciente de 62 años tratado con antibióticos durante diez días.",
    "Céphalées.",
    "Nothing notable in this very short report at all, and the answer is longer than the report itself.",
    "IRC, HTA, DM; EAP.",
]


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.train()


def _examples(tokenizer, tasks):
    examples = []
    for report, answer, task in zip(REPORTS, ANSWERS, tasks):
        instruction = "Summarize clinical text" if task == "summarize" else "Extract the key information from clinical text"
        prompt_ids, answer_ids = encode_example(tokenizer, build_messages(instruction, report, answer))
        examples.append(
            {"input_ids": prompt_ids + answer_ids, "prompt_len": len(prompt_ids), "task": TASK_ID[task], "answer_ids": answer_ids}
        )
    return examples


def _reference_loss(model, examples, gamma):
    """The model's own `labels=` loss on each sequence alone, combined per task by label-token count."""
    totals = {0: 0.0, 1: 0.0}
    counts = {0: 0, 1: 0}
    for example in examples:
        input_ids, labels = example_labels(example["input_ids"][: example["prompt_len"]], example["answer_ids"])
        loss = model(input_ids=torch.tensor([input_ids]), labels=torch.tensor([labels])).loss
        n = len(example["answer_ids"])  # shifted: every answer token is predicted by the position before it
        totals[example["task"]] = totals[example["task"]] + loss * n
        counts[example["task"]] += n
    return gamma * totals[0] / counts[0] + (1 - gamma) * totals[1] / counts[1]


def test_example_labels_mask_the_prompt():
    input_ids, labels = example_labels([1, 2, 3], [7, 8])
    assert input_ids == [1, 2, 3, 7, 8]
    assert labels == [IGNORE_INDEX] * 3 + [7, 8]


def test_collate_labels_only_answers_with_end_of_turn(tokenizer):
    examples = _examples(tokenizer, ["summarize", "extract", "summarize", "extract", "extract"])
    batch = collate(examples, pad_id=tokenizer.pad_token_id)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    width = batch["input_ids"].shape[1]
    assert width == max(len(e["input_ids"]) for e in examples)
    assert batch["useful_tokens"] == sum(len(e["input_ids"]) for e in examples)
    for row, example in enumerate(examples):
        labels = batch["labels"][row].tolist()
        start, end = example["prompt_len"], len(example["input_ids"])
        assert all(label == IGNORE_INDEX for label in labels[:start]), "a prompt position is labelled"
        assert all(label == IGNORE_INDEX for label in labels[end:]), "a padding position is labelled"
        assert labels[start:end] == example["answer_ids"]
        assert im_end in labels[start:end], "the end-of-turn token must be learned"
        assert batch["input_ids"][row, end:].eq(tokenizer.pad_token_id).all()
    assert batch["task"].tolist() == [0, 1, 0, 1, 1]


@pytest.mark.parametrize("chunk_size", [1024, 7])
def test_batched_dual_loss_equals_per_sequence_reference(model, tokenizer, chunk_size):
    gamma = 0.8
    examples = _examples(tokenizer, ["summarize", "extract", "summarize", "extract", "extract"])
    lengths = {len(e["input_ids"]) for e in examples}
    assert len(lengths) == len(examples), "the test needs mixed lengths (padding)"
    batch = collate(examples, pad_id=tokenizer.pad_token_id)
    batch.pop("useful_tokens")

    model.zero_grad()
    loss, parts = batch_loss(model, batch, gamma=gamma, chunk_size=chunk_size)
    loss.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    reference = _reference_loss(model, examples, gamma)
    reference.backward()

    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    assert parts["n_sum"] == sum(len(e["answer_ids"]) for e in examples if e["task"] == 0)
    assert parts["n_ext"] == sum(len(e["answer_ids"]) for e in examples if e["task"] == 1)
    assert gamma * parts["loss_sum"] + (1 - gamma) * parts["loss_ext"] == pytest.approx(loss.item(), abs=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-5, rtol=1e-4, msg=f"gradient of {name}")


def test_logits_only_at_labelled_positions_in_chunks(model, tokenizer):
    examples = _examples(tokenizer, ["summarize", "extract", "summarize", "extract", "extract"])
    batch = collate(examples, pad_id=tokenizer.pad_token_id)
    batch.pop("useful_tokens")
    rows_seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda module, args, out: rows_seen.append(args[0].shape))
    try:
        with torch.no_grad():
            batch_loss(model, batch, gamma=0.8, chunk_size=16)
    finally:
        hook.remove()
    labelled = sum(len(e["answer_ids"]) for e in examples)
    assert all(len(shape) == 2 and shape[0] <= 16 for shape in rows_seen), rows_seen
    assert sum(shape[0] for shape in rows_seen) == labelled


def test_dual_loss_reduction_and_missing_task():
    nll = torch.tensor([1.0, 3.0, 2.0, 4.0, 6.0])
    task = torch.tensor([0, 0, 1, 1, 1])
    loss, parts = dual_loss(nll, task, gamma=0.8)
    assert loss.item() == pytest.approx(0.8 * 2.0 + 0.2 * 4.0)
    assert (parts["n_sum"], parts["n_ext"]) == (2, 3)
    # a batch without extract sequences: the summary term keeps its weight, nothing is renormalized
    only_sum, _ = dual_loss(nll[:2], task[:2], gamma=0.8)
    assert only_sum.item() == pytest.approx(0.8 * 2.0)
    # standard: gamma 1
    standard, _ = dual_loss(nll[:2], task[:2], gamma=1.0)
    assert standard.item() == pytest.approx(2.0)
    kl = torch.tensor([0.0, 0.0, 0.5, 1.5, 0.0])
    kl_mask = torch.tensor([False, False, True, True, False])
    with_kl, parts = dual_loss(nll, task, gamma=0.8, kl=kl, kl_mask=kl_mask, beta=0.25)
    assert with_kl.item() == pytest.approx(0.8 * 2.0 + 0.2 * (0.75 * 4.0 + 0.25 * 1.0))
    assert parts["n_kl"] == 2 and parts["loss_kl"] == pytest.approx(1.0)


def test_teacher_answer_ids_alignment():
    end_of_turn = [2, 10]  # <|im_end|>, "\n"
    special = {0, 1, 2}
    # stopped on <|im_end|>: its row is kept, the "\n" after it has no teacher row
    assert teacher_answer_ids([5, 6, 7, 2], end_of_turn, special, budget=512) == ([5, 6, 7, 2, 10], 4)
    # stopped on another stop token: dropped, and no row for the template's end of turn
    assert teacher_answer_ids([5, 6, 7, 0], end_of_turn, special, budget=512) == ([5, 6, 7, 2, 10], 3)
    # cut by max_new_tokens
    assert teacher_answer_ids([5, 6, 7], end_of_turn, special, budget=512) == ([5, 6, 7, 2, 10], 3)
    # cropped to the budget: content + end of turn fit, and the teacher's stop is gone
    assert teacher_answer_ids([5, 6, 7, 8, 2], end_of_turn, special, budget=4) == ([5, 6, 2, 10], 2)


def _dense_kl(teacher_logprobs_full, student_logits, temperature):
    p = teacher_logprobs_full.exp()
    logq = torch.log_softmax(student_logits / temperature, -1)
    return (p * (teacher_logprobs_full - logq)).sum(-1)


def _dense_topk_tail_kl(teacher_logprobs_full, student_logits, k, temperature):
    """The formula written out on full-vocabulary tensors (the test's own implementation)."""
    top = teacher_logprobs_full.topk(k, -1)
    p_k = top.values.exp()
    q = torch.softmax(student_logits / temperature, -1)
    q_k = q.gather(1, top.indices)
    p_tail = 1 - p_k.sum(-1)
    q_tail = 1 - q_k.sum(-1)
    return (p_k * (p_k.log() - q_k.log())).sum(-1) + p_tail * (p_tail.log() - q_tail.log())


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kl_full_vocabulary_is_exact(temperature):
    torch.manual_seed(0)
    vocab = 300
    teacher = torch.log_softmax(torch.randn(6, vocab) * 3, -1)
    student = torch.randn(6, vocab) * 2
    top = teacher.topk(vocab, -1)
    ours = topk_kl_with_tail(student, top.indices, top.values, temperature)
    torch.testing.assert_close(ours, _dense_kl(teacher, student, temperature), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_topk_kl_small_k_matches_formula(k):
    torch.manual_seed(1)
    vocab = 300
    teacher = torch.log_softmax(torch.randn(6, vocab) * 3, -1)
    student = (torch.randn(6, vocab) * 2).requires_grad_()
    top = teacher.topk(k, -1)
    ours = topk_kl_with_tail(student, top.indices, top.values, 1.0)
    expected = _dense_topk_tail_kl(teacher.double(), student.double(), k, 1.0).float()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert (ours >= -1e-6).all(), "a KL is never negative"
    ours.sum().backward()
    assert torch.isfinite(student.grad).all()


def test_topk_kl_absent_ids_move_to_tail():
    """Ids marked absent (-1, or beyond the student's vocabulary) count in the teacher's tail."""
    torch.manual_seed(2)
    teacher = torch.log_softmax(torch.randn(3, 50), -1)
    student = torch.randn(3, 50)
    top = teacher.topk(4, -1)
    ids = top.indices.clone()
    ids[:, 3] = -1
    with_absent = topk_kl_with_tail(student, ids, top.values, 1.0)
    top3 = topk_kl_with_tail(student, top.indices[:, :3], top.values[:, :3], 1.0)
    torch.testing.assert_close(with_absent, top3)
    ids[:, 3] = 10_000
    torch.testing.assert_close(topk_kl_with_tail(student, ids, top.values, 1.0), top3)


@pytest.mark.parametrize("k", ["vocab", 8])
def test_batched_kl_loss_equals_dense_reference_on_a_model(model, tokenizer, tiny_student_dir, k):
    """distil_kl on a tiny model: teacher rows from another model's full distribution; our batched loss vs a
    per-sequence dense computation (full logits, CE from the model's own loss)."""
    from transformers import AutoModelForCausalLM

    teacher_model = AutoModelForCausalLM.from_pretrained(tiny_student_dir, dtype=torch.float32)
    vocab = model.config.vocab_size
    topk = vocab if k == "vocab" else k
    gamma, beta, temperature = 0.7, 0.4, 1.5
    examples = _examples(tokenizer, ["summarize", "extract", "extract", "summarize", "extract"])
    teacher_full = {}
    for index, example in enumerate(examples):
        if example["task"] != TASK_ID["extract"]:
            continue
        with torch.no_grad():
            logits = teacher_model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
        start, n = example["prompt_len"], len(example["answer_ids"]) - 1  # no teacher row for the final "\n"
        full = torch.log_softmax(logits[start - 1 : start - 1 + n], -1)
        teacher_full[index] = full
        top = full.topk(topk, -1)
        example["teacher_ids"], example["teacher_logprobs"] = top.indices.numpy(), top.values.numpy()
    batch = collate(examples, pad_id=tokenizer.pad_token_id)
    batch.pop("useful_tokens")
    with torch.no_grad():
        loss, parts = batch_loss(model, batch, gamma=gamma, beta=beta, temperature=temperature, chunk_size=5)

        sums = {"ce_sum": 0.0, "ce_ext": 0.0, "kl": 0.0}
        counts = {"ce_sum": 0, "ce_ext": 0, "kl": 0}
        for index, example in enumerate(examples):
            input_ids = torch.tensor([example["input_ids"]])
            _, labels = example_labels(example["input_ids"][: example["prompt_len"]], example["answer_ids"])
            out = model(input_ids=input_ids, labels=torch.tensor([labels]))
            n = len(example["answer_ids"])
            key = "ce_sum" if example["task"] == 0 else "ce_ext"
            sums[key] += out.loss.item() * n
            counts[key] += n
            if index in teacher_full:
                full = teacher_full[index]
                start = example["prompt_len"]
                student = out.logits[0, start - 1 : start - 1 + full.shape[0]]
                if k == "vocab":
                    kl = _dense_kl(full, student, temperature)
                else:
                    kl = _dense_topk_tail_kl(full.double(), student.double(), topk, temperature)
                sums["kl"] += kl.sum().item()
                counts["kl"] += full.shape[0]
    expected_kl = sums["kl"] / counts["kl"]
    expected = gamma * sums["ce_sum"] / counts["ce_sum"] + (1 - gamma) * (
        (1 - beta) * sums["ce_ext"] / counts["ce_ext"] + beta * expected_kl
    )
    assert parts["n_kl"] == counts["kl"]
    assert parts["loss_kl"] == pytest.approx(expected_kl, abs=1e-5)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert not math.isnan(loss.item())
