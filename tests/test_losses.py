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
    label_totals,
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


@pytest.mark.parametrize("beta", [0.0, 0.4])
def test_micro_batches_accumulate_the_whole_steps_gradient(model, tokenizer, beta):
    """A step split into micro-batches (any split) gives the loss and gradient of the step in one batch."""
    np = pytest.importorskip("numpy")
    gamma, temperature = 0.8, 2.0
    examples = _examples(tokenizer, ["summarize", "extract", "summarize", "extract", "extract"])
    rng = np.random.default_rng(0)
    for example in examples:
        if example["task"] == TASK_ID["extract"]:
            rows = len(example["answer_ids"]) - 1
            example["teacher_ids"] = rng.integers(0, model.config.vocab_size, size=(rows, 4)).astype(np.int32)
            example["teacher_logprobs"] = np.log(rng.dirichlet(np.ones(5), size=rows)[:, :4]).astype(np.float32)

    def run(groups):
        model.zero_grad()
        batches = [collate([examples[i] for i in group], pad_id=tokenizer.pad_token_id) for group in groups]
        totals = label_totals(batches, beta)
        total_loss, sums = 0.0, {"loss_sum": 0.0, "loss_ext": 0.0, "loss_kl": 0.0}
        for batch in batches:
            batch.pop("useful_tokens")
            loss, parts = batch_loss(model, batch, gamma, beta, temperature, chunk_size=7, totals=totals)
            loss.backward()
            total_loss += loss.item()
            for key in sums:
                sums[key] += parts[key]
        return total_loss, sums, totals, {name: p.grad.clone() for name, p in model.named_parameters()}

    whole = run([[0, 1, 2, 3, 4]])
    for groups in ([[0], [1], [2], [3], [4]], [[4, 0], [2, 3, 1]]):
        split = run(groups)
        assert split[0] == pytest.approx(whole[0], abs=1e-5)
        assert split[2] == whole[2]
        for key in whole[1]:
            assert split[1][key] == pytest.approx(whole[1][key], abs=1e-5)
        for name in whole[3]:
            torch.testing.assert_close(split[3][name], whole[3][name], atol=1e-5, rtol=1e-4, msg=name)
    assert whole[2]["n_kl"] == (sum(len(e["answer_ids"]) - 1 for e in examples if e["task"] == 1) if beta else 0)


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
    """T² · KL(softmax(log p / T) ‖ softmax(z / T)) on full-vocabulary tensors."""
    p_t = torch.log_softmax(teacher_logprobs_full / temperature, -1)
    logq = torch.log_softmax(student_logits / temperature, -1)
    return temperature**2 * (p_t.exp() * (p_t - logq)).sum(-1)


def _dense_topk_tail_kl(teacher_logprobs_full, student_logits, k, temperature):
    """The formula written out on full-vocabulary tensors (the test's own implementation): the teacher's
    top-k ids and its tail as k+1 outcomes, both sides tempered, times T²."""
    top = teacher_logprobs_full.topk(k, -1)
    p = torch.cat([top.values.exp(), 1 - top.values.exp().sum(-1, keepdim=True)], -1)
    p_t = p ** (1 / temperature)
    p_t = p_t / p_t.sum(-1, keepdim=True)
    q = torch.softmax(student_logits / temperature, -1)
    q_k = q.gather(1, top.indices)
    q = torch.cat([q_k, 1 - q_k.sum(-1, keepdim=True)], -1)
    return temperature**2 * (p_t * (p_t.log() - q.log())).sum(-1)


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
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kl_small_k_matches_formula(k, temperature):
    torch.manual_seed(1)
    vocab = 300
    teacher = torch.log_softmax(torch.randn(6, vocab) * 3, -1)
    student = (torch.randn(6, vocab) * 2).requires_grad_()
    top = teacher.topk(k, -1)
    ours = topk_kl_with_tail(student, top.indices, top.values, temperature)
    expected = _dense_topk_tail_kl(teacher.double(), student.double(), k, temperature).float()
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


