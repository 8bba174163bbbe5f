"""Judge: an LLM scores each test summary against its report (MultiClinSum-2 scores with an LLM judge).

For every prediction that has a reference (the documents Table 4 scores), the configured judge model is
asked, through the same generation backends as the teacher (vLLM or transformers), for a JSON object:

    {"faithfulness": 0-1, "completeness": {"patient": 0-1, "diagnosis": 0-1, "intervention": 0-1,
     "outcome": 0-1, "follow_up": 0-1}, "fluency": 0-1}

faithfulness: every statement of the summary is supported by the report; completeness: how well the
summary covers each CARE item of the report (CARE: the case-report guideline's patient information,
diagnosis, intervention, outcome, follow-up); fluency: well-formed clinical prose in the report's language.
The answer is parsed strictly (`parse_judgement`): one JSON object, optionally in one ```json fence, with
exactly these keys and numbers in [0, 1]. A malformed answer is asked again once, with the reason appended
to the prompt (greedy decoding would repeat the same answer to the same prompt); a second malformed answer
is counted as malformed, never guessed.

Writes `results/judge/{model}/{lang}.json`: per document the scores (judge_faithfulness,
judge_completeness = mean of the CARE items, judge_fluency) or the malformed answer and why, counts and means.

`clinsum judge-consistency` scores MultiClinSum-2's fourth criterion, consistency across languages, where the
corpus holds the same case in several languages (`paired_cases`): one model's summaries of one case in two
languages, asked {"consistency": 0-1} (the same clinical facts in both), with the same strict parsing and retry;
it writes `results/judge/{model}/consistency.json`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from .chat import build_messages, encode_prompt
from .io import ClinsumError, pairs_option, write_json
from .languages import language_name
from .predictions import load_predictions, load_sources
from .settings import parse_settings

log = logging.getLogger(__name__)

CARE_ITEMS = ("patient", "diagnosis", "intervention", "outcome", "follow_up")
SCORE_KEYS = ("judge_faithfulness", "judge_completeness", "judge_fluency")
_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(.*)\n[ \t]*```$", re.DOTALL)
ANSWER_KEPT = 1000  # characters of a malformed answer kept in the output, to show what the judge said


class MalformedAnswer(ValueError):
    """A judge answer that is not the JSON object asked for; the message says why."""


def _no_duplicates(pairs):
    keys = [key for key, _ in pairs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise MalformedAnswer(f"duplicate key(s) {', '.join(duplicated)}")
    return dict(pairs)


def _reject_constant(name):
    raise MalformedAnswer(f"{name} is not a score")


def _score(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedAnswer(f"{where} must be a number from 0 to 1, got {json.dumps(value)}")
    if not 0 <= value <= 1:
        raise MalformedAnswer(f"{where} must be from 0 to 1, got {value}")
    return float(value)


def _exact_keys(obj, expected: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise MalformedAnswer(f"{where} must be a JSON object")
    missing = [key for key in expected if key not in obj]
    extra = sorted(set(obj) - set(expected))
    if missing or extra:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unexpected {', '.join(extra)}"] if extra else []
        raise MalformedAnswer(f"{where}: {'; '.join(problems)}")


def parse_judgement(text: str) -> dict:
    """{"judge_faithfulness", "judge_completeness", "completeness_items"} from a judge's answer, or
    MalformedAnswer. Nothing is repaired or guessed: surrounding prose, a second object, a missing or
    extra key, a string or out-of-range number all make the answer malformed."""
    data = _json_object(text)
    _exact_keys(data, ("faithfulness", "completeness", "fluency"), "the answer")
    _exact_keys(data["completeness"], CARE_ITEMS, "completeness")
    items = {item: _score(data["completeness"][item], f"completeness.{item}") for item in CARE_ITEMS}
    return {
        "judge_faithfulness": _score(data["faithfulness"], "faithfulness"),
        "judge_completeness": sum(items.values()) / len(items),
        "judge_fluency": _score(data["fluency"], "fluency"),
        "completeness_items": items,
    }


def _json_object(text: str) -> dict:
    """One JSON object from a judge's answer (one optional ```json fence), or MalformedAnswer."""
    body = text.strip()
    fence = _FENCE.match(body)
    if fence:
        body = fence.group(1).strip()
    if not body:
        raise MalformedAnswer("empty answer")
    if not (body.startswith("{") and body.endswith("}")):
        raise MalformedAnswer("the answer is not one JSON object (text around it or none at all)")
    try:
        return json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise MalformedAnswer(f"invalid JSON ({error.msg} at character {error.pos})") from None


