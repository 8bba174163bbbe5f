"""Degenerate outputs: what inference's float32 guard redoes and what evaluation flags.

Shared by the infer and evaluate stages (a stage does not import another stage), pure functions only.

- `degenerate_reason(text, token_ids, finish_reason)`: the inference guard's test for the product of
  NaN/inf logits, on the generated token ids (empty at the length limit, a character run, a short token
  n-gram over most of the output, a flood of U+FFFD).
- `summary_degenerate_reason(text, finish_reason)`: the evaluation's test on a stored summary (text and,
  when known, why generation stopped): the same text checks, a repetition loop of words ("La necesidad
  de la necesidad de la necesidad ..."), an empty output, or an output cut at the token limit.
"""

from __future__ import annotations

import re

# The inference guard's thresholds (see `degenerate_reason`).
CHAR_RUN = 32  # one character repeated this many times in a row
PERIOD_MAX = 4  # a repeated n-gram of at most this many tokens ...
PERIOD_MIN_TOKENS = 32  # ... in an output of at least this many tokens ...
PERIOD_SHARE = 0.75  # ... where this share of the tokens repeat the token `period` places before
REPLACEMENT_FLOOD = 8  # this many U+FFFD, or a quarter of the text (at least 2)

# A word loop (see `word_loop`): a unit of at most LOOP_MAX_PERIOD words repeated back to back at
# least LOOP_MIN_COPIES times, over at least LOOP_MIN_WORDS words. Four copies of a 3-word unit
# ("necesidad de la") is 12 words; ordinary prose never repeats a unit four times in a row.
LOOP_MAX_PERIOD = 20
LOOP_MIN_COPIES = 4
LOOP_MIN_WORDS = 12

# The kinds of `summary_degenerate_reason`, in the order they are tested (each reason starts with its kind).
KINDS = ("empty", "characters", "loop", "cut")

_CHAR_RUN_RE = re.compile(r"(.)\1{%d,}" % (CHAR_RUN - 1), re.DOTALL)
_WORD_RE = re.compile(r"\w+", re.UNICODE)


def char_run(text: str) -> str | None:
    """One character repeated CHAR_RUN or more times in a row ("!!!!...")."""
    run = _CHAR_RUN_RE.search(text)
    return f"a run of {len(run.group(0))} x {run.group(1)!r}" if run else None


def replacement_flood(text: str) -> str | None:
    """A flood of U+FFFD: token ids that decode to no valid UTF-8."""
    replacements = text.count("\ufffd")
    if replacements >= REPLACEMENT_FLOOD or (replacements >= 2 and 4 * replacements >= len(text)):
        return f"{replacements} U+FFFD characters in {len(text)}"
    return None


def degenerate_reason(text: str, token_ids: list[int], finish_reason: str) -> str | None:
    """Why an output looks like the product of NaN/inf logits rather than of the model, or None.

    - empty text although generation ran to the length limit (every token special, e.g. token 0);
    - one character repeated CHAR_RUN or more times in a row ("!!!!...");
    - a short n-gram (period <= PERIOD_MAX tokens) repeated over PERIOD_SHARE of a long output;
    - a flood of U+FFFD (token ids that decode to no valid UTF-8).
    """
    if finish_reason == "length" and not text.strip():
        return f"empty output after {len(token_ids)} tokens at the length limit"
    run = char_run(text)
    if run:
        return run
    n = len(token_ids)
    if n >= PERIOD_MIN_TOKENS:
        for period in range(1, PERIOD_MAX + 1):
            repeats = sum(token_ids[i] == token_ids[i - period] for i in range(period, n))
            if repeats >= PERIOD_SHARE * (n - period):
                gram = token_ids[n - period :]
                return f"the {period}-gram {gram} repeats over {repeats}/{n - period} tokens"
    return replacement_flood(text)


def word_loop(words: list[str]) -> tuple[int, int, int] | None:
    """(start, period, copies) of the longest back-to-back repetition of a unit of words, if it is a loop;
    of equally long ones, the shortest unit (a 3-word loop also repeats with period 6, 9, ...).

    For each period p, a run of consecutive positions i with words[i] == words[i - p] covers the unit
    and its repeats: a run of r matches spans p + r words, (p + r) // p copies.
    """
    best, best_span = None, 0
    for period in range(1, min(LOOP_MAX_PERIOD, len(words) // LOOP_MIN_COPIES) + 1):
        run = 0
        for i in range(period, len(words) + 1):
            if i < len(words) and words[i] == words[i - period]:
                run += 1
                continue
            span = period + run
            if run and span // period >= LOOP_MIN_COPIES and span >= LOOP_MIN_WORDS and span > best_span:
                best, best_span = (i - span, period, span // period), span
            run = 0
    return best


def summary_degenerate_reason(text: str, finish_reason: str | None = None) -> str | None:
    """Why a summary is degenerate, or None; the reason starts with its kind (see KINDS).

    `finish_reason` is the generator's ("stop" or "length"); None when the predictions do not record it,
    and then an output cut at the limit cannot be told from one that ended.
    """
    if not text.strip():
        return "empty output" + (" at the token limit" if finish_reason == "length" else "")
    broken = char_run(text) or replacement_flood(text)
    if broken:
        return f"characters: {broken}"
    words = _WORD_RE.findall(text.lower())
    loop = word_loop(words)
    if loop:
        start, period, copies = loop
        unit = " ".join(words[start : start + period])
        return f"loop: {unit!r} ({period} word{'s' if period > 1 else ''}) repeated {copies} times"
    if finish_reason == "length":
        return "cut at the token limit"
    return None


def reason_kind(reason: str) -> str:
    """The kind of a `summary_degenerate_reason` ("empty", "characters", "loop" or "cut")."""
    for kind in KINDS:
        if reason.startswith(kind):
            return kind
    raise ValueError(f"not a degenerate reason: {reason!r}")