def _direct_outcomes_kl(student_logits, teacher_ids, teacher_logprobs, temperature):
    """The KL written out over the k+1 outcomes, one row at a time, in float64 and without any scatter: the
    teacher's present ids (0 ≤ id < V) with their probabilities, then the tail holding 1 − Σ present (the mass
    of the absent ids included); the student's probabilities of the same ids, and of every other id as its
    tail. Both sides tempered, times T²."""
    vocab = student_logits.shape[-1]
    rows = []
    for row in range(student_logits.shape[0]):
        q = torch.softmax(student_logits[row].double() / temperature, -1)
        kept = [(int(i), lp) for i, lp in zip(teacher_ids[row].tolist(), teacher_logprobs[row].double()) if 0 <= i < vocab]
        p = torch.stack([lp.exp() for _, lp in kept])
        outcomes = torch.cat([p, (1 - p.sum()).reshape(1)])
        tempered = outcomes ** (1 / temperature) / (outcomes ** (1 / temperature)).sum()
        q_kept = torch.stack([q[i] for i, _ in kept])
        student = torch.cat([q_kept, (1 - q_kept.sum()).reshape(1)])
        rows.append(temperature**2 * (tempered * (tempered.log() - student.log())).sum())
    return torch.stack(rows)


# A vocabulary of 13 whose teacher top-4 holds id 0 and then an absent id (a larger teacher head's row).
KL_TOY_LOGITS = torch.tensor([[1.5, -0.3, 0.8, 2.1, -1.2, 0.4, 0.0, 1.1, -0.7, 0.9, -2.0, 0.3, 1.7]])
KL_TOY_IDS = torch.tensor([[0, 13, 5, 7]])
KL_TOY_LOGPROBS = torch.log(torch.tensor([[0.4, 0.2, 0.15, 0.1]]))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kl_absent_id_after_id_0_is_exact(temperature):
    """An absent id mapped next to a real id 0 must not unmark it: id 0's student mass is counted once, in the
    top-k, not also in the tail (the old scatter of `present` to a shared placeholder index did that)."""
    ours = topk_kl_with_tail(KL_TOY_LOGITS, KL_TOY_IDS, KL_TOY_LOGPROBS, temperature)
    direct = _direct_outcomes_kl(KL_TOY_LOGITS, KL_TOY_IDS, KL_TOY_LOGPROBS, temperature)
    assert ours.item() == pytest.approx(direct.item(), abs=1e-6)
    assert ours.item() >= 0
    # every order of the same top-k, the absent id before or after id 0, and -1 as the absent marker
    for order in ([1, 0, 2, 3], [2, 3, 1, 0], [3, 1, 0, 2]):
        ids, logprobs = KL_TOY_IDS[:, order], KL_TOY_LOGPROBS[:, order]
        assert topk_kl_with_tail(KL_TOY_LOGITS, ids, logprobs, temperature).item() == pytest.approx(direct.item(), abs=1e-6)
    marked = torch.where(KL_TOY_IDS >= 13, -1, KL_TOY_IDS)
    assert topk_kl_with_tail(KL_TOY_LOGITS, marked, KL_TOY_LOGPROBS, temperature).item() == pytest.approx(direct.item(), abs=1e-6)


