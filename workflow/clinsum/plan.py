"""`clinsum plan`: what a configuration will do before a GPU day is spent on it.

Per trained variant: documents per optimizer step, optimizer steps, evaluations, warm-up steps and tokens
per step; per reward-tuned variant (grpo): its GRPO steps, the reports and summaries a step samples, the passes
it makes over them and how often the steps go over the training reports; for the teacher, how many prompts exceed its `max_prompt_tokens` (and are cropped or stop the
run). It reads the configuration as Snakemake does (`config/config.yaml`, then every `--configfile` merged
over it key by key, validated against the schema with its defaults), and the corpus, split and cropped data
when they exist (`results/`); `--documents` gives the training document count without them.

    clinsum plan --configfile config/paper.yaml --documents 1892
    clinsum plan --configfile config/paper.yaml config/paper-code.yaml --pairs-per-language 592

`--pairs-per-language` (documents with a reference summary per language) gives each language's split sizes under
the configured split method (exact for `paper_code`, expected for `hash`) and, without `--documents`, the
training documents. The train rule logs the same numbers at its start (`clinsum.steps.step_plan` is the one
computation of both).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .io import ClinsumError, read_jsonl
from .records import SPLITS, load_documents, read_split
from .settings import merge, parse_config
from .split import split_sizes
from .steps import step_plan
from .variants import trained
from .variants import variant as variant_entry

log = logging.getLogger(__name__)



def load_config(configfiles: list[str | Path], base: str | Path | None) -> dict:
    """The configuration a Snakemake run with these files would see, validated, defaults filled in."""
    import yaml

    config: dict = {}
    for path in ([base] if base else []) + list(configfiles):
        try:
            with open(path, encoding="utf-8") as handle:
                config = merge(config, yaml.safe_load(handle) or {})
        except OSError as error:
            raise ClinsumError(f"{path}: cannot read the configuration ({error.strerror})") from None
    return parse_config(config, "the configuration (not valid)")


def train_documents(split_dir: Path, languages: list[str]) -> int | None:
    """Training documents over every language, from the split files (None when they are not there yet)."""
    paths = [split_dir / f"{lang}.json" for lang in languages]
    if not all(path.is_file() for path in paths):
        return None
    return sum(len(read_split(path)["train"]) for path in paths)


def tokens_per_document(train_jsonl: Path, variant: str) -> list[int] | None:
    """Each training document's tokens (prompt + answer of its sequences) for a variant, from crop's output."""
    if not train_jsonl.is_file():
        return None
    tasks = set(variant_entry(variant).tasks)
    totals: dict[tuple[str, str], int] = {}
    for record in read_jsonl(train_jsonl):
        if record["task"] in tasks:
            key = (record["lang"], record["id"])
            totals[key] = totals.get(key, 0) + record["prompt_tokens"] + record["answer_tokens"]
    return list(totals.values())


def variant_rows(config: dict, documents: int, train_jsonl: Path) -> list[dict]:
    train, crop = config["train"], config["crop"]
    rows = []
    for variant in trained(train["variants"], "train"):
        row = {"variant": variant, **step_plan(
            documents, train["documents_per_step"][variant], train["epochs"], train["eval_every"], train["warmup_ratio"],
            train["eval_last_step"],
        ).as_row()}
        per_document = tokens_per_document(train_jsonl, variant)
        if per_document:
            row["tokens_per_step"] = round(row["documents_per_step"] * sum(per_document) / len(per_document))
            row["tokens_per_step_source"] = f"mean, {train_jsonl}"
        else:
            sequences = len(variant_entry(variant).tasks)
            row["tokens_per_step"] = row["documents_per_step"] * sequences * (crop["prompt_tokens"] + crop["answer_tokens"])
            row["tokens_per_step_source"] = "at most, by the crop budgets"
        rows.append(row)
    return rows


def reward_rows(config: dict, documents: int) -> list[dict]:
    """Per reward-tuned variant: its GRPO steps, what one step samples and passes over, and how many times the steps
    go over the training reports (every training report has a reference at this count's precision)."""
    reward = config["reward"]
    per_step = reward["prompts_per_step"] * reward["group_size"]
    return [{
        "variant": variant, "start": reward["start"], "documents": documents, "steps": reward["steps"],
        "reports_per_step": reward["prompts_per_step"], "summaries_per_step": per_step,
        "passes_per_step": per_step // reward["summaries_per_batch"],
        "epochs": round(reward["steps"] * reward["prompts_per_step"] / documents, 2),
        "generated_tokens_per_step": per_step * reward["max_new_tokens"],
        "tokens_per_pass": reward["summaries_per_batch"] * (reward["max_prompt_tokens"] + reward["max_new_tokens"]),
        "checkpoints": reward["steps"] // reward["save_every"],
    } for variant in trained(config["train"]["variants"], "reward")]


def teacher_prompts_over(config: dict, corpus_dir: Path, split_dir: Path) -> dict:
    """How many teacher prompts exceed teacher.max_prompt_tokens, when the corpus and the teacher's tokenizer exist."""
    from .chat import build_messages, encode_prompt
    from .models import model_path

    teacher = config["teacher"]
    limit = teacher["max_prompt_tokens"]
    result = {"max_prompt_tokens": limit, "on_long_prompt": teacher["on_long_prompt"]}
    model_dir = Path(model_path(teacher["model"], config["models"]))
    languages = config["languages"]
    missing = [p for p in [model_dir / "tokenizer_config.json"] + [corpus_dir / f"{lang}.jsonl" for lang in languages]
               + [split_dir / f"{lang}.json" for lang in languages] if not p.is_file()]
    if missing:
        result["not_measured"] = f"needs {missing[0]} (run the workflow up to the split and the teacher's model build)"
        return result
    from .model_files import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    prompts = over = longest = 0
    for lang in languages:
        split = read_split(split_dir / f"{lang}.json", lang)
        for document in load_documents(corpus_dir / f"{lang}.jsonl", split["train"] + split["valid"]).values():
            n = len(encode_prompt(tokenizer, build_messages(config["prompts"]["extract"], document.text,
                                                            role=config["prompts"]["role"])))
            prompts, over, longest = prompts + 1, over + (n > limit), max(longest, n)
    result.update(prompts=prompts, over=over, longest=longest)
    return result


def split_rows(config: dict, split_dir: Path, pairs_per_language: int | None) -> list[dict]:
    """Each language's split sizes: from the split files when they exist, else from --pairs-per-language (exact for
    the paper code's method, expected for the hash), else none."""
    split = config["split"]
    fractions = {name: split[name] for name in SPLITS}
    rows = []
    for lang in config["languages"]:
        path = split_dir / f"{lang}.json"
        if path.is_file():
            ids = read_split(path, lang)
            rows.append({"lang": lang, **{name: len(ids[name]) for name in SPLITS}, "source": str(path)})
        elif pairs_per_language:
            source = "exact" if split["method"] == "paper_code" else "expected"
            rows.append({"lang": lang, **split_sizes(pairs_per_language, fractions, split["method"]),
                         "source": f"{source}, {pairs_per_language} pairs"})
    return rows


def render_splits(rows: list[dict], config: dict) -> str:
    split = config["split"]
    method = split["method"] + (f", order {split['order']}" if split["method"] == "paper_code" else "")
    if not rows:
        return f"split ({method}): give --pairs-per-language, or run the workflow up to the split\n"
    lines = [f"split ({method}, seed {split['seed']}):", "", "| language | train | valid | test | from |",
             "|---|---:|---:|---:|---|"]
    lines += [f"| {r['lang']} | {r['train']} | {r['valid']} | {r['test']} | {r['source']} |" for r in rows]
    return "\n".join(lines) + "\n"


def render(rows: list[dict], teacher: dict, rewards: list[dict] = ()) -> str:
    lines = [
        "| variant | documents | documents/step | steps/epoch | optimizer steps | evaluations | warm-up steps | tokens/step |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['documents']} | {row['documents_per_step']} | {row['steps_per_epoch']} "
            f"| {row['optimizer_steps']} | {row['evaluations']} | {row['warmup_steps']} "
            f"| {row['tokens_per_step']:,} ({row['tokens_per_step_source']}) |"
        )
    lines.append("")
    if rewards:
        lines += [
            "| reward-tuned variant | from | training reports | GRPO steps | reports/step | summaries/step | passes/step "
            "| epochs | generated tokens/step | tokens/pass | checkpoints |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['variant']} | {r['start']} | {r['documents']} | {r['steps']} | {r['reports_per_step']} "
            f"| {r['summaries_per_step']} | {r['passes_per_step']} | {r['epochs']} | {r['generated_tokens_per_step']:,} "
            f"| {r['tokens_per_pass']:,} (at most) | {r['checkpoints']} |" for r in rewards
        ]
        lines.append("")
    if "not_measured" in teacher:
        lines.append(f"teacher prompts over max_prompt_tokens ({teacher['max_prompt_tokens']}): not measured, {teacher['not_measured']}")
    else:
        lines.append(
            f"teacher prompts over max_prompt_tokens ({teacher['max_prompt_tokens']}): {teacher['over']} of "
            f"{teacher['prompts']} (longest {teacher['longest']} tokens; on_long_prompt: {teacher['on_long_prompt']})"
        )
    return "\n".join(lines) + "\n"


def _run(args) -> None:
    base = None if args.no_base else args.base
    if base and not Path(base).is_file():
        raise ClinsumError(f"{base}: the base configuration is missing (run from the checkout, or pass --no-base)")
    config = load_config(args.configfile, base)
    results = Path(args.results)
    splits = split_rows(config, results / "split", args.pairs_per_language)
    documents = args.documents or train_documents(results / "split", config["languages"])
    if documents is None and args.pairs_per_language:
        documents = round(sum(row["train"] for row in splits))  # exact for paper_code, expected for hash
    if documents is None:
        raise ClinsumError(
            f"{results / 'split'}: no split files yet; give the training document count with --documents, or the "
            "pairs per language with --pairs-per-language"
        )
    rows = variant_rows(config, documents, results / "data" / "train.jsonl")
    rewards = reward_rows(config, documents)
    teacher = teacher_prompts_over(config, results / "corpus", results / "split")
    if args.json:
        print(json.dumps({"splits": splits, "variants": rows, "reward": rewards, "teacher": teacher}, indent=2))
    else:
        print(render_splits(splits, config) + "\n" + render(rows, teacher, rewards), end="")


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="optimizer steps, evaluations and tokens per step of each variant, teacher prompts over the context",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--configfile", nargs="*", default=[], help="configuration files, merged over --base in order")
    parser.add_argument("--base", default="config/config.yaml", help="the Snakefile's configfile (default: %(default)s)")
    parser.add_argument("--no-base", action="store_true", help="do not merge the configfiles over --base")
    parser.add_argument("--documents", type=int, help="training documents (all languages); default: from the split files")
    parser.add_argument("--pairs-per-language", type=int,
                        help="documents with a reference per language (MultiClinSum 2025 gold: 592): each language's split "
                        "sizes, and for split.method paper_code the training documents")
    parser.add_argument("--results", default="results", help="the workflow's results folder (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_run)
