"""Stage 2 training throughput: the paper code's recipe vs clinsum's, side by side on random weights.

Recipes (same model, same synthetic documents, AdamW step included, fp32 master weights with bf16
autocast on a GPU that supports it, fp32 on CPU):
- paper: each sequence padded to 3078 tokens with an attention mask, batch size 1, two forward passes per
  step (summarize, extract) combined as γ·L_sum + (1−γ)·L_ext, full logits through the model's `labels=`
  loss (its collator labels every non-padding token, prompt included).
- ours: length-grouped batches of whole documents (both tasks) under --tokens-per-batch, right padding without an
  attention mask, logits only at answer positions (clinsum.losses.batch_loss), optional gradient
  checkpointing.
- ours_max: ours on one fixed batch of --max-rows sequences at the maximum lengths (2566 + 512), the
  memory target (≤ 12 GiB on a GPU with ≥ 8 rows).

Useful tokens are non-padding tokens (prompt + answer) of both recipes. Each recipe runs in its own
process so its peak memory is its own (GPU: max allocated; CPU: peak resident set size). A recipe that
fails, by running out of memory say, is a `failed` row with its error (in the JSON too); the others still
run, and the exit status is 1.

    python benchmarks/train_throughput.py --device cuda --arch qwen0.5b --steps 20
    python benchmarks/train_throughput.py --device cpu --arch small --steps 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import random
import sys
import time
from pathlib import Path
from queue import Empty

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

ARCHS = {
    # Qwen2.5-0.5B(-Instruct): hidden 896, 24 layers, 14 heads, 2 kv heads, vocab 151936, tied embeddings
    "qwen0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                     intermediate_size=4864),
    # same vocabulary, a CPU-sized body
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=1024),
    # a test-sized body and vocabulary: the recipes' shapes (lengths, rows, padding) at CPU speed
    # (benchmarks/gpu_check.py's CPU run in tests/test_benchmarks.py)
    "toy": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=8192),
}
PROMPT_MAX, ANSWER_MAX = 2566, 512
PAPER_LENGTH = PROMPT_MAX + ANSWER_MAX  # 3078
GAMMA = 0.8
GIB = 1024**3


def build_model(arch: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        use_cache=False,
        **{"vocab_size": 151936, **ARCHS[arch]},
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def synthetic_documents(n: int, seed: int = 0) -> list[dict]:
    """Lengths of the MultiClinSum mix after cropping: prompt ~1000, summary ~180, key information ~500."""
    rng = random.Random(seed)

    def clip(value, low, high):
        return max(low, min(high, int(round(value))))

    return [
        {
            "prompt": clip(rng.gauss(1000, 400), 64, PROMPT_MAX),
            "summarize": clip(rng.gauss(180, 80), 16, ANSWER_MAX),
            "extract": clip(rng.gauss(500, 120), 32, ANSWER_MAX),
        }
        for _ in range(n)
    ]


def _ids(rng, n, vocab):
    return [rng.randrange(1000, vocab - 1000) for _ in range(n)]


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device):
    import contextlib

    import torch

    from clinsum.generation import native_bf16

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if native_bf16() else torch.float16)
    return contextlib.nullcontext()


def paper_steps(docs, vocab, device, pad_id=0):
    """(tensors for the step, useful tokens): two sequences padded to 3078, labels on every real token."""
    import torch

    rng = random.Random(1)
    for doc in docs:
        pair = []
        useful = 0
        for task in ("summarize", "extract"):
            n = doc["prompt"] + doc[task]
            ids = torch.full((1, PAPER_LENGTH), pad_id, dtype=torch.long)
            ids[0, :n] = torch.tensor(_ids(rng, n, vocab))
            mask = torch.zeros((1, PAPER_LENGTH), dtype=torch.long)
            mask[0, :n] = 1
            labels = ids.masked_fill(mask == 0, -100)
            pair.append((ids.to(device), mask.to(device), labels.to(device)))
            useful += n
        yield pair, useful


def our_steps(docs, vocab, device, tokens_per_batch):
    from clinsum.batching import collate, length_grouped_batches

    rng = random.Random(1)
    sequences = []
    for doc in docs:
        for task_id, task in enumerate(("summarize", "extract")):
            sequences.append(
                {"input_ids": _ids(rng, doc["prompt"] + doc[task], vocab), "prompt_len": doc["prompt"], "task": task_id}
            )
    # a document's two sequences share a batch (clinsum.train.data.document_units)
    units = [[2 * d, 2 * d + 1] for d in range(len(docs))]
    batches = length_grouped_batches([len(s["input_ids"]) for s in sequences], tokens_per_batch, seed=0, units=units)
    for batch in batches:
        tensors = collate([sequences[i] for i in batch], pad_id=0)
        useful = tensors.pop("useful_tokens")
        yield {k: v.to(device) for k, v in tensors.items()}, useful, len(batch)


def max_steps(rows, vocab, device):
    from clinsum.batching import collate

    rng = random.Random(2)
    sequences = [
        {"input_ids": _ids(rng, PAPER_LENGTH, vocab), "prompt_len": PROMPT_MAX, "task": row % 2} for row in range(rows)
    ]
    while True:
        tensors = collate(sequences, pad_id=0)
        useful = tensors.pop("useful_tokens")
        yield {k: v.to(device) for k, v in tensors.items()}, useful, rows


def measure_recipe(recipe, args) -> dict:
    import resource

    import torch

    from clinsum.losses import batch_loss

    torch.set_num_threads(args.threads) if args.threads else None
    device = torch.device(args.device)
    model = build_model(args.arch).to(device)
    vocab = model.config.vocab_size
    if recipe != "paper" and args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, fused=device.type == "cuda")
    total = args.warmup + args.steps
    docs = synthetic_documents(2000, seed=args.seed)  # enough for realistic length grouping
    if recipe == "paper":
        source = ((pair, useful, 2) for pair, useful in paper_steps(docs, vocab, device))
    elif recipe == "ours":
        source = our_steps(docs, vocab, device, args.tokens_per_batch)
    else:
        source = max_steps(args.max_rows, vocab, device)

    useful_total, rows_total, seconds, loss = 0, 0, 0.0, None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(total):
        try:
            batch, useful, rows = next(source)
        except StopIteration:
            break
        _sync(device)
        started = time.perf_counter()
        with _autocast(device):
            if recipe == "paper":
                (s_ids, s_mask, s_labels), (e_ids, e_mask, e_labels) = batch
                loss_sum = model(input_ids=s_ids, attention_mask=s_mask, labels=s_labels).loss
                loss_ext = model(input_ids=e_ids, attention_mask=e_mask, labels=e_labels).loss
                loss = GAMMA * loss_sum + (1 - GAMMA) * loss_ext
            else:
                loss, _ = batch_loss(model, batch, gamma=GAMMA)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        elapsed = time.perf_counter() - started
        if step >= args.warmup:
            useful_total += useful
            rows_total += rows
            seconds += elapsed
        print(f"  {recipe} step {step + 1}/{total}: {useful} useful tokens, {rows} rows, {elapsed:.2f} s", flush=True)
    measured = total - args.warmup
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / GIB
        peak_kind = "cuda max allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB
        peak_kind = "process peak RSS"
    return {
        "recipe": recipe,
        "steps": measured,
        "rows_per_step": rows_total / max(1, measured),
        "useful_tokens": useful_total,
        "seconds": seconds,
        "useful_tokens_per_s": useful_total / seconds if seconds else None,
        "peak_gib": peak,
        "peak_kind": peak_kind,
        "final_loss": float(loss.detach()) if loss is not None else None,
    }


def run_recipe(recipe, args, queue):
    """Child process: the recipe's result, or its error (a CUDA out-of-memory, say), to the parent."""
    try:
        queue.put(measure_recipe(recipe, args))
    except Exception as error:  # noqa: BLE001 - reported as this recipe's row, the others still run
        first_line = (str(error).strip().splitlines() or [""])[0]
        queue.put({"recipe": recipe, "error": f"{type(error).__name__}: {first_line}"})