def test_topk_kl_absent_ids_give_the_same_value_every_call():
    """No write order decides the value: many absent ids share the placeholder, and repeated calls agree."""
    torch.manual_seed(5)
    student = torch.randn(16, 13) * 2
    ids = torch.tensor([[0, 13, 20, 5, -1, 7]] * 16)
    logprobs = torch.log(torch.tensor([[0.3, 0.2, 0.1, 0.1, 0.1, 0.05]] * 16))
    first = topk_kl_with_tail(student, ids, logprobs, 1.0)
    for _ in range(20):
        assert torch.equal(topk_kl_with_tail(student, ids, logprobs, 1.0), first)
    torch.testing.assert_close(first.double(), _direct_outcomes_kl(student, ids, logprobs, 1.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kl_gradient_equals_autograd_of_the_direct_formula(temperature):
    logits = KL_TOY_LOGITS.clone().requires_grad_()
    topk_kl_with_tail(logits, KL_TOY_IDS, KL_TOY_LOGPROBS, temperature).sum().backward()
    reference = KL_TOY_LOGITS.double().clone().requires_grad_()
    _direct_outcomes_kl(reference, KL_TOY_IDS, KL_TOY_LOGPROBS, temperature).sum().backward()
    torch.testing.assert_close(logits.grad.double(), reference.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_topk_kl_minimiser_is_the_tempered_teacher(temperature):
    """Free student logits trained on the loss end where softmax(z / T) equals the tempered teacher on the
    k ids and the tail bucket, so that softmax(z) puts the teacher's own top-k probabilities on those ids."""
    vocab, k = 12, 3
    teacher_ids = torch.tensor([[4, 0, 9]])
    p = torch.tensor([[0.5, 0.25, 0.15]])  # tail: 0.10
    logits = torch.zeros(1, vocab, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], lr=0.5, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        optimizer.zero_grad()
        loss = topk_kl_with_tail(logits, teacher_ids, p.log(), temperature).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    outcomes = torch.cat([p, 1 - p.sum(-1, keepdim=True)], -1)
    tempered = outcomes ** (1 / temperature) / (outcomes ** (1 / temperature)).sum(-1, keepdim=True)
    q = torch.softmax(logits.detach() / temperature, -1)
    in_topk = torch.zeros(vocab, dtype=torch.bool)
    in_topk[teacher_ids[0]] = True
    student = torch.cat([q[:, teacher_ids[0]], q[:, ~in_topk].sum(-1, keepdim=True)], -1)
    torch.testing.assert_close(student, tempered, atol=1e-4, rtol=0)
    assert topk_kl_with_tail(logits.detach(), teacher_ids, p.log(), temperature).item() == pytest.approx(0, abs=1e-6)
    # untempered, the student's own distribution gives the teacher's top-k ratios back
    untempered = torch.softmax(logits.detach(), -1)[0, teacher_ids[0]]
    torch.testing.assert_close(untempered / untempered.sum(), p[0] / p[0].sum(), atol=1e-3, rtol=0)


def test_topk_kl_scales_with_temperature_squared():
    torch.manual_seed(3)
    teacher = torch.log_softmax(torch.randn(4, 40) * 2, -1)
    student = torch.randn(4, 40)
    top = teacher.topk(40, -1)
    t = 3.0
    p_t = torch.log_softmax(teacher / t, -1)
    plain = (p_t.exp() * (p_t - torch.log_softmax(student / t, -1))).sum(-1)
    torch.testing.assert_close(topk_kl_with_tail(student, top.indices, top.values, t), t**2 * plain, atol=1e-5, rtol=1e-5)


def test_topk_kl_across_qwen_head_sizes():
    """A Qwen2.5-72B teacher (152,064-row head) against a Qwen2.5-0.5B student (151,936 rows): teacher ids
    the student's head lacks carry their mass into the tail bucket, and the loss stays finite."""
    student_vocab, teacher_vocab = 151_936, 152_064
    torch.manual_seed(4)
    student = torch.randn(2, student_vocab, requires_grad=True)
    teacher_ids = torch.tensor([[17, 151_935, 151_940, 152_063], [5, 6, 7, 8]])
    teacher_lp = torch.log(torch.tensor([[0.4, 0.2, 0.15, 0.05], [0.3, 0.3, 0.2, 0.1]]))
    assert int(teacher_ids.max()) < teacher_vocab
    ours = topk_kl_with_tail(student, teacher_ids, teacher_lp, 1.0)
    # row 0 equals the KL over its two ids the student has, with 0.4 of the mass in the tail
    kept = topk_kl_with_tail(student[:1], teacher_ids[:1, :2], teacher_lp[:1, :2], 1.0)
    torch.testing.assert_close(ours[:1], kept)
    q = torch.softmax(student.detach()[0].double(), -1)
    p = torch.tensor([0.4, 0.2, 0.4], dtype=torch.float64)
    q3 = torch.stack([q[17], q[151_935], 1 - q[17] - q[151_935]])
    assert ours[0].item() == pytest.approx(float((p * (p / q3).log()).sum()), rel=1e-4)
    ours.sum().backward()
    assert torch.isfinite(student.grad).all()


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
