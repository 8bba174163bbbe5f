"""The GPU check: the student's training and inference on a GPU with the machine's own torch and
transformers, and the numbers the README's benchmarks need, in one run of a few minutes.

It needs only torch, transformers and this repository's workflow/ (put on sys.path here): no vLLM, no
Snakemake, no datasets, no model download (random weights of Qwen2.5-0.5B's shape, built locally).

1. environment: torch, transformers, CUDA, the device, bf16 support;
2. training (benchmarks/train_throughput.py's recipes, each in a process of its own): the paper code's
   recipe against ours in useful tokens per second, and the peak memory of `--max-rows` (8) sequences at
   the maximum lengths (2566 + 512 tokens) with and without gradient checkpointing; each recipe's loss
   must be finite, and our step must lower the loss of a fixed batch it trains on (`--overfit-steps`);
3. inference (clinsum.generation.TransformersGenerator, the infer stage's transformers backend): a batch
   of prompts, greedy, in the inference dtype; generated tokens per second, peak memory, and the same
   tokens when run twice.

It prints one line per check and a summary, writes JSON (--json), and exits 1 if a check failed.

    python benchmarks/gpu_check.py                                   # on the GPU machine: the defaults
    python benchmarks/gpu_check.py --device cpu --arch toy --warmup 0 --steps 1 --max-rows 2 --overfit-steps 4 \\
        --tokens-per-batch 4096 --prompt-tokens 64 --new-tokens 8 --prompts 2 --threads 2   # CPU, toy size (a test)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "workflow"))

import train_throughput as bench  # noqa: E402

GIB = 1024**3
# what the GPU machine may not have (a check fails if this run imported one of them); pyyaml is there, as a
# dependency of transformers, which imports it
NOT_THERE = ("snakemake", "vllm", "datasets", "rouge_score", "bert_score", "trl", "pandas", "matplotlib")


def environment(device: str) -> dict:
    import torch
    import transformers

    from clinsum.generation import native_bf16

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "device": device}
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["bf16"] = bool(native_bf16())
        info["memory_gib"] = torch.cuda.get_device_properties(torch.device(device)).total_memory / GIB
    else:
        info["device_name"] = f"CPU {platform.processor() or platform.machine()}"
    return info


def training(args) -> dict:
    context = multiprocessing.get_context("spawn")
    common = dict(device=args.device, arch=args.arch, steps=args.steps, warmup=args.warmup, seed=0,
                  tokens_per_batch=args.tokens_per_batch, max_rows=args.max_rows, threads=args.threads)
    results = {}
    for name, recipe, checkpointing in (("paper", "paper", False), ("ours", "ours", False),
                                        ("ours_max", "ours_max", False), ("ours_max_checkpointing", "ours_max", True)):
        run = SimpleNamespace(**common, gradient_checkpointing=checkpointing)
        started = time.perf_counter()
        results[name] = bench.run_in_process(context, recipe, run)
        results[name]["wall_s"] = time.perf_counter() - started
        print(f"train {name}: {_row(results[name])}", flush=True)
    return results


def _row(result: dict) -> str:
    if "error" in result:
        return f"failed: {result['error']}"
    return (f"{result['useful_tokens_per_s']:,.0f} useful tokens/s, {result['rows_per_step']:.1f} rows a step, "
            f"peak {result['peak_gib']:.2f} GiB ({result['peak_kind']}), loss {result['final_loss']:.3f}")


def overfit(args) -> dict:
    """Our step (clinsum.losses.batch_loss on clinsum.batching.collate) on one fixed batch: the loss falls."""
    import random

    import torch

    from clinsum.batching import collate
    from clinsum.losses import batch_loss

    device = torch.device(args.device)
    model = bench.build_model(args.arch).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = random.Random(3)
    sequences = [{"input_ids": [rng.randrange(1000, 5000) for _ in range(96)], "prompt_len": 64, "task": task}
                 for task in (0, 1)]
    batch = {k: v.to(device) for k, v in collate(sequences, pad_id=0).items() if k != "useful_tokens"}
    losses = []
    for _ in range(args.overfit_steps):
        with bench._autocast(device):
            loss, _ = batch_loss(model, batch, gamma=bench.GAMMA)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return {"losses": losses, "falls": bool(losses[-1] < losses[0]) and all(map(_finite, losses))}


def _finite(value) -> bool:
    import math

    return value is not None and math.isfinite(value)


def _tokenizer(vocab_size: int):
    """A word-level tokenizer over the model's whole vocabulary (ids are what generation reads)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t3"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="t2", pad_token="t0", unk_token="t3")