def parse_consistency(text: str) -> dict:
    """{"judge_consistency"} from a consistency answer {"consistency": 0-1}, or MalformedAnswer."""
    data = _json_object(text)
    _exact_keys(data, ("consistency",), "the answer")
    return {"judge_consistency": _score(data["consistency"], "consistency")}


# ---------------------------------------------------------------- prompts


def check_prompts(prompts: dict) -> None:
    for key, placeholders in (("system", ()), ("user", ("{report}", "{summary}")), ("retry", ("{error}",))):
        if not isinstance(prompts.get(key), str) or not prompts[key].strip():
            raise ClinsumError(f"judge.prompts.{key} is missing or empty")
        for placeholder in placeholders:
            if placeholder not in prompts[key]:
                raise ClinsumError(f"judge.prompts.{key} must contain {placeholder}")


def user_turn(prompts: dict, report: str, summary: str, error: str | None = None) -> str:
    """The user turn; a retry appends the reason the first answer was refused."""
    # str.replace, not format: reports contain braces
    text = prompts["user"].replace("{summary}", summary).replace("{report}", report)
    if error is not None:
        text += "\n\n" + prompts["retry"].replace("{error}", error)
    return text


def encode(tokenizer, prompts: dict, report: str, summary: str, max_input_tokens: int, error: str | None = None):
    """(prompt ids, report_cropped): the report is cut at a token boundary when the prompt is too long."""
    def ids_for(text: str) -> list[int]:
        return encode_prompt(tokenizer, build_messages(prompts["system"], user_turn(prompts, text, summary, error)))

    ids = ids_for(report)
    if len(ids) <= max_input_tokens:
        return ids, False
    room = max_input_tokens - len(ids_for(""))
    report_ids = tokenizer(report, add_special_tokens=False)["input_ids"]
    # a cut can re-tokenize into a few more tokens: shrink until the prompt fits
    while room > 0:
        ids = ids_for(tokenizer.decode(report_ids[:room], skip_special_tokens=True))
        if len(ids) <= max_input_tokens:
            return ids, True
        room -= max(1, len(ids) - max_input_tokens)
    raise ClinsumError(
        f"judge.max_input_tokens={max_input_tokens} leaves no room for the report beside the prompt and summary"
    )


# ---------------------------------------------------------------- judging


def judge_items(generator, tokenizer, items: list[dict], settings: dict) -> list[dict]:
    """Judge (id, report, summary) items: one pass, then one retry pass for the malformed answers."""
    prompts, budget = settings["prompts"], settings["max_input_tokens"]

    def prompt(item, error):
        return encode(tokenizer, prompts, item["report"], item["summary"], budget, error)

    return ask(generator, items, settings, prompt, parse_judgement)


