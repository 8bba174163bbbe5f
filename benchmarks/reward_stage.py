"""What the reward-tuned stage changed: per language, each reward term of the test split's summaries before
(the model GRPO started from, reward.start) and after (the grpo model), the change in unsupported numbers and in
ROUGE-Lsum, and the stage's wall time. It reads a finished run's results/ (the embedded default's:
`snakemake --cores 2 --configfile config/reward.yaml`), scores the predictions with the stage's own reward
functions (clinsum.rewards) and says whether the change is an effect or noise: the paired bootstrap's 95%
interval of the weighted reward's change, per language and pooled.

    python benchmarks/reward_stage.py --configfile config/reward.yaml
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from clinsum import rewards  # noqa: E402
from clinsum.faithfulness import unsupported_numbers  # noqa: E402
from clinsum.io import read_json, read_jsonl  # noqa: E402
from clinsum.plan import load_config  # noqa: E402
from clinsum.report import paired_bootstrap  # noqa: E402
from clinsum.trainlog import read_log  # noqa: E402
from clinsum.variants import trained  # noqa: E402

SAMPLES, SEED = 2000, 0


def scored(predictions: Path, corpus: Path) -> dict[str, dict]:
    """id -> each reward term and the unsupported numbers of one model's test summaries that have a reference."""
    reports = {row["id"]: row["text"] for row in read_jsonl(corpus)}
    rows = {}
    for record in read_jsonl(predictions):
        if record.get("reference") is None:
            continue
        report = reports[record["id"]]
        values = rewards.term_values(record["prediction"], report, record["reference"], record.get("lang"),
                                     record.get("finish_reason"))
        numbers, missing = unsupported_numbers(record["prediction"], report, lang=record.get("lang"))
        rows[record["id"]] = {**values, "numbers": numbers, "unsupported": len(missing)}
    return rows


def compare(before: dict[str, dict], after: dict[str, dict], weights: dict) -> dict:
    ids = sorted(before)
    if sorted(after) != ids:
        raise SystemExit("the two models' predictions cover different documents: rerun the workflow to the end")
    row = {"documents": len(ids)}
    for term in rewards.TERMS:
        if term in before[ids[0]]:
            row[term] = [sum(before[i][term] for i in ids) / len(ids), sum(after[i][term] for i in ids) / len(ids)]
    row["numbers"] = [sum(before[i]["numbers"] for i in ids), sum(after[i]["numbers"] for i in ids)]
    row["unsupported"] = [sum(before[i]["unsupported"] for i in ids), sum(after[i]["unsupported"] for i in ids)]
    reward_before = [rewards.weighted(before[i], weights) for i in ids]
    reward_after = [rewards.weighted(after[i], weights) for i in ids]
    change, low, high = paired_bootstrap(reward_after, reward_before, SAMPLES, SEED)
    row["reward"] = [sum(reward_before) / len(ids), sum(reward_after) / len(ids)]
    row["reward_change"] = {"mean": change, "ci95": [low, high], "effect": low > 0 or high < 0}
    row["_scores"] = (reward_before, reward_after)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", nargs="*", default=["config/reward.yaml"], help="the run's configuration files")
    parser.add_argument("--base", default=str(REPO / "config" / "config.yaml"))
    parser.add_argument("--results", default="results", help="the finished run's results folder")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "reward_stage.json"), help="output file")
    args = parser.parse_args()
    config = load_config(args.configfile, args.base)
    tuned = trained(config["train"]["variants"], "reward")
    if not tuned:
        raise SystemExit("the configuration has no reward-tuned variant in train.variants (config/reward.yaml adds grpo)")
    variant, start, weights = tuned[0], config["reward"]["start"], config["reward"]["weights"]
    weights = {term: weight for term, weight in weights.items() if term != "bertscore"}  # not recomputed here
    results = Path(args.results)
    model_dir = results / "models" / variant
    if not (model_dir / "reward.json").is_file():
        raise SystemExit(f"{model_dir / 'reward.json'}: no tuned model yet; run the workflow with {' '.join(args.configfile)}")
    stage = read_json(model_dir / "reward.json")
    rows, pooled_before, pooled_after = {}, [], []
    for lang in config["languages"]:
        before = scored(results / "predictions" / start / f"{lang}.jsonl", results / "corpus" / f"{lang}.jsonl")
        after = scored(results / "predictions" / variant / f"{lang}.jsonl", results / "corpus" / f"{lang}.jsonl")
        rows[lang] = compare(before, after, weights)
        scores_before, scores_after = rows[lang].pop("_scores")
        pooled_before += scores_before
        pooled_after += scores_after
    change, low, high = paired_bootstrap(pooled_after, pooled_before, SAMPLES, SEED)
    pooled = {"mean": change, "ci95": [low, high], "effect": low > 0 or high < 0}
    log = read_log(model_dir / "train_log.csv")
    training = [row["reward"] for row in log if row.get("reward") is not None]

    terms = [term for term in rewards.TERMS if term in next(iter(rows.values()))]
    print(f"{variant} (GRPO, {stage['steps']} steps, {stage['seconds']:.0f} s on {platform.machine()}) against {start}, "
          f"the test split's summaries; weights {weights}\n")
    print("| lang | docs | " + " | ".join(f"{t} before → after" for t in terms)
          + " | unsupported numbers | weighted reward change [95% CI] |")
    print("|---|---:|" + "---|" * len(terms) + "---|---|")
    for lang, row in rows.items():
        cells = " | ".join(f"{row[t][0]:.3f} → {row[t][1]:.3f}" for t in terms)
        ci = row["reward_change"]
        print(f"| {lang} | {row['documents']} | {cells} | {row['unsupported'][0]}/{row['numbers'][0]} → "
              f"{row['unsupported'][1]}/{row['numbers'][1]} | {ci['mean']:+.3f} [{ci['ci95'][0]:+.3f}, {ci['ci95'][1]:+.3f}] |")
    print(f"\npooled weighted reward change: {change:+.3f} [{low:+.3f}, {high:+.3f}]")
    if training:
        print(f"training reward (the steps' sampled summaries): first step {training[0]:.3f}, last {training[-1]:.3f}")
    verdict = ("an effect: the interval excludes 0" if pooled["effect"] else
               "no effect shown: the interval includes 0. At this size (a few GRPO steps of a 135M student on a "
               "handful of test reports) the stage runs end to end but cannot show what reward tuning is worth; "
               "measuring that needs the paper's setup (config/paper-grpo.yaml) on GPUs")
    print(f"verdict: {verdict}")
    out = {"variant": variant, "start": start, "weights": weights, "stage": stage, "languages": rows,
           "pooled_reward_change": pooled, "training_reward": training, "machine": platform.machine(),
           "verdict": verdict}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