def inference(args) -> dict:
    import random

    import torch

    from clinsum.generation import TransformersGenerator, resolve_dtype

    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, cuda=device.type == "cuda")
    model = bench.build_model(args.arch).to(device=device, dtype=getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    generator = TransformersGenerator.from_model(model, _tokenizer(model.config.vocab_size), batch_size=args.prompts)
    rng = random.Random(4)
    prompts = [[rng.randrange(1000, 5000) for _ in range(args.prompt_tokens - 7 * i)] for i in range(args.prompts)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    first = generator.generate(prompts, max_new_tokens=args.new_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    second = generator.generate(prompts, max_new_tokens=args.new_tokens)
    generated = sum(len(c.token_ids) for c in first)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return {
        "dtype": dtype, "prompts": len(prompts), "prompt_tokens": args.prompt_tokens, "generated_tokens": generated,
        "seconds": seconds, "generated_tokens_per_s": generated / seconds if seconds else None, "peak_gib": peak,
        "same_twice": [c.token_ids for c in first] == [c.token_ids for c in second],
        "lengths_ok": all(1 <= len(c.token_ids) <= args.new_tokens for c in first),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--arch", choices=sorted(bench.ARCHS), default="qwen0.5b")
    parser.add_argument("--steps", type=int, default=10, help="measured training steps per recipe")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tokens-per-batch", type=int, default=24624, help="ours: padded-token budget of a batch")
    parser.add_argument("--max-rows", type=int, default=8, help="rows at the maximum lengths (the memory target)")
    parser.add_argument("--overfit-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--dtype", default="auto", help="inference dtype (auto: bf16 where native, else float16; CPU float32)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=2566)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--json", default=str(HERE / "results" / "gpu_check.json"))
    args = parser.parse_args(argv)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report = {"environment": environment(args.device)}
    print("environment: " + ", ".join(f"{k} {v}" for k, v in report["environment"].items()), flush=True)
    report["train"] = training(args)
    report["overfit"] = overfit(args)
    print(f"overfit: losses {', '.join(f'{x:.3f}' for x in report['overfit']['losses'])}", flush=True)
    report["inference"] = inference(args)
    print(f"inference: {json.dumps(report['inference'])}", flush=True)

    train = report["train"]
    report["imported_not_there"] = sorted(name for name in NOT_THERE if name in sys.modules)
    checks = {
        "needs only torch and transformers": not report["imported_not_there"],
        "every training recipe ran": all("error" not in r for r in train.values()),
        "training losses are finite": all(_finite(r.get("final_loss")) for r in train.values()),
        "our step lowers a fixed batch's loss": report["overfit"]["falls"],
        "inference greedy is the same twice": report["inference"]["same_twice"],
        "inference lengths within the limit": report["inference"]["lengths_ok"],
    }
    ratio = None
    if "error" not in train["paper"] and "error" not in train["ours"]:
        ratio = train["ours"]["useful_tokens_per_s"] / train["paper"]["useful_tokens_per_s"]
    report.update(checks=checks, ratio_ours_over_paper=ratio, seconds=time.perf_counter() - started,
                  targets={"ratio_at_least": 5.0, "ours_max_peak_gib_at_most": 12.0, "rows": args.max_rows})

    print(f"\nsummary ({report['environment']['device_name']}, torch {report['environment']['torch']}, "
          f"transformers {report['environment']['transformers']}, arch {args.arch}):")
    for name in ("paper", "ours", "ours_max", "ours_max_checkpointing"):
        print(f"  {name:24} {_row(train[name])}")
    if ratio is not None:
        print(f"  ours / paper useful tokens per second: {ratio:.2f}x (target >= 5x on an H100)")
    for name in ("ours_max", "ours_max_checkpointing"):
        if "error" not in train[name]:
            print(f"  peak for {args.max_rows} max-length sequences ({name}): {train[name]['peak_gib']:.2f} GiB (target <= 12)")
    inference_row = report["inference"]
    print(f"  inference {inference_row['dtype']}: {inference_row['generated_tokens_per_s']:,.0f} generated tokens/s "
          f"({inference_row['prompts']} prompts of ~{inference_row['prompt_tokens']} tokens)")
    for name, passed in checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name}")
    print(f"  {report['seconds']:.0f} s in all")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