def ask(generator, items: list[dict], settings: dict, prompt, parse) -> list[dict]:
    """Each item's answer parsed with `parse`: one pass, then one retry pass, with the reason, for the malformed
    answers; a second malformed answer is counted, never guessed. `prompt(item, error)` gives (ids, cropped)."""
    results = {item["id"]: {"id": item["id"], "attempts": 0, "input_truncated": False} for item in items}
    pending = [(item, None) for item in items]
    for attempt in (1, 2):
        encoded = [prompt(item, error) for item, error in pending]
        completions = generator.generate(
            [ids for ids, _ in encoded], settings["max_new_tokens"], temperature=settings["temperature"]
        )
        retry = []
        for (item, _), (_, cropped), completion in zip(pending, encoded, completions):
            result = results[item["id"]]
            result["attempts"] = attempt
            result["input_truncated"] = result["input_truncated"] or cropped
            try:
                result.update(parse(completion.text), malformed=False, error=None)
                result.pop("answer", None)
            except MalformedAnswer as error:
                result.update(malformed=True, error=str(error), answer=completion.text[:ANSWER_KEPT])
                retry.append((item, str(error)))
        log.info("judge pass %d: %d answers, %d malformed", attempt, len(pending), len(retry))
        pending = retry
        if not pending:
            break
    return [results[item["id"]] for item in items]


def summarize(documents: list[dict]) -> dict:
    judged = [doc for doc in documents if not doc["malformed"]]
    means = {key: sum(doc[key] for doc in judged) / len(judged) for key in SCORE_KEYS} if judged else {}
    if judged:
        for item in CARE_ITEMS:
            means[f"completeness_{item}"] = sum(doc["completeness_items"][item] for doc in judged) / len(judged)
    return {
        "n": len(documents),
        "n_judged": len(judged),
        "n_malformed": len(documents) - len(judged),
        "n_retried": sum(doc["attempts"] > 1 for doc in documents),
        "n_input_truncated": sum(doc["input_truncated"] for doc in documents),
        "means": means,
    }


def required(settings: dict, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in settings]
    if missing:
        raise ClinsumError(f"judge settings lack {', '.join(missing)} (the config schema sets them)")


def judge_file(
    predictions_path, corpus_path, model_dir, settings: dict, out_path, model: str, lang: str, make_generator=None
) -> dict:
    """Judge one model's summaries for one language; `make_generator(settings, model_dir)` is for tests."""
    required(
        settings, ("backend", "dtype", "batch_size", "max_input_tokens", "max_new_tokens", "temperature", "prompts")
    )
    check_prompts(settings["prompts"])
    records = [record for record in load_predictions(predictions_path, lang) if record["reference"] is not None]
    sources = load_sources(corpus_path, [record["id"] for record in records])
    items = [{"id": r["id"], "report": sources[r["id"]], "summary": r["prediction"]} for r in records]
    from .model_files import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    documents = []
    if items:
        with (make_generator or _configured_generator)(settings, model_dir) as generator:
            documents = judge_items(generator, tokenizer, items, settings)
    output = {
        "model": model,
        "lang": lang,
        "judge_model": str(model_dir),
        "predictions": str(predictions_path),
        **summarize(documents),
        "documents": documents,
    }
    write_json(out_path, output)
    log.info(
        "%s/%s: %d judged, %d malformed after a retry (%d retried), means %s",
        model, lang, output["n_judged"], output["n_malformed"], output["n_retried"], json.dumps(output["means"]),
    )
    return output


# ---------------------------------------------------------------- consistency across languages

# A case's id in each language: MultiClinSum-2's {set}_{n}_{lang} (multiclinsum2_test_12_ca) and the first
# edition's {set}_{lang}_{n} (multiclinsum_gs_ca_12); the case is the id without its language.
CASE_IDS = (re.compile(r"^(?P<stem>.+)_(?P<n>\d+)_(?P<lang>[a-z]{2})$"), re.compile(r"^(?P<stem>.+)_(?P<lang>[a-z]{2})_(?P<n>\d+)$"))
# The same number in an id is a candidate; the reports must then share their numbers (a translation keeps
# them): at least this many distinct digit runs, and this share of the two reports' digit runs together.
MIN_SHARED_NUMBERS = 3
MIN_NUMBER_OVERLAP = 0.5


def case_of(doc_id: str, lang: str) -> str | None:
    """The case an id names in a language (its id with the language taken out), or None."""
    for pattern in CASE_IDS:
        match = pattern.match(doc_id)
        if match and match["lang"] == lang:
            return f"{match['stem']}_{match['n']}"
    return None


