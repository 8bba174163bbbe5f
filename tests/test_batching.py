"""Length-grouped batches under a token budget: every example once per epoch, budget respected, little padding."""

from __future__ import annotations

import random

import pytest

from clinsum.batching import collate, length_grouped_batches, padded_tokens
from clinsum.batching import epoch_seed
from clinsum.steps import training_plan


def _lengths(n=1000, seed=0):
    rng = random.Random(seed)
    # the paper's mix: prompt ~1000 tokens, answers ~180 (summary) or ~500 (key information)
    return [min(2566, max(30, int(rng.gauss(1000, 400)))) + rng.choice([rng.randint(20, 400), rng.randint(200, 512)]) for _ in range(n)]


@pytest.mark.parametrize("budget", [4096, 16384])
def test_every_example_exactly_once_within_budget(budget):
    lengths = _lengths()
    batches = length_grouped_batches(lengths, budget, seed=3)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert padded_tokens([lengths[i] for i in batch]) <= budget
    # grouping by length wastes little: under 10% padding on this mix
    padded = sum(padded_tokens([lengths[i] for i in batch]) for batch in batches)
    assert sum(lengths) / padded > 0.9


def test_oversized_sequence_gets_its_own_batch():
    lengths = [10, 5000, 20, 30]
    batches = length_grouped_batches(lengths, 100, seed=0)
    assert [1] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
    assert all(padded_tokens([lengths[i] for i in b]) <= 100 for b in batches if b != [1])


def test_deterministic_per_seed_and_different_per_epoch():
    lengths = _lengths(300)
    first = length_grouped_batches(lengths, 8192, seed=epoch_seed(42, 0))
    assert first == length_grouped_batches(lengths, 8192, seed=epoch_seed(42, 0))
    second = length_grouped_batches(lengths, 8192, seed=epoch_seed(42, 1))
    assert first != second
    assert sorted(i for b in second for i in b) == list(range(300))


def test_small_pools_still_cover_everything():
    lengths = _lengths(97, seed=5)
    batches = length_grouped_batches(lengths, 3000, seed=1, pool_batches=1)
    assert sorted(i for b in batches for i in b) == list(range(97))


def test_bad_budget():
    with pytest.raises(ValueError):
        length_grouped_batches([1, 2], 0, seed=0)


def test_training_plan_fractional_epochs():
    assert training_plan([10, 11, 12], 3) == [10, 11, 12]
    assert training_plan([10, 11], 1.5) == [10, 6]
    assert training_plan([10], 0.01) == [1]


def test_collate_teacher_rows_line_up_with_answer_positions():
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    examples = [
        {"input_ids": [1, 2, 3, 4, 5, 6], "prompt_len": 3, "task": 1,
         "teacher_ids": np.array([[4, 9], [5, 8]], dtype=np.int32),
         "teacher_logprobs": np.array([[-0.1, -2.0], [-0.2, -3.0]], dtype=np.float32)},
        {"input_ids": [1, 2, 7, 8], "prompt_len": 2, "task": 0},
    ]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [1, 2, 7, 8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 4, 5, 6], [-100, -100, 7, 8, -100, -100]]
    assert batch["teacher_ids"].shape == (2, 6, 2)
    # row j of the teacher's top-k belongs to answer position j (label position prompt_len + j)
    assert batch["teacher_ids"][0, 3].tolist() == [4, 9]
    assert batch["teacher_ids"][0, 4].tolist() == [5, 8]
    assert (batch["teacher_ids"][0, :3] == -1).all() and (batch["teacher_ids"][0, 5] == -1).all()
    assert (batch["teacher_ids"][1] == -1).all()
    assert torch.allclose(batch["teacher_logprobs"][0, 4], torch.tensor([-0.2, -3.0]))
    assert batch["useful_tokens"] == 10


def test_document_units_stay_together_and_batches_mix_tasks():
    from clinsum.train.data import document_units

    rng = random.Random(4)
    langs, ids, lengths, tasks = [], [], [], []
    for doc in range(200):
        prompt = rng.randint(100, 2566)
        for task, answer in (("summarize", rng.randint(20, 400)), ("extract", rng.randint(200, 512))):
            langs.append("en")
            ids.append(f"d{doc}")
            lengths.append(prompt + answer)
            tasks.append(task)
    # a document without its extract sequence (no teacher output) is a unit of one
    langs.append("fr"), ids.append("d0"), lengths.append(700), tasks.append("summarize")
    units = document_units(langs, ids)
    assert len(units) == 201 and [len(u) for u in units].count(1) == 1
    batches = length_grouped_batches(lengths, 16384, seed=0, units=units)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    where = {i: n for n, b in enumerate(batches) for i in b}
    for unit in units:
        assert len({where[i] for i in unit}) == 1, "a document's sequences were split across batches"
    for batch in batches:
        assert padded_tokens([lengths[i] for i in batch]) <= 16384 or len(batch) <= 2
        if len(batch) > 1:
            assert {tasks[i] for i in batch} == {"summarize", "extract"}
    padded = sum(padded_tokens([lengths[i] for i in b]) for b in batches)
    assert sum(lengths) / padded > 0.8


@pytest.mark.parametrize("per_step", [1, 2, 7])
def test_document_steps_take_whole_documents_per_step(per_step):
    from clinsum.batching import document_steps
    from clinsum.steps import steps_per_epoch

    lengths = _lengths(203, seed=6)
    steps = document_steps(lengths, per_step, seed=epoch_seed(42, 0), pool_steps=8)
    assert sorted(u for step in steps for u in step) == list(range(203))
    assert len(steps) == steps_per_epoch(203, per_step) == -(-203 // per_step)
    assert all(len(step) == per_step for step in steps[:-1]) and 1 <= len(steps[-1]) <= per_step
    assert steps == document_steps(lengths, per_step, seed=epoch_seed(42, 0), pool_steps=8)
    assert steps != document_steps(lengths, per_step, seed=epoch_seed(42, 1), pool_steps=8)
    if per_step > 1:
        # documents of similar length share a step: much less spread inside steps than between random pairs
        spread = sum(max(lengths[u] for u in s) - min(lengths[u] for u in s) for s in steps) / len(steps)
        rng = random.Random(0)
        shuffled = rng.sample(range(203), 203)
        random_spread = sum(
            max(lengths[u] for u in shuffled[i : i + per_step]) - min(lengths[u] for u in shuffled[i : i + per_step])
            for i in range(0, 203, per_step)
        ) / len(steps)
        assert spread < 0.5 * random_spread
    with pytest.raises(ValueError):
        document_steps(lengths, 0, seed=0)


def test_micro_batches_cover_the_step_under_the_budget():
    from clinsum.batching import micro_batches

    lengths = [3078, 1200, 900, 3000, 50, 5000]
    rows = [0, 1, 2, 3, 4, 5]
    batches = micro_batches(rows, lengths, 6200)
    assert sorted(r for b in batches for r in b) == rows
    assert [5] in batches  # over the budget: alone
    assert all(padded_tokens([lengths[r] for r in b]) <= 6200 for b in batches if b != [5])
    assert micro_batches([1, 2], lengths, 10**6) == [[1, 2]]