def run_in_process(context, recipe, args) -> dict:
    """One recipe in its own process (its peak memory is its own); a child killed from outside, by the
    kernel's out-of-memory killer most often, becomes an error row instead of a parent waiting forever."""
    queue = context.Queue()
    process = context.Process(target=run_recipe, args=(recipe, args, queue))
    process.start()
    result = None
    while result is None and process.is_alive():
        try:
            result = queue.get(timeout=5)
        except Empty:
            pass
    if result is None:
        try:  # it may have put its result just before exiting
            result = queue.get(timeout=5)
        except Empty:
            code = process.exitcode
            cause = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            if code == -9:
                cause += " (SIGKILL: the out-of-memory killer, most likely)"
            result = {"recipe": recipe, "error": f"process {cause} before reporting"}
    process.join()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="qwen0.5b", help="model body (vocabulary 151,936, the toy one 8,192)")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per recipe")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--tokens-per-batch", type=int, default=24624, help="ours: padded-token budget of a batch")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="ours: recompute layer activations")
    parser.add_argument("--max-rows", type=int, default=8, help="ours_max: rows at the maximum lengths")
    parser.add_argument("--recipes", nargs="+", default=["paper", "ours", "ours_max"], choices=["paper", "ours", "ours_max"])
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "train_throughput.json"), help="output file")
    args = parser.parse_args(argv)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(torch.device(args.device))
    else:
        device_name = f"CPU {platform.processor() or platform.machine()}, {args.threads or torch.get_num_threads()} threads"
    context = multiprocessing.get_context("spawn")
    results = {}
    for recipe in args.recipes:
        results[recipe] = run_in_process(context, recipe, args)
    failed = [name for name, r in results.items() if "error" in r]

    print(f"\n{device_name}; arch {args.arch}; tokens_per_batch {args.tokens_per_batch}; "
          f"gradient checkpointing (ours) {args.gradient_checkpointing}")
    print(f"{'recipe':10} {'steps':>5} {'rows/step':>9} {'useful tok/s':>13} {'peak GiB':>9}  peak")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:10} failed: {r['error']}")
            continue
        print(f"{name:10} {r['steps']:5d} {r['rows_per_step']:9.1f} {r['useful_tokens_per_s']:13,.0f} {r['peak_gib']:9.2f}  {r['peak_kind']}")
    ratio = None
    if {"paper", "ours"} <= set(results) - set(failed):
        ratio = results["ours"]["useful_tokens_per_s"] / results["paper"]["useful_tokens_per_s"]
        print(f"ours / paper useful tokens per second: {ratio:.2f}x")
    report = {
        "device": device_name,
        "arch": args.arch,
        "arch_config": ARCHS[args.arch],
        "tokens_per_batch": args.tokens_per_batch,
        "gradient_checkpointing": args.gradient_checkpointing,
        "torch": torch.__version__,
        "results": results,
        "ratio_ours_over_paper": ratio,
        "targets": {"ratio_at_least": 5.0, "ours_max_peak_gib_at_most": 12.0, "ours_max_rows_at_least": 8,
                    "note": "GPU targets (issue 4); CPU runs measure process RSS, not GPU memory"},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    if failed:
        print(f"failed recipes: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