def digit_runs(text: str) -> set[str]:
    return set(re.findall(r"\d+", text))


def paired_cases(documents: dict[str, dict[str, dict]], languages: list[str]) -> tuple[list[dict], list[dict]]:
    """(confirmed pairs, unconfirmed candidates). `documents`: lang -> id -> {"report", "summary"}. A case in two
    or more languages is paired from the first of `languages` it has (the pivot) to each other; a pair counts
    only when the two reports share their numbers (MIN_SHARED_NUMBERS, MIN_NUMBER_OVERLAP), so that two
    different cases that happen to share a number are never compared."""
    cases: dict[str, dict[str, str]] = {}
    for lang in languages:
        for doc_id in documents.get(lang, {}):
            case = case_of(doc_id, lang)
            if case is not None:
                cases.setdefault(case, {})[lang] = doc_id
    confirmed, unconfirmed = [], []
    for case, ids in sorted(cases.items()):
        pivot, *others = [lang for lang in languages if lang in ids]
        for other in others:
            a, b = (digit_runs(documents[lang][ids[lang]]["report"]) for lang in (pivot, other))
            shared, union = len(a & b), len(a | b)
            pair = {"id": f"{case}:{pivot}-{other}", "case": case, "langs": [pivot, other],
                    "ids": [ids[pivot], ids[other]], "numbers_shared": shared,
                    "number_overlap": round(shared / union, 4) if union else 0.0}
            ok = shared >= MIN_SHARED_NUMBERS and pair["number_overlap"] >= MIN_NUMBER_OVERLAP
            (confirmed if ok else unconfirmed).append(pair)
    return confirmed, unconfirmed


def consistency_prompt(tokenizer, prompts: dict, pair: dict, summaries: list[str], budget: int, error: str | None):
    """(prompt ids, cropped): the two summaries in the consistency prompt, each cut to half the room left when
    the prompt is too long."""
    def ids_for(texts: list[str]) -> list[int]:
        text = prompts["consistency"]
        for (lang, summary), slot in zip(zip(pair["langs"], texts), ("a", "b")):
            text = text.replace(f"{{lang_{slot}}}", language_name(lang)).replace(f"{{summary_{slot}}}", summary)
        if error is not None:
            text += "\n\n" + prompts["retry"].replace("{error}", error)
        return encode_prompt(tokenizer, build_messages(prompts["system"], text))

    ids = ids_for(summaries)
    if len(ids) <= budget:
        return ids, False
    room = (budget - len(ids_for(["", ""]))) // 2
    if room <= 0:
        raise ClinsumError(f"judge.max_input_tokens={budget} leaves no room for two summaries in the consistency prompt")
    cut = [tokenizer.decode(tokenizer(s, add_special_tokens=False)["input_ids"][:room], skip_special_tokens=True)
           for s in summaries]
    return ids_for(cut), True


def judge_consistency(predictions: dict[str, str], corpus: dict[str, str], model_dir, settings: dict, out_path,
                      model: str, make_generator=None) -> dict:
    """Judge one model's summaries of the cases the corpus holds in several languages; write and return the result."""
    required(settings, ("backend", "dtype", "batch_size", "max_input_tokens", "max_new_tokens", "temperature", "prompts"))
    if "consistency" not in settings["prompts"]:
        raise ClinsumError("judge.prompts.consistency is missing (the config schema's default sets it)")
    languages = list(predictions)
    documents = {}
    for lang in languages:
        records = load_predictions(predictions[lang], lang)
        reports = load_sources(corpus[lang], [r["id"] for r in records])
        documents[lang] = {r["id"]: {"report": reports[r["id"]], "summary": r["prediction"]} for r in records}
    pairs, unconfirmed = paired_cases(documents, languages)
    results = []
    if pairs:
        from .model_files import load_tokenizer

        tokenizer = load_tokenizer(model_dir)
        summaries = {p["id"]: [documents[lang][doc_id]["summary"] for lang, doc_id in zip(p["langs"], p["ids"])] for p in pairs}

        def prompt(pair, error):
            return consistency_prompt(tokenizer, settings["prompts"], pair, summaries[pair["id"]], settings["max_input_tokens"], error)

        with (make_generator or _configured_generator)(settings, model_dir) as generator:
            results = [{**pair, **answer} for pair, answer in zip(pairs, ask(generator, pairs, settings, prompt, parse_consistency))]
    output = {"model": model, "languages": languages, **consistency_summary(results, unconfirmed), "pairs": results,
              "unconfirmed": unconfirmed}
    write_json(out_path, output)
    log.info("%s: %d pairs judged for consistency (%d malformed), %d candidates not confirmed by their numbers; mean %s",
             model, output["n_judged"], output["n_malformed"], len(unconfirmed), output["means"].get("judge_consistency"))
    return output


def consistency_summary(results: list[dict], unconfirmed: list[dict]) -> dict:
    judged = [r for r in results if not r["malformed"]]
    by_pair: dict[str, list[float]] = {}
    for r in judged:
        by_pair.setdefault("-".join(r["langs"]), []).append(r["judge_consistency"])
    means = {"judge_consistency": sum(r["judge_consistency"] for r in judged) / len(judged)} if judged else {}
    means["by_languages"] = {pair: sum(v) / len(v) for pair, v in sorted(by_pair.items())}
    return {"n": len(results), "n_judged": len(judged), "n_malformed": len(results) - len(judged),
            "n_unconfirmed": len(unconfirmed), "means": means}


def _configured_generator(settings: dict, path):
    from .generation import load_generator

    return load_generator(settings["backend"], str(path), dtype=settings["dtype"], batch_size=settings["batch_size"],
                          vllm=settings.get("vllm"))


def _run(args) -> None:
    settings = parse_settings(args.settings)["judge"]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    judge_file(args.predictions, args.corpus, Path(args.model_dir), settings, args.out, args.model, args.lang)


def _run_consistency(args) -> None:
    settings = parse_settings(args.settings)["judge"]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    predictions, corpus = pairs_option(args.predictions, "--predictions"), pairs_option(args.corpus, "--corpus")
    judge_consistency(predictions, corpus, Path(args.model_dir), settings, args.out, args.model)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "judge", help="an LLM judge scores faithfulness and CARE-item completeness of one model's summaries"
    )
    parser.add_argument("--predictions", required=True, help="results/predictions/{model}/{lang}.jsonl")
    parser.add_argument("--corpus", required=True, help="results/corpus/{lang}.jsonl (the reports)")
    parser.add_argument("--model-dir", required=True, help="local directory of the judge model")
    parser.add_argument("--model", required=True, help="the summarizing model's name (base or a variant)")
    parser.add_argument("--lang", required=True, help="language of the predictions")
    parser.add_argument(
        "--settings",
        required=True,
        help='JSON: {"judge": <the config\'s judge section>} (the schema\'s defaults fill the rest)',
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", required=True, help="results/judge/{model}/{lang}.json")
    parser.set_defaults(func=_run)

    parser = subparsers.add_parser(
        "judge-consistency", help="an LLM judge scores one model's summaries of the same case across languages"
    )
    parser.add_argument("--predictions", nargs="+", required=True, help="LANG=results/predictions/{model}/{lang}.jsonl")
    parser.add_argument("--corpus", nargs="+", required=True, help="LANG=results/corpus/{lang}.jsonl")
    parser.add_argument("--model-dir", required=True, help="local directory of the judge model")
    parser.add_argument("--model", required=True, help="the summarizing model's name (base or a variant)")
    parser.add_argument("--settings", required=True, help='JSON: {"judge": <the config\'s judge section>}')
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", required=True, help="results/judge/{model}/consistency.json")
    parser.set_defaults(func=_run_consistency)
